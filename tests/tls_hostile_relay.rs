//! Hostile TLS turned round: a relay that says close_notify in its first flight, against the real
//! `client` binary. The client must give up with a clear error within its time limit instead of
//! hanging (the same fault that, on the relay's side, `tls_handshake_attacks.rs` plays as a
//! client). The tools are in `tests/common/tls_attack.rs`.

mod common;

use common::proc::Proc;
use common::tls_attack::*;
use common::{test_keys, TempDir};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

/// The client side of the handshake loop: a hostile relay (with the test key, so the client
/// trusts it) sends its whole first flight, a close_notify and 8 KiB more in one write. The
/// `client` binary must give up within its handshake timeout, not spin forever.
#[test]
fn a_relay_that_says_close_notify_in_its_first_flight_does_not_hang_the_client() {
    let _one = one_at_a_time();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let keys = relaychat::server::keys::from_pem_files(&test_keys().cert, &test_keys().key).expect("keys");
    let config = relaychat::server::keys::server_config(&keys).expect("server config");
    let (done, finished) = crossbeam_channel::bounded::<()>(0);
    let (flight_sent, flight_gone) = crossbeam_channel::bounded::<()>(1);
    let fake = thread::spawn(move || {
        let Some(mut tcp) = accept_within(&listener, Duration::from_secs(10)) else { return };
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = rustls::ServerConnection::new(config).expect("session");
        let mut buf = vec![0u8; 16 * 1024];
        while !tls.wants_write() {
            let n = tcp.read(&mut buf).expect("the ClientHello");
            assert!(n > 0, "the client closed before its ClientHello");
            let mut data = &buf[..n];
            while !data.is_empty() {
                tls.read_tls(&mut data).unwrap();
                tls.process_new_packets().expect("a valid ClientHello");
            }
        }
        tls.send_close_notify();
        let mut flight = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut flight).unwrap();
        }
        flight.extend(noise(8 * 1024, 7));
        tcp.write_all(&flight).expect("send the flight");
        let _ = flight_sent.send(());
        // Hold the connection open until the test is over, so only the client can end it.
        let _ = finished.recv_timeout(Duration::from_secs(25));
    });
    let downloads = TempDir::new("hostile-relay-downloads");
    let server = addr.to_string();
    let fingerprint = test_keys().fingerprint.clone();
    let dir = downloads.path.display().to_string();
    let args = [
        "--server",
        &server,
        "--name",
        "probe",
        "--fingerprint",
        &fingerprint,
        "--downloads",
        &dir,
        "receive",
    ];
    let mut client = Proc::spawn(env!("CARGO_BIN_EXE_client"), &args, &[]);
    let pid = client.child.id();
    let start = Instant::now();
    let limit = relaychat::client::HANDSHAKE_TIMEOUT + SLACK;
    let mut exited = None;
    let mut cpu = 0.0;
    let mut busiest = String::new();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = client.child.try_wait() {
            exited = Some(status);
            break;
        }
        cpu = cpu_seconds(pid);
        busiest = busiest_thread(pid);
        // A client waiting on a socket uses next to no CPU: three seconds of it is a spin, and
        // waiting out the handshake timeout would only burn more of a shared machine.
        if cpu > 3.0 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let waited = start.elapsed();
    drop(client); // kills it if it is still running
    drop(done);
    let _ = fake.join();
    assert!(
        flight_gone.try_recv().is_ok(),
        "the hostile relay never sent its flight: the test did not happen"
    );
    assert!(
        !exited.is_some_and(|status| status.success()),
        "the client succeeded against a relay that closed"
    );
    assert!(
        exited.is_some(),
        "the client was still in its handshake {waited:.1?} after it started, having used {cpu:.1} s \
         of CPU (busiest: {busiest})"
    );
}
