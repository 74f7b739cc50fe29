#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! How bytes flow through one connection, over real loopback sockets: frames split and
//! joined across reads, pausing and resuming, the input and output caps, and the ways a
//! connection ends (a FIN with data, a half-close, a cut reply, a peer that never reads).

mod util;

use crossbeam_channel::Sender;
use ruyi_reactor::{CloseReason, ConnCtx, ConnId, Engine, EngineConfig, Handler, LoopCtx};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};
use util::{config, connect, expect_bytes, read_to_end_or_error, TestEngine, FAREWELL_BYTES};

/// A length-prefixed echo: a frame is a 4-byte big-endian length and that many bytes. The
/// handler consumes whole frames only; a frame `pause` pauses reading after it is echoed,
/// and a posted id resumes that connection.
struct Framed {
    events: Sender<(ConnId, Event)>,
}

#[derive(Debug, PartialEq)]
enum Event {
    Opened,
    Closed(CloseReason),
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

impl Handler for Framed {
    type State = ();
    type Message = ConnId;

    fn on_open(&mut self, conn: &mut ConnCtx<'_>) {
        let _ = self.events.send((conn.id(), Event::Opened));
    }

    fn on_data(&mut self, conn: &mut ConnCtx<'_>, _: &mut (), input: &[u8]) -> usize {
        let mut consumed = 0;
        while input.len() - consumed >= 4 {
            let len = u32::from_be_bytes(input[consumed..consumed + 4].try_into().unwrap());
            let end = consumed + 4 + len as usize;
            if input.len() < end {
                break; // Half a frame: the engine keeps it and offers it again.
            }
            let body = &input[consumed + 4..end];
            conn.queue_slice(&frame(body));
            consumed = end;
            if body == b"pause" {
                conn.pause_reading();
                break;
            }
        }
        consumed
    }

    fn on_message(&mut self, lp: &mut LoopCtx<'_, ()>, id: ConnId) {
        if let Some((mut conn, _)) = lp.conn(id) {
            conn.resume_reading();
        }
    }

    fn on_close(&mut self, id: ConnId, _: (), reason: CloseReason) {
        let _ = self.events.send((id, Event::Closed(reason)));
    }
}

struct FramedEngine {
    engine: Engine<ConnId>,
    addr: SocketAddr,
    events: crossbeam_channel::Receiver<(ConnId, Event)>,
}

impl FramedEngine {
    fn start(config: EngineConfig) -> FramedEngine {
        util::init();
        let mut builder = Engine::builder(config);
        let listener = builder.listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let engine = builder
            .start(move |_, _| Framed { events: tx.clone() })
            .unwrap();
        let addr = engine.local_addr(listener);
        FramedEngine {
            engine,
            addr,
            events: rx,
        }
    }

    fn next(&self) -> (ConnId, Event) {
        self.events.recv_timeout(Duration::from_secs(10)).unwrap()
    }
}

#[test]
fn frames_split_over_many_reads_and_joined_in_one_arrive_whole_and_in_order() {
    let t = FramedEngine::start(config(1));
    let mut c = connect(t.addr);
    // One frame a byte at a time: the engine keeps each partial read for the next.
    let one = frame(b"dribbled in one byte per write");
    for b in &one {
        c.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(expect_bytes(&mut c, one.len()), one);
    // Three and a half frames in one write, then the rest of the fourth.
    let frames: Vec<Vec<u8>> = (0..4).map(|i| frame(&vec![b'a' + i; 1000])).collect();
    let mut joined: Vec<u8> = frames.concat();
    let tail = joined.split_off(joined.len() - 600);
    c.write_all(&joined).unwrap();
    assert_eq!(expect_bytes(&mut c, 3 * 1004), frames[..3].concat());
    std::thread::sleep(Duration::from_millis(50));
    c.write_all(&tail).unwrap();
    assert_eq!(expect_bytes(&mut c, 1004), frames[3]);
}

#[test]
fn a_paused_connection_is_not_read_and_a_resume_offers_everything_in_order() {
    let t = FramedEngine::start(config(1));
    let mut c = connect(t.addr);
    let (id, _) = t.next();
    let mut burst = frame(b"pause");
    for i in 0..200u32 {
        burst.extend(frame(format!("after {i}").as_bytes()));
    }
    c.write_all(&burst).unwrap();
    assert_eq!(expect_bytes(&mut c, 9), frame(b"pause"));
    // Paused: nothing else comes back, however long we wait.
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut probe = [0u8; 1];
    assert!(
        c.read(&mut probe).is_err(),
        "a paused connection was read and answered"
    );
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    t.engine.handles().loops()[0].post(id).unwrap();
    let expected: Vec<u8> = (0..200u32)
        .flat_map(|i| frame(format!("after {i}").as_bytes()))
        .collect();
    assert_eq!(expect_bytes(&mut c, expected.len()), expected);
}

#[test]
fn a_frame_announced_beyond_the_input_cap_closes_only_its_connection() {
    let cfg = EngineConfig {
        max_inbound_bytes: 64 << 10,
        ..config(1)
    };
    let t = FramedEngine::start(cfg);
    let mut bad = connect(t.addr);
    let (bad_id, _) = t.next();
    let mut good = connect(t.addr);
    let (_good_id, _) = t.next();
    let mut huge = (1u32 << 20).to_be_bytes().to_vec();
    huge.extend(vec![0u8; 100 << 10]);
    let _ = bad.write_all(&huge); // May fail once the engine resets us.
    assert_eq!(
        t.next(),
        (bad_id, Event::Closed(CloseReason::InputOverflow))
    );
    good.write_all(&frame(b"still here")).unwrap();
    assert_eq!(expect_bytes(&mut good, 14), frame(b"still here"));
}

#[test]
fn a_queue_stuck_above_the_soft_cap_is_closed_after_its_window_without_new_traffic() {
    let cfg = EngineConfig {
        max_outbound_bytes: 256 << 20,
        soft_outbound_bytes: Some(256 << 10),
        soft_limit_window: Duration::from_millis(200),
        ..config(1)
    };
    let t = TestEngine::start(cfg, 2);
    let _never_reads = connect(t.addrs[1]);
    let id = t.next_open();
    let handles = t.engine.handles();
    // Far more than the socket buffers take: most of it stays queued.
    for _ in 0..32 {
        handles
            .send(id, bytes::Bytes::from(vec![1u8; 1 << 20]))
            .unwrap();
    }
    let queued = Instant::now();
    assert_eq!(t.close_of(id), CloseReason::SlowConsumer);
    assert!(
        queued.elapsed() < Duration::from_secs(3),
        "closed only after {:?}",
        queued.elapsed()
    );
}

#[test]
fn data_sent_with_its_fin_is_answered_before_the_close() {
    let t = TestEngine::start(config(1), 1);
    let mut c = connect(t.addrs[0]);
    let id = t.next_open();
    c.write_all(b"hello, then FIN").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hello, then FIN");
    assert_eq!(t.close_of(id), CloseReason::PeerClosed);
}

#[test]
fn a_half_closed_peer_gets_a_reply_of_many_write_budgets_whole() {
    let cfg = EngineConfig {
        max_outbound_bytes: 16 << 20,
        ..config(1)
    };
    let t = TestEngine::start(cfg, 1);
    let mut c = connect(t.addrs[0]);
    let id = t.next_open();
    // 3 MiB to echo, then the FIN, before reading a byte: the engine sees the EOF while
    // most of the echo is still queued.
    let request: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
    c.write_all(&request).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), request.len(), "the echo was cut short");
    assert!(got == request);
    assert_eq!(t.close_of(id), CloseReason::PeerClosed);
}

#[test]
fn a_close_that_leaves_output_unwritten_is_a_reset_not_a_clean_end() {
    let t = TestEngine::start(config(1), 1);
    let mut c = connect(t.addrs[0]);
    let id = t.next_open();
    c.write_all(b"SLAM").unwrap();
    assert_eq!(t.close_of(id), CloseReason::Handler);
    let (n, end) = read_to_end_or_error(&mut c);
    assert!(n < FAREWELL_BYTES, "all {n} bytes went out");
    assert_eq!(
        end,
        Some(std::io::ErrorKind::ConnectionReset),
        "a cut reply ended like a whole one after {n} bytes"
    );
    assert_eq!(t.engine.stats()[0].unwritten_resets, 1);
}

/// An echo engine with a 300 ms close linger and room for large replies, and one client.
fn lingering_echo() -> (TestEngine, std::net::TcpStream, ruyi_reactor::ConnId) {
    let cfg = EngineConfig {
        close_linger: Duration::from_millis(300),
        max_outbound_bytes: 64 << 20,
        ..config(1)
    };
    let t = TestEngine::start(cfg, 1);
    let c = connect(t.addrs[0]);
    let id = t.next_open();
    (t, c, id)
}

#[test]
fn a_peer_that_never_reads_cannot_hold_a_closing_connection_past_the_linger() {
    let (t, mut c, id) = lingering_echo();
    // Far more than the socket buffers hold, then the request that closes after the
    // flush; and the client never reads.
    let handles = t.engine.handles();
    for _ in 0..16 {
        handles
            .send(id, bytes::Bytes::from(vec![1u8; 1 << 20]))
            .unwrap();
    }
    let started = Instant::now();
    c.write_all(b"FAREWELL").unwrap();
    assert_eq!(t.close_of(id), CloseReason::IdleTimeout);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the linger was not bounded: {:?}",
        started.elapsed()
    );
    assert_eq!(t.engine.stats()[0].unwritten_resets, 1);
}

#[test]
fn a_slow_but_steady_reader_of_a_closing_connection_gets_everything() {
    const QUEUED: usize = 12 << 20;
    let (t, mut c, id) = lingering_echo();
    // More than the socket buffers hold, then the request that closes after the flush.
    t.engine
        .handles()
        .send(id, bytes::Bytes::from(vec![1u8; QUEUED]))
        .unwrap();
    c.write_all(b"FAREWELL").unwrap();
    // Read at about 12 MiB per second: the whole takes several lingers, and no pause is
    // as long as one.
    let (mut got, mut buf) = (0, vec![0u8; 256 << 10]);
    let started = Instant::now();
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => panic!("cut after {got} bytes: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(got, QUEUED + FAREWELL_BYTES);
    assert!(
        started.elapsed() > Duration::from_millis(600),
        "not slow enough to test"
    );
    assert_eq!(t.close_of(id), CloseReason::Handler);
}
