//! The framing layer's tests: frames across any read size, limits checked before memory is
//! taken, clean and unclean ends, and read buffers that grow for a burst and shrink after it.

use super::*;
use crate::frame::encode_to_vec;

#[test]
fn the_relays_shared_socket_sends_files_the_way_a_tcp_stream_does() {
    // The relay serves plaintext through `Socket`; a default `Stream` method here would
    // silently turn sendfile off for every download (it did, for a while).
    assert_eq!(<Socket as Stream>::SENDS_FILES_WITHOUT_COPY, <TcpStream as Stream>::SENDS_FILES_WITHOUT_COPY);
}

#[test]
fn a_reader_lets_its_big_buffer_go_once_the_burst_is_over() {
    // A file chunk, a chat line straight after it, and another chat line after a pause.
    let big = encode_to_vec(&Frame::UploadChunk { upload_id: 1, data: vec![7; 200_000] }).unwrap();
    let line = encode_to_vec(&Frame::say("hi")).unwrap();
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut reader = FrameReader::new(theirs);
    std::thread::spawn(move || {
        ours.write_all(&[&big[..], &line[..]].concat()).unwrap();
        std::thread::sleep(QUIET_AFTER + Duration::from_secs(1));
        ours.write_all(&line).unwrap();
        std::thread::sleep(Duration::from_secs(5)); // keeps the socket open meanwhile
    });
    assert!(matches!(reader.read_frame(), Ok(Some(Frame::UploadChunk { .. }))));
    assert!(matches!(reader.read_frame(), Ok(Some(Frame::Say { .. }))));
    assert!(reader.buf.len() > 64 * 1024, "right after the chunk the buffer is kept");
    assert!(matches!(reader.read_frame(), Ok(Some(Frame::Say { .. }))));
    // Reading on now (it waits for more) starts from the small buffer again.
    reader.inner.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    assert!(reader.read_frame().is_err());
    assert_eq!(reader.buf.len(), FIRST_READ);
}

#[test]
fn an_announced_frame_gets_room_as_its_bytes_arrive_not_at_once() {
    let mut bytes = (frame::MAX_FRAME_LEN as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0x02; 10_000]); // 10 KB of a frame that says it is 1 MiB
    let mut reader = FrameReader::new(&bytes[..]);
    assert!(matches!(reader.read_frame(), Err(ReadError::TruncatedAtEof { .. })));
    assert!(reader.buf.capacity() < 64 * 1024, "{} bytes held for 10 KB", reader.buf.capacity());
    // Before the hello, such a frame is refused as soon as its length is known.
    let mut reader = FrameReader::new(&bytes[..]);
    reader.set_limit(4096);
    assert!(matches!(reader.read_frame(), Err(ReadError::Frame(FrameError::TooLarge { .. }))));
}

/// A reader that hands out its bytes a few at a time, like a slow network.
struct Trickle {
    data: Vec<u8>,
    at: usize,
    step: usize,
}
impl Read for Trickle {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.step.min(out.len()).min(self.data.len() - self.at);
        out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn frames() -> Vec<Frame> {
    vec![Frame::say("hi"), Frame::say(&"x".repeat(200_000)), Frame::Who, Frame::Goodbye]
}

#[test]
fn reads_frames_across_any_read_size() {
    let data: Vec<u8> = frames().iter().flat_map(|f| encode_to_vec(f).unwrap()).collect();
    for step in [1, 3, 7, 4096, 1 << 20] {
        let mut r = FrameReader::new(Trickle { data: data.clone(), at: 0, step });
        for want in frames() {
            assert_eq!(r.read_frame().unwrap(), Some(want));
        }
        assert!(matches!(r.read_frame(), Ok(None)), "clean EOF after the last frame");
    }
}

#[test]
fn read_chunk_reads_exactly_and_reports_a_short_source() {
    let data: Vec<u8> = (0..100u8).collect();
    let mut source = &data[..];
    let buf = read_chunk(&mut source, 60).unwrap();
    assert_eq!(&buf[frame::CHUNK_HEADER..], &data[..60]);
    assert_eq!(buf.capacity(), frame::CHUNK_HEADER + 60, "no reallocation");
    assert_eq!(source.len(), 40, "nothing read past the chunk");
    assert_eq!(read_chunk(&mut source, 41).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
}

#[test]
fn eof_mid_frame_is_an_error_not_a_clean_close() {
    let mut data = encode_to_vec(&Frame::say("hello")).unwrap();
    data.truncate(data.len() - 2);
    let mut r = FrameReader::new(&data[..]);
    assert!(matches!(r.read_frame(), Err(ReadError::TruncatedAtEof { have }) if have == data.len()));
}

#[test]
fn oversize_prefix_fails_without_waiting_for_the_payload() {
    let data = [0xff, 0xff, 0xff, 0xff];
    let mut r = FrameReader::new(&data[..]);
    assert!(matches!(r.read_frame(), Err(ReadError::Frame(FrameError::TooLarge { .. }))));
    assert!(r.buf.len() <= READ_CHUNK, "nothing was allocated for the claimed length");
}

#[test]
fn has_frame_says_whether_the_next_frame_needs_a_read() {
    // Two small frames arrive in one read, a third in pieces: `has_frame` is true exactly when
    // `read_frame` can answer from the buffer, which `Trickle`'s position shows (it moves only
    // when the stream is read).
    let two: Vec<u8> =
        [Frame::say("a"), Frame::say("b")].iter().flat_map(|f| encode_to_vec(f).unwrap()).collect();
    let third = encode_to_vec(&Frame::say("c")).unwrap();
    let data = [&two[..], &third[..]].concat();
    let mut r = FrameReader::new(Trickle { data, at: 0, step: two.len() + 2 });
    assert!(!r.has_frame(), "nothing read yet");
    assert_eq!(r.read_frame().unwrap(), Some(Frame::say("a")));
    assert!(r.has_frame(), "b came in the same read");
    let read_so_far = r.inner.at;
    assert_eq!(r.read_frame().unwrap(), Some(Frame::say("b")));
    assert_eq!(r.inner.at, read_so_far, "b was answered from the buffer");
    assert!(!r.has_frame(), "only two bytes of c are here");
    assert_eq!(r.read_frame().unwrap(), Some(Frame::say("c")));
    assert!(!r.has_frame());
}

/// With a shared budget ([`ReadBudget`]), a big frame's buffer is taken from it before it grows:
/// chat-sized frames never touch it, a frame the budget has no room for fails with `NoRoom`
/// (never growing past the budget), and what a reader took comes back when it shrinks and when
/// it is dropped.
#[test]
fn big_frames_take_their_room_from_the_shared_budget_and_give_it_back() {
    let chunk =
        |size: usize| encode_to_vec(&Frame::UploadChunk { upload_id: 1, data: vec![7; size] }).unwrap();
    let line = encode_to_vec(&Frame::say(&"z".repeat(60 * 1024))).unwrap();

    // No room at all past the free part: a long chat line still reads, a 1 MiB chunk does not.
    let none = Arc::new(ReadBudget::new(0));
    let bytes = [&line[..], &chunk(1000 * 1024)[..]].concat();
    let mut reader = FrameReader::new(&bytes[..]);
    reader.share_budget(none.clone());
    assert!(matches!(reader.read_frame(), Ok(Some(Frame::Say { .. }))));
    assert!(matches!(reader.read_frame(), Err(ReadError::NoRoom { .. })));
    assert!(reader.buf.len() <= budget::FREE_BELOW, "grew to {} without room", reader.buf.len());
    assert_eq!(none.used(), 0);

    // Room for one: the first reader holds it while it reads, the second is refused meanwhile.
    let one = Arc::new(ReadBudget::new(1024 * 1024));
    let big = chunk(900 * 1024);
    let mut first = FrameReader::new(&big[..]);
    first.share_budget(one.clone());
    assert!(matches!(first.read_frame(), Ok(Some(Frame::UploadChunk { .. }))));
    let held = one.used();
    assert!(held >= 900 * 1024 - budget::FREE_BELOW, "the reader holds {held} bytes of it");
    let mut second = FrameReader::new(&big[..]);
    second.share_budget(one.clone());
    assert!(matches!(second.read_frame(), Err(ReadError::NoRoom { .. })));
    assert!(one.used() <= 1024 * 1024, "never past the budget: {}", one.used());
    drop(second); // the relay closes a refused connection: what it had grown to comes back
    assert_eq!(one.used(), held);
    drop(first);
    assert_eq!(one.used(), 0, "a dropped reader gives back what it held");
    let mut third = FrameReader::new(&big[..]);
    third.share_budget(one.clone());
    assert!(matches!(third.read_frame(), Ok(Some(Frame::UploadChunk { .. }))));

    // Shrinking gives back too: a chunk, then a pause, then a line, on a socket.
    let budget = Arc::new(ReadBudget::new(4 * 1024 * 1024));
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut reader = FrameReader::new(theirs);
    reader.share_budget(budget.clone());
    let small = encode_to_vec(&Frame::say("hi")).unwrap();
    let big = big.clone();
    std::thread::spawn(move || {
        ours.write_all(&big).unwrap();
        std::thread::sleep(QUIET_AFTER + Duration::from_millis(500));
        ours.write_all(&small).unwrap();
        std::thread::sleep(Duration::from_secs(5)); // keeps the socket open meanwhile
    });
    assert!(matches!(reader.read_frame(), Ok(Some(Frame::UploadChunk { .. }))));
    assert!(budget.used() > 0);
    assert!(matches!(reader.read_frame(), Ok(Some(Frame::Say { .. }))));
    reader.inner.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    assert!(reader.read_frame().is_err());
    assert_eq!(budget.used(), 0, "the small buffer costs nothing");
}
