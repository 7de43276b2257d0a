//! # Lesson 5: stopping a threaded server cleanly
//!
//! A server with a thread per connection has many threads blocked in system calls: `accept`
//! waiting for a newcomer, `read` waiting for a client who is thinking. Stopping it cleanly means
//! waking every one of them and joining it, with nothing left behind. Three tools do it:
//!
//! 1. **A stop flag, and a connection to ourselves.** `accept` cannot be interrupted portably. So
//!    `shutdown` sets a flag and then *connects to the listener*: `accept` returns, the loop sees
//!    the flag, and stops.
//! 2. **Keep every `JoinHandle`.** A thread you cannot join is a thread you cannot wait for.
//! 3. **A kill switch per socket** (`try_clone` + `shutdown(Both)`): a client that ignores the
//!    goodbye gets its socket cut after a grace period, which makes its thread's `read` return.
//!
//! ```text
//! cargo run --example 05_clean_shutdown -- --demo
//! ```
//!
//! The relay's full sequence (hub, writers, hash threads) is documented on `Server::run` in
//! `src/server.rs` and drawn in `docs/ARCHITECTURE.md`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// A clone of every open socket, to cut the ones that do not leave by themselves.
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    accept_thread: JoinHandle<Vec<JoinHandle<()>>>,
}

impl Server {
    fn start() -> std::io::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let (flag, list) = (stop.clone(), sockets.clone());
        let accept_thread = thread::spawn(move || {
            let mut handles = Vec::new();
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break; // the wake-up connection (or anyone after the flag): stop
                }
                let Ok(stream) = stream else { continue };
                if let Ok(clone) = stream.try_clone() {
                    list.lock().unwrap().push(clone);
                }
                handles.push(thread::spawn(move || echo_until_closed(stream)));
            }
            handles // the listener is dropped here: nobody can connect any more
        });
        Ok(Server { addr, stop, sockets, accept_thread })
    }

    /// The shutdown sequence. Returns how many connections had to be cut.
    fn shutdown(self, grace: Duration) -> usize {
        // 1. Stop accepting: set the flag, then wake `accept` by connecting to it.
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        let handles = self.accept_thread.join().expect("accept thread");
        println!("step 1: accept stopped; {} connection thread(s) to wait for", handles.len());
        // 2. Ask everyone to leave: here, half-close each socket ("we will send no more").
        for socket in self.sockets.lock().unwrap().iter() {
            let _ = socket.shutdown(Shutdown::Write);
        }
        // 3. Wait up to `grace` for them to end by themselves...
        let deadline = Instant::now() + grace;
        while handles.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        // 4. ...then cut the rest: their blocked `read` returns at once.
        let stragglers = handles.iter().filter(|h| !h.is_finished()).count();
        for socket in self.sockets.lock().unwrap().iter() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        println!("step 2-4: goodbye said; {stragglers} connection(s) cut after {grace:?}");
        // 5. Join every thread: nothing is left running.
        for handle in handles {
            let _ = handle.join();
        }
        println!("step 5: every thread joined");
        stragglers
    }
}

/// A connection's thread: echoes what it reads until the client closes (or the socket is cut).
fn echo_until_closed(mut stream: TcpStream) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

fn main() -> std::io::Result<()> {
    if std::env::args().nth(1).as_deref() != Some("--demo") {
        eprintln!("usage: 05_clean_shutdown --demo");
        return Ok(());
    }
    let server = Server::start()?;
    // A polite client: leaves when the server says it will send no more (it reads EOF).
    let mut polite = TcpStream::connect(server.addr)?;
    let polite_thread = thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok(n) = polite.read(&mut buf) {
            if n == 0 {
                break; // EOF: the server said goodbye; close our side too
            }
        }
    });
    // A stubborn client: connects and then does nothing at all, not even read.
    let stubborn = TcpStream::connect(server.addr)?;
    thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let cut = server.shutdown(Duration::from_millis(500));
    println!("shut down in {:?}; {cut} stubborn connection(s) cut", started.elapsed());
    let _ = polite_thread.join();
    drop(stubborn);
    Ok(())
}
