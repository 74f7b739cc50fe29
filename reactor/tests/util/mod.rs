//! Helpers shared by the engine's integration tests (mio's `tests/util` is the model).

#![allow(dead_code)]

use crossbeam_channel::{Receiver, Sender};
use ruyi_reactor::{
    CloseReason, ConnCtx, ConnId, Engine, EngineConfig, Handler, Handles, ListenerId, LoopCtx,
    LoopHandle,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An engine configuration for tests: `loops` loops and a 10 ms tick, so timers fire
/// within a test's patience.
pub fn config(loops: usize) -> EngineConfig {
    EngineConfig {
        loops,
        tick: Duration::from_millis(10),
        ..EngineConfig::default()
    }
}

/// Installs the logger once; `RUST_LOG=debug cargo test` shows the engine's lines.
pub fn init() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// A blocking client socket with timeouts, so a broken engine fails a test instead of
/// hanging it.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the test engine");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set read timeout");
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("set write timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Reads exactly `n` bytes or panics with what went wrong.
pub fn expect_bytes(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    stream
        .read_exact(&mut buf)
        .expect("read the expected bytes");
    buf
}

/// Sends `msg` and expects it echoed back.
pub fn round_trip(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).expect("write");
    assert_eq!(expect_bytes(stream, msg.len()), msg);
}

/// True when the peer closed (EOF or reset) within the read timeout.
pub fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// What the probe handler reports to the test.
#[derive(Debug)]
pub enum Seen {
    Opened(ConnId, ListenerId),
    Closed(ConnId, CloseReason),
}

/// Bytes the probe answers `FAREWELL` with before it closes: many write budgets' worth.
pub const FAREWELL_BYTES: usize = 3 << 20;

/// How long a posted `STALL` holds the probe's loop.
pub const STALL: Duration = Duration::from_millis(400);

/// Posts `STALL` or `STALL-LONG` for `id` to `lp` and returns once the loop has taken it
/// from its inbox, so the stall holds the loop from now on. (A sleep instead would race a
/// loaded machine: a stall still queued frees a slot, and runs late, when it is taken.)
pub fn stall(lp: &LoopHandle<ProbeMsg>, id: ConnId, what: &[u8]) {
    assert!(what == b"STALL" || what == b"STALL-LONG");
    lp.post((id, what.to_vec())).expect("the loop is running");
    let deadline = std::time::Instant::now() + STALL;
    while lp.queued_commands() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the loop did not take its stall"
        );
        std::thread::yield_now();
    }
}

/// What a test posts to the probe's loops: bytes to queue on a connection (`STALL`: hold
/// the loop for [`STALL`] instead; `STALL-LONG`: five times that; `PANIC`: panic).
pub type ProbeMsg = (ConnId, Vec<u8>);

/// A test handler: echoes on listener 0, except for these commands (each sent alone):
/// - `FAREWELL`: [`FAREWELL_BYTES`] of 7s, then a close after the flush;
/// - `SLAM`: the same bytes, then a plain close (one last write, the rest unwritten);
/// - `PANIC`: the handler panics, which ends its loop;
/// - `SPIN-PANIC`: the same after holding the loop for [`STALL`];
/// - `BLOCK`: the handler calls the blocking `Handles::send` (a debug build panics).
///
/// It swallows input on any other listener, queues posted [`ProbeMsg`] bytes, and reports
/// opens and closes.
pub struct Probe {
    events: Sender<Seen>,
    handles: Handles<ProbeMsg>,
}

impl Handler for Probe {
    type State = ();
    type Message = ProbeMsg;

    fn on_open(&mut self, conn: &mut ConnCtx<'_>) {
        let _ = self.events.send(Seen::Opened(conn.id(), conn.listener()));
    }

    fn on_data(&mut self, conn: &mut ConnCtx<'_>, _: &mut (), input: &[u8]) -> usize {
        if conn.listener().index() == 0 {
            match input {
                b"FAREWELL" => {
                    conn.queue_slice(&vec![7u8; FAREWELL_BYTES]);
                    conn.close_after_flush();
                }
                b"SLAM" => {
                    conn.queue_slice(&vec![7u8; FAREWELL_BYTES]);
                    conn.close();
                }
                b"PANIC" => panic!("the probe was told to panic"),
                b"SPIN-PANIC" => {
                    // Holds the loop (its inbox fills meanwhile), then ends it.
                    std::thread::sleep(STALL);
                    panic!("the probe was told to panic after a stall");
                }
                b"BLOCK" => {
                    let _ = self
                        .handles
                        .send(conn.id(), bytes::Bytes::from_static(b"x"));
                }
                _ => conn.queue_slice(input),
            }
        }
        input.len()
    }

    fn on_message(&mut self, lp: &mut LoopCtx<'_, ()>, (id, bytes): ProbeMsg) {
        if bytes == b"PANIC" {
            panic!("the probe was told to panic in on_message");
        }
        if bytes == b"STALL" || bytes == b"STALL-LONG" {
            // Tests only: holds the loop so its inbox fills (a real handler never sleeps).
            let long = bytes == b"STALL-LONG";
            std::thread::sleep(if long { 5 * STALL } else { STALL });
            return;
        }
        if let Some((mut conn, _)) = lp.conn(id) {
            conn.queue_slice(&bytes);
        }
    }

    fn on_close(&mut self, id: ConnId, _: (), reason: CloseReason) {
        let _ = self.events.send(Seen::Closed(id, reason));
    }
}

/// A started probe engine with `listeners` loopback listeners.
pub struct TestEngine {
    pub engine: Engine<ProbeMsg>,
    pub addrs: Vec<SocketAddr>,
    pub events: Receiver<Seen>,
}

impl TestEngine {
    pub fn start(config: EngineConfig, listeners: usize) -> TestEngine {
        Self::start_with(config, listeners, None)
    }

    /// [`TestEngine::start`] with a balancer of the test's own.
    pub fn start_with(
        config: EngineConfig,
        listeners: usize,
        balancer: Option<Box<dyn ruyi_reactor::Balancer>>,
    ) -> TestEngine {
        Self::start_built(config, listeners, |builder, _| {
            if let Some(balancer) = balancer {
                builder.balancer(balancer);
            }
        })
    }

    /// [`TestEngine::start`], with `setup` given the builder and the listeners' ids before
    /// the start (for TLS or PROXY settings).
    pub fn start_built(
        config: EngineConfig,
        listeners: usize,
        setup: impl FnOnce(&mut ruyi_reactor::EngineBuilder, &[ListenerId]),
    ) -> TestEngine {
        init();
        let mut builder = Engine::builder(config);
        let ids: Vec<ListenerId> = (0..listeners)
            .map(|_| {
                builder
                    .listen("127.0.0.1:0".parse().unwrap())
                    .expect("bind")
            })
            .collect();
        setup(&mut builder, &ids);
        let (tx, rx) = crossbeam_channel::unbounded();
        let engine = builder
            .start(move |_, handles| Probe {
                events: tx.clone(),
                handles: handles.clone(),
            })
            .expect("start engine");
        let addrs = ids.iter().map(|&id| engine.local_addr(id)).collect();
        TestEngine {
            engine,
            addrs,
            events: rx,
        }
    }

    /// Waits for the next open and returns the connection's id.
    pub fn next_open(&self) -> ConnId {
        loop {
            match self
                .events
                .recv_timeout(Duration::from_secs(10))
                .expect("an open")
            {
                Seen::Opened(id, _) => return id,
                Seen::Closed(..) => continue,
            }
        }
    }

    /// Waits for the close of `id` and returns its reason.
    pub fn close_of(&self, id: ConnId) -> CloseReason {
        loop {
            match self
                .events
                .recv_timeout(Duration::from_secs(10))
                .expect("a close")
            {
                Seen::Closed(c, reason) if c == id => return reason,
                _ => continue,
            }
        }
    }
}

/// Like [`connect`], from the loopback source address `source` (e.g. `127.0.0.2`), as a
/// host other than the default one would.
pub fn connect_from(source: std::net::Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .expect("bind the source address");
    socket.connect(&addr.into()).expect("connect");
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set read timeout");
    s
}

/// Reads until EOF or an error; returns the bytes and how the stream ended (`None`: EOF).
pub fn read_to_end_or_error(stream: &mut TcpStream) -> (usize, Option<std::io::ErrorKind>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (total, None),
            Ok(n) => total += n,
            Err(e) => return (total, Some(e.kind())),
        }
    }
}
