#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! The engine's life around its connections, over real loopback sockets: wake-ups from
//! other threads, the bounded inbox, a loop that dies, a hard stop, a balancer of one's own.

mod util;

use bytes::Bytes;
use ruyi_reactor::{Balancer, EngineConfig, StopMode, TrySendFailure};
use std::io::Write;
use std::time::{Duration, Instant};
use util::{
    closed_by_server, config, connect, expect_bytes, read_to_end_or_error, round_trip, TestEngine,
};

#[test]
fn a_frame_from_another_thread_wakes_a_loop_sleeping_for_a_long_tick_at_once() {
    // With a one-minute tick the loop sleeps up to a minute in `poll`: only the waker
    // brings a frame (or the new socket itself) in promptly. A lost wake-up fails here.
    let cfg = EngineConfig {
        tick: Duration::from_secs(60),
        ..config(1)
    };
    let t = TestEngine::start(cfg, 2);
    let mut c = connect(t.addrs[1]);
    let id = t.next_open();
    let handles = t.engine.handles();
    let mut slowest = Duration::ZERO;
    for i in 0..20u8 {
        std::thread::sleep(Duration::from_millis(20)); // Let the loop go back to sleep.
        let sent = Instant::now();
        handles.send(id, Bytes::from(vec![i; 10])).unwrap();
        assert_eq!(expect_bytes(&mut c, 10), vec![i; 10]);
        slowest = slowest.max(sent.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(500),
        "a wake-up took {slowest:?}"
    );
}

#[test]
fn the_inbox_is_bounded_in_bytes_and_a_blocking_sender_waits_for_room() {
    let cfg = EngineConfig {
        max_inbox_bytes: 1 << 20,
        max_outbound_bytes: 64 << 20,
        ..config(1)
    };
    let t = TestEngine::start(cfg, 2);
    let mut c = connect(t.addrs[1]);
    let id = t.next_open();
    let handles = t.engine.handles();
    let lp = &handles.loops()[0];
    util::stall(lp, id, b"STALL"); // The loop drains nothing for a while.
    let piece = || Bytes::from(vec![3u8; 512 << 10]);
    lp.try_send(id, piece()).unwrap();
    lp.try_send(id, piece()).unwrap();
    assert_eq!(
        lp.try_send(id, piece()),
        Err(TrySendFailure::Full),
        "a third 512 KiB frame fit in a 1 MiB inbox"
    );
    let waited = Instant::now();
    lp.send(id, piece()).unwrap(); // Blocks until the loop has drained.
    assert!(
        waited.elapsed() >= Duration::from_millis(100),
        "it did not wait"
    );
    assert_eq!(
        expect_bytes(&mut c, 3 * (512 << 10)),
        vec![3u8; 3 * (512 << 10)]
    );
}

#[test]
fn when_a_loop_dies_its_connections_leave_the_count_and_new_ones_go_to_the_others() {
    let t = TestEngine::start(config(2), 1);
    let mut a = connect(t.addrs[0]);
    let id_a = t.next_open();
    let mut b = connect(t.addrs[0]);
    let id_b = t.next_open();
    assert_ne!(id_a.loop_index(), id_b.loop_index());
    assert_eq!(t.engine.connections(), 2);
    a.write_all(b"PANIC").unwrap();
    assert!(
        closed_by_server(&mut a),
        "the dead loop's socket stayed open"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.engine.connections() != 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        t.engine.connections(),
        1,
        "the dead loop's connection still counts"
    );
    round_trip(&mut b, b"the other loop lives");
    for i in 0..10 {
        let mut c = connect(t.addrs[0]);
        round_trip(&mut c, format!("new {i}").as_bytes());
        assert_eq!(t.next_open().loop_index(), id_b.loop_index());
    }
}

#[cfg(debug_assertions)]
#[test]
fn a_blocking_send_on_a_loop_thread_is_caught_in_debug_builds() {
    let t = TestEngine::start(config(2), 1);
    let mut a = connect(t.addrs[0]);
    let _ = t.next_open();
    a.write_all(b"BLOCK").unwrap();
    assert!(
        closed_by_server(&mut a),
        "the loop went on after a blocking call"
    );
}

#[test]
fn a_hard_stop_closes_at_once_and_drops_queued_output() {
    let cfg = EngineConfig {
        max_outbound_bytes: 64 << 20,
        ..config(1)
    };
    let t = TestEngine::start(cfg, 2);
    let mut c = connect(t.addrs[1]);
    let id = t.next_open();
    let mut engine = t.engine;
    engine
        .handles()
        .send(id, Bytes::from(vec![5u8; 32 << 20]))
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    assert!(engine.stop(StopMode::Hard));
    assert!(started.elapsed() < Duration::from_secs(2));
    let (n, end) = read_to_end_or_error(&mut c);
    assert!(n < 32 << 20, "a hard stop still wrote everything");
    assert_eq!(
        end,
        Some(std::io::ErrorKind::ConnectionReset),
        "the cut stream ended like a whole one"
    );
}

/// Sends every connection to the last loop.
struct LastLoop;

impl Balancer for LastLoop {
    fn pick(&mut self, loads: &[usize]) -> usize {
        loads.len() - 1
    }
}

#[test]
fn a_balancer_of_ones_own_picks_the_loops() {
    let t = TestEngine::start_with(config(3), 1, Some(Box::new(LastLoop)));
    let mut clients: Vec<_> = (0..6).map(|_| connect(t.addrs[0])).collect();
    for c in &mut clients {
        round_trip(c, b"hi");
    }
    let accepted: Vec<u64> = t.engine.stats().iter().map(|s| s.accepted).collect();
    assert_eq!(accepted, [0, 0, 6]);
}

/// Sends every connection to the first loop.
struct FirstLoop;

impl Balancer for FirstLoop {
    fn pick(&mut self, _: &[usize]) -> usize {
        0
    }
}

#[test]
fn sockets_waiting_in_a_dying_loops_inbox_are_closed_and_leave_the_count() {
    let t = TestEngine::start_with(config(2), 1, Some(Box::new(FirstLoop)));
    let mut a = connect(t.addrs[0]);
    let _ = t.next_open();
    a.write_all(b"SPIN-PANIC").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // Handed to loop 0 while it spins: they sit in its inbox when it dies.
    let mut waiting: Vec<_> = (0..20).map(|_| connect(t.addrs[0])).collect();
    for c in &mut waiting {
        assert!(
            closed_by_server(c),
            "a socket in the dead loop's inbox stayed open"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.engine.connections() != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        t.engine.connections(),
        0,
        "sockets of the dead loop still count"
    );
    // The acceptor learns the loop is gone and serves from the other.
    let mut c = connect(t.addrs[0]);
    round_trip(&mut c, b"served by loop 1");
}

#[test]
fn no_loop_is_handed_more_than_its_pending_bound_even_when_the_other_is_full() {
    const CLIENTS: usize = 1100;
    let cfg = EngineConfig {
        listen_backlog: 4096,
        ..config(2)
    };
    let t = TestEngine::start(cfg, 2);
    let _a = connect(t.addrs[1]);
    let a = t.next_open();
    let _b = connect(t.addrs[1]);
    let b = t.next_open();
    let handles = t.engine.handles();
    let (first, second) = if a.loop_index() == 0 { (a, b) } else { (b, a) };
    // Each loop takes its stall before loop 1's inbox is filled: a stall still queued would
    // free a slot when taken, and the acceptor would put a second socket in it.
    let stalled = Instant::now();
    util::stall(&handles.loops()[0], first, b"STALL-LONG");
    util::stall(&handles.loops()[1], second, b"STALL-LONG");
    // Loop 1's inbox fills with messages; loop 0's stays open but registers nothing. The
    // acceptor gives loop 0 its bound, then waits in line for a slot in loop 1's inbox
    // (the one socket it is trying to hand over shows in loop 1's count meanwhile).
    while handles.loops()[1].try_post((second, b"x".to_vec())).is_ok() {}
    let mut clients: Vec<_> = (0..CLIENTS).map(|_| connect(t.addrs[0])).collect();
    std::thread::sleep(Duration::from_millis(100)); // The acceptor takes what it may.
    let stats = t.engine.stats();
    assert!(
        stalled.elapsed() < 5 * util::STALL,
        "too slow to test: the stall ended"
    );
    assert!(
        stats[0].pending_sockets <= 1024 && stats[1].pending_sockets <= 1,
        "pending sockets per loop: {} and {}",
        stats[0].pending_sockets,
        stats[1].pending_sockets
    );
    for (i, c) in clients.iter_mut().enumerate() {
        round_trip(c, format!("client {i}").as_bytes());
    }
    let stats = t.engine.stats();
    assert_eq!((stats[0].pending_sockets, stats[1].pending_sockets), (0, 0));
}

#[test]
fn a_handler_that_panics_in_the_last_drain_still_leaves_no_socket_behind() {
    let cfg = EngineConfig {
        max_commands_per_turn: 1, // The stall's turn takes nothing after it.
        ..config(1)
    };
    let t = TestEngine::start(cfg, 2);
    let _a = connect(t.addrs[1]);
    let a = t.next_open();
    let handles = t.engine.handles();
    let lp = &handles.loops()[0];
    util::stall(lp, a, b"STALL");
    lp.post((a, b"PANIC".to_vec())).unwrap();
    let mut late = connect(t.addrs[0]); // Queued behind the panic.
    std::thread::sleep(Duration::from_millis(50));
    let mut engine = t.engine;
    engine.stop(StopMode::Hard); // Seen when the stall ends: the last drain meets PANIC.
    assert!(
        closed_by_server(&mut late),
        "a queued socket outlived its loop"
    );
    assert_eq!(engine.connections(), 0, "a queued socket still counts");
}
