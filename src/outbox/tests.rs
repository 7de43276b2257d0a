//! The writer loop's tests: heartbeats, waking, order between the queues, pieces of a chunk and
//! of a file slice, and the turn a writer shares with callers that write directly.

use super::*;
use crossbeam_channel::bounded;

#[test]
fn a_writer_beats_on_schedule_busy_or_quiet() {
    let (to_urgent, urgent) = bounded::<Vec<u8>>(8);
    let (_to_bulk, bulk) = bounded::<Vec<u8>>(8);
    let beat = Heartbeat { every: Duration::from_millis(50), frame: b"P".to_vec() };
    let writer = std::thread::spawn(move || {
        let mut out = Vec::new();
        pump(&mut out, &urgent, bulk, &Options { heartbeat: Some(beat), ..Options::default() }).unwrap();
        out
    });
    let to_urgent = ToWriter::new(to_urgent, writer.thread().clone());
    for _ in 0..15 {
        to_urgent.send(b"x".to_vec()).unwrap();
        std::thread::sleep(Duration::from_millis(10)); // busier than the heartbeat
    }
    std::thread::sleep(Duration::from_millis(150)); // then quiet
    drop(to_urgent);
    let text = String::from_utf8(writer.join().unwrap()).unwrap();
    let busy = text[..text.rfind('x').unwrap()].matches('P').count();
    let quiet = text[text.rfind('x').unwrap()..].matches('P').count();
    // About 150 ms busy and 150 ms quiet at one beat per 50 ms: about 3 of each.
    assert!((1..=4).contains(&busy), "beats while busy (a client sending a file): {text}");
    assert!((1..=4).contains(&quiet), "beats while quiet: {text}");
}

#[test]
fn a_sleeping_writer_wakes_for_each_frame_and_for_its_queue_closing() {
    let (to_urgent, urgent) = bounded::<Vec<u8>>(8);
    let (_to_bulk, bulk) = bounded::<Vec<u8>>(8);
    let writer = std::thread::spawn(move || {
        let mut out = Vec::new();
        pump(&mut out, &urgent, bulk, &Options::default()).unwrap();
        out
    });
    let to_urgent = ToWriter::new(to_urgent, writer.thread().clone());
    for frame in [b"a", b"b", b"c"] {
        std::thread::sleep(Duration::from_millis(20)); // long enough for the writer to park
        to_urgent.send(frame.to_vec()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    drop(to_urgent); // no heartbeat and nothing else: only this wakes it to finish
    assert_eq!(writer.join().unwrap(), b"abc");
}

#[test]
fn urgent_frames_overtake_queued_bulk_frames() {
    let (to_urgent, urgent) = bounded::<Vec<u8>>(8);
    let (to_bulk, bulk) = bounded::<Vec<u8>>(8);
    for _ in 0..3 {
        to_bulk.send(b"B".to_vec()).unwrap();
    }
    to_urgent.send(b"U".to_vec()).unwrap();
    drop(to_urgent);
    drop(to_bulk);
    let mut out = Vec::new();
    pump(&mut out, &urgent, bulk, &Options::default()).unwrap();
    // The urgent queue closing ends the loop: bulk frames still queued are not written.
    assert_eq!(out, b"U");
}

#[test]
fn finish_ends_the_loop_even_with_senders_alive() {
    let (to_urgent, urgent) = bounded::<Urgent>(8);
    let (_to_bulk, bulk) = bounded::<Vec<u8>>(8);
    to_urgent.send(Urgent::Frame(b"last".to_vec())).unwrap();
    to_urgent.send(Urgent::Finish).unwrap();
    to_urgent.send(Urgent::Frame(b"never".to_vec())).unwrap();
    let mut out = Vec::new();
    pump(&mut out, &urgent, bulk, &Options::default()).unwrap();
    assert_eq!(out, b"last");
}

#[test]
fn bulk_frames_flow_while_urgent_is_open_and_a_closed_bulk_queue_is_harmless() {
    let (to_urgent, urgent) = bounded::<Vec<u8>>(8);
    let (to_bulk, bulk) = bounded::<Vec<u8>>(8);
    let writer = std::thread::spawn(move || {
        let mut out = Vec::new();
        pump(&mut out, &urgent, bulk, &Options { spin: Duration::from_micros(50), ..Options::default() })
            .unwrap();
        out
    });
    let to_urgent = ToWriter::new(to_urgent, writer.thread().clone());
    let to_bulk = ToWriter::new(to_bulk, writer.thread().clone());
    to_bulk.send(b"1".to_vec()).unwrap();
    to_bulk.send(b"2".to_vec()).unwrap();
    drop(to_bulk);
    std::thread::sleep(Duration::from_millis(20));
    to_urgent.send(b"3".to_vec()).unwrap();
    drop(to_urgent);
    assert_eq!(writer.join().unwrap(), b"123");
}

/// The writer's buffered sink in the test below: file slices never come (no bulk queue
/// traffic), so the in-memory way is enough.
impl FileWrite for io::BufWriter<Shared> {
    fn write_file_slice(&mut self, header: &[u8], file: &File, offset: u64, len: usize) -> io::Result<()> {
        self.flush()?;
        self.get_mut().write_all(header)?;
        let mut bytes = Vec::new();
        crate::wire::copy_file_slice(file, offset, len, &mut bytes)?;
        self.get_mut().write_all(&bytes)
    }
}

/// One byte sink shared by the writer thread and a caller that writes directly.
#[derive(Clone, Default)]
struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn frames_written_directly_with_the_turn_stay_in_order() {
    // A caller numbers its frames 0, 1, 2, … and writes each one itself when it gets the
    // turn and nothing is queued, else queues it (as `client/direct.rs` does). Whatever the
    // timing, the socket must see 0, 1, 2, … : never a direct frame ahead of a queued one.
    const FRAMES: u32 = 20_000;
    let turn = std::sync::Arc::new(Mutex::new(()));
    let sink = Shared::default();
    let (to_urgent, urgent) = bounded::<Vec<u8>>(16);
    let (_to_bulk, bulk) = bounded::<Vec<u8>>(1);
    let writer = {
        let (turn, sink) = (turn.clone(), sink.clone());
        std::thread::spawn(move || {
            // A small buffer, so frames also sit in it for a while before a flush.
            let mut out = io::BufWriter::with_capacity(64, sink);
            pump_sharing(&mut out, &urgent, bulk, &Options::default(), Some(&turn)).unwrap();
        })
    };
    let to_urgent = ToWriter::new(to_urgent, writer.thread().clone());
    let mut direct = sink.clone();
    let mut went_direct = 0;
    for n in 0..FRAMES {
        let frame = n.to_be_bytes().to_vec();
        // Every tenth frame is queued whatever the turn says (queueing is always allowed), so
        // the writer always has some of the frames to interleave with.
        let wrote = match turn.try_lock() {
            Ok(_turn) if n % 10 != 0 && to_urgent.is_empty() => direct.write_all(&frame).is_ok(),
            _ => false,
        };
        if wrote {
            went_direct += 1;
        } else {
            to_urgent.send(frame).unwrap();
        }
        if n % 7 == 0 {
            std::thread::yield_now(); // let the writer catch up now and then
        }
    }
    drop(to_urgent);
    writer.join().unwrap();
    let bytes = sink.0.lock().unwrap().clone();
    let seen: Vec<u32> = bytes.chunks(4).map(|c| u32::from_be_bytes(c.try_into().unwrap())).collect();
    assert_eq!(seen, (0..FRAMES).collect::<Vec<_>>());
    assert!(went_direct > 0, "no frame went the direct way");
}

/// A writer that, during its first write, queues `inject` on the urgent queue: chat arriving
/// while a chunk is on its way out.
struct ChatArrives {
    out: Vec<u8>,
    inject: Option<(ToWriter<Vec<u8>>, Vec<u8>)>,
}

impl Write for ChatArrives {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some((urgent, chat)) = self.inject.take() {
            urgent.send(chat).unwrap();
        }
        self.out.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FileWrite for ChatArrives {
    fn write_file_slice(&mut self, header: &[u8], file: &File, offset: u64, len: usize) -> io::Result<()> {
        self.write_all(header)?;
        crate::wire::copy_file_slice(file, offset, len, &mut self.out)
    }
}

/// Runs a writer (pieces of 100 data bytes) on one bulk item, with a chat line arriving on the
/// urgent queue during the writer's first write; returns the frames written, in order.
fn pump_with_chat_arriving<B: Into<Bulk> + Send + 'static>(item: B) -> Vec<crate::frame::Frame> {
    use crate::frame::{decode, encode_to_vec, Frame};
    let chat = encode_to_vec(&Frame::say("hi")).unwrap();
    let (to_urgent, urgent) = bounded::<Vec<u8>>(8);
    let (to_bulk, bulk) = bounded::<B>(8);
    to_bulk.send(item).unwrap();
    drop(to_bulk);
    let options = Options { piece: 100, ..Options::default() };
    let (give_writer, writer_sink) = bounded::<ChatArrives>(1);
    let writer = std::thread::spawn(move || {
        let mut out = writer_sink.recv().unwrap();
        pump(&mut out, &urgent, bulk, &options).unwrap();
        out.out
    });
    // The writer's sink holds a waking sender of its own urgent queue: chat arriving mid-chunk.
    let to_urgent = ToWriter::new(to_urgent, writer.thread().clone());
    give_writer.send(ChatArrives { out: Vec::new(), inject: Some((to_urgent.clone(), chat)) }).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    drop(to_urgent);
    let bytes = writer.join().unwrap();
    let mut frames = Vec::new();
    let mut rest = &bytes[..];
    while let Some((frame, used)) = decode(rest).unwrap() {
        frames.push(frame);
        rest = &rest[used..];
    }
    frames
}

#[test]
fn chat_goes_between_the_pieces_of_a_chunk() {
    use crate::frame::{encode_to_vec, Frame};
    let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    let chunk = encode_to_vec(&Frame::DownloadChunk { file_id: 5, data: data.clone() }).unwrap();
    let frames = pump_with_chat_arriving(chunk);
    let piece =
        |range: std::ops::Range<usize>| Frame::DownloadChunk { file_id: 5, data: data[range].to_vec() };
    assert_eq!(frames, vec![piece(0..100), Frame::say("hi"), piece(100..200), piece(200..300)]);
}

#[test]
fn a_file_slice_goes_out_as_the_same_chunk_frames_with_chat_between_pieces() {
    use crate::frame::{Frame, DOWNLOAD_CHUNK};
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let path = std::env::temp_dir().join(format!("relaychat-outbox-slice-{}", std::process::id()));
    std::fs::write(&path, &data).unwrap();
    let file = Arc::new(File::open(&path).unwrap());
    let _ = std::fs::remove_file(&path); // the open file stays readable
                                         // Bytes 100..400 of the file, as a chunk of file 5, in pieces of 100.
    let slice = FileSlice { kind: DOWNLOAD_CHUNK, id: 5, file, offset: 100, len: 300, frame_data: 1000 };
    let frames = pump_with_chat_arriving(Bulk::File(slice));
    let piece =
        |range: std::ops::Range<usize>| Frame::DownloadChunk { file_id: 5, data: data[range].to_vec() };
    assert_eq!(frames, vec![piece(100..200), Frame::say("hi"), piece(200..300), piece(300..400)]);
}
