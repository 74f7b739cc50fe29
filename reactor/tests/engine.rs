#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! Engine behaviour over real loopback sockets: many clients, foreign threads, stale ids,
//! the caps, timers, stopping, the accept gate.

mod util;

use bytes::Bytes;
use ruyi_reactor::{CloseReason, EngineConfig, StopMode};
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use util::{closed_by_server, config, connect, connect_from, expect_bytes, round_trip, TestEngine};

#[test]
fn echo_2000_concurrent_clients_over_two_loops() {
    let t = TestEngine::start(config(2), 1);
    let addr = t.addrs[0];
    // 8 client threads x 250 connections, all open at once.
    let workers: Vec<_> = (0..8)
        .map(|w| {
            std::thread::spawn(move || {
                let mut conns: Vec<_> = (0..250).map(|_| connect(addr)).collect();
                for round in 0..3u8 {
                    for (i, c) in conns.iter_mut().enumerate() {
                        let msg = format!("w{w} c{i} r{round} ").repeat(1 + i % 7);
                        c.write_all(msg.as_bytes()).unwrap();
                    }
                    for (i, c) in conns.iter_mut().enumerate() {
                        let msg = format!("w{w} c{i} r{round} ").repeat(1 + i % 7);
                        assert_eq!(expect_bytes(c, msg.len()), msg.as_bytes());
                    }
                }
                conns.len()
            })
        })
        .collect();
    let total: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(total, 2000);
    let stats = t.engine.stats();
    let per_loop: Vec<u64> = stats.iter().map(|s| s.accepted).collect();
    assert_eq!(per_loop.iter().sum::<u64>(), 2000);
    assert!(
        per_loop.iter().all(|&n| n >= 900),
        "least-connections spreads them: {per_loop:?}"
    );
}

#[test]
fn frames_from_four_foreign_threads_arrive_complete_and_in_producer_order() {
    const PRODUCERS: u32 = 4;
    const PER_PRODUCER: u32 = 25_000;
    let t = TestEngine::start(config(2), 2); // listener 1 swallows input; we only push.
    let mut client = connect(t.addrs[1]);
    let id = t.next_open();
    let handles = t.engine.handles();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let handles = handles.clone();
            std::thread::spawn(move || {
                for seq in 0..PER_PRODUCER {
                    // 8-byte frames: producer, sequence.
                    let mut f = Vec::with_capacity(8);
                    f.extend_from_slice(&p.to_be_bytes());
                    f.extend_from_slice(&seq.to_be_bytes());
                    if seq % 100 == 0 {
                        // Mix in the batch form.
                        handles
                            .for_conn(id)
                            .send_batch(vec![(id, Bytes::from(f))])
                            .unwrap();
                    } else if seq % 100 == 1 {
                        // And the handler's message forms, one and several per slot.
                        handles.for_conn(id).post((id, f)).unwrap();
                    } else if seq % 100 == 2 {
                        let (first, second) = f.split_at(3);
                        let parts = vec![(id, first.to_vec()), (id, second.to_vec())];
                        handles.for_conn(id).post_batch(parts).unwrap();
                    } else {
                        handles.send(id, Bytes::from(f)).unwrap();
                    }
                }
            })
        })
        .collect();
    let mut next = [0u32; PRODUCERS as usize];
    let mut frame = [0u8; 8];
    for _ in 0..PRODUCERS * PER_PRODUCER {
        client.read_exact(&mut frame).unwrap();
        let p = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        let seq = u32::from_be_bytes(frame[4..].try_into().unwrap());
        assert_eq!(seq, next[p], "producer {p} out of order");
        next[p] += 1;
    }
    for p in producers {
        p.join().unwrap();
    }
    assert!(next.iter().all(|&n| n == PER_PRODUCER));
    let stats = &t.engine.stats()[id.loop_index()];
    assert!(
        stats.wakeups < u64::from(PRODUCERS * PER_PRODUCER),
        "wake-ups are coalesced"
    );
}

#[test]
fn a_stale_conn_id_never_reaches_the_new_connection_in_the_slot() {
    let t = TestEngine::start(config(1), 1);
    let old_client = connect(t.addrs[0]);
    let old = t.next_open();
    drop(old_client);
    assert_eq!(t.close_of(old), CloseReason::PeerClosed);

    let mut new_client = connect(t.addrs[0]);
    let new = t.next_open();
    assert_eq!(new.slot(), old.slot(), "the slab reuses the freed slot");
    assert_ne!(new.generation(), old.generation());

    let handles = t.engine.handles();
    handles
        .send(old, Bytes::from_static(b"for the old user"))
        .unwrap();
    handles.close(old).unwrap();
    handles.send(new, Bytes::from_static(b"ok")).unwrap();
    // The frame for `new` was sent after the stale ones: if anything stale got through, it
    // would arrive first.
    assert_eq!(expect_bytes(&mut new_client, 2), b"ok");
    round_trip(&mut new_client, b"still open");
    assert_eq!(t.engine.stats()[0].stale_commands, 2);
}

#[test]
fn a_client_that_never_reads_is_closed_at_the_byte_cap_while_others_echo() {
    let cfg = EngineConfig {
        max_outbound_bytes: 1 << 20,
        ..config(2)
    };
    let t = TestEngine::start(cfg, 2);
    let _sleeper = connect(t.addrs[1]); // never reads
    let victim = t.next_open();
    let mut healthy = connect(t.addrs[0]);
    let _healthy_id = t.next_open();

    let handles = t.engine.handles();
    let pusher = std::thread::spawn(move || {
        let chunk = Bytes::from(vec![b'x'; 64 << 10]);
        // 64 MiB offered: far beyond socket buffers plus the 1 MiB cap.
        for _ in 0..1024 {
            if handles.send(victim, chunk.clone()).is_err() {
                break;
            }
        }
    });
    for i in 0..200 {
        round_trip(&mut healthy, format!("ping {i}").as_bytes());
    }
    assert_eq!(t.close_of(victim), CloseReason::SlowConsumer);
    pusher.join().unwrap();
    round_trip(&mut healthy, b"after the close");
    let slow: u64 = t
        .engine
        .stats()
        .iter()
        .map(|s| s.closed[CloseReason::SlowConsumer.index()])
        .sum();
    assert_eq!(slow, 1);
}

#[test]
fn idle_timeout_closes_a_silent_connection_and_spares_a_chatty_one() {
    let cfg = EngineConfig {
        idle_timeout: Some(Duration::from_millis(300)),
        ..config(1)
    };
    let t = TestEngine::start(cfg, 1);
    let mut silent = connect(t.addrs[0]);
    let silent_id = t.next_open();
    let mut chatty = connect(t.addrs[0]);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(900) {
        round_trip(&mut chatty, b"hi");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(t.close_of(silent_id), CloseReason::IdleTimeout);
    assert!(closed_by_server(&mut silent));
    round_trip(&mut chatty, b"still here");
}

#[test]
fn a_flooding_client_cannot_starve_the_others() {
    let cfg = EngineConfig {
        read_budget_bytes: 16 << 10,
        ..config(1)
    };
    let t = TestEngine::start(cfg, 2);
    let sink = t.addrs[1];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut s = connect(sink);
            let chunk = vec![b'f'; 256 << 10];
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                s.write_all(&chunk).unwrap();
                sent += chunk.len() as u64;
            }
            sent
        })
    };
    // Let the flood build up, then check the other client is still served promptly.
    std::thread::sleep(Duration::from_millis(200));
    let mut normal = connect(t.addrs[0]);
    let mut latencies: Vec<Duration> = (0..500)
        .map(|i| {
            let sent = Instant::now();
            round_trip(&mut normal, format!("req {i}").as_bytes());
            sent.elapsed()
        })
        .collect();
    latencies.sort();
    // One loop, one core's worth of flood: every request still waits at most a few read
    // budgets, not the flood. Generous bounds for a shared machine.
    let (median, worst) = (latencies[250], latencies[499]);
    assert!(
        median < Duration::from_millis(20) && worst < Duration::from_millis(500),
        "starved by the flood: median {median:?}, worst {worst:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flooded = flooder.join().unwrap();
    assert!(
        flooded > 16 << 20,
        "the flooder kept flooding ({flooded} bytes)"
    );
    assert!(
        t.engine.stats()[0].read_budget_yields > 0,
        "the read budget was exercised"
    );
}

#[test]
fn soft_stop_flushes_queued_output_then_closes() {
    let cfg = EngineConfig {
        max_outbound_bytes: 16 << 20,
        ..config(1)
    };
    let t = TestEngine::start(cfg, 2);
    let mut client = connect(t.addrs[1]);
    let id = t.next_open();
    let mut engine = t.engine;
    let payload: Vec<u8> = (0..(8 << 20)).map(|i| (i % 253) as u8).collect();
    engine
        .handles()
        .send(id, Bytes::from(payload.clone()))
        .unwrap();
    // The client is not reading yet, so most of 8 MiB is still queued when stop starts.
    let stopper = std::thread::spawn(move || {
        let ok = engine.stop(StopMode::Soft);
        (ok, engine)
    });
    std::thread::sleep(Duration::from_millis(100));
    let mut received = Vec::new();
    client.read_to_end(&mut received).unwrap();
    assert_eq!(received.len(), payload.len());
    assert!(received == payload);
    let (ok, _engine) = stopper.join().unwrap();
    assert!(ok, "all threads stopped in time");
}

#[test]
fn hard_stop_and_drop_never_hang() {
    let t = TestEngine::start(config(2), 1);
    let _clients: Vec<_> = (0..50).map(|_| connect(t.addrs[0])).collect();
    let started = Instant::now();
    drop(t.engine);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn the_accept_gate_closes_at_the_limit_and_reopens_below_ninety_percent() {
    let cfg = EngineConfig {
        max_connections: 10,
        ..config(2)
    };
    let t = TestEngine::start(cfg, 1);
    let mut clients: Vec<_> = (0..10).map(|_| connect(t.addrs[0])).collect();
    for c in &mut clients {
        round_trip(c, b"in");
    }
    // The 11th completes the TCP handshake (kernel backlog) but is not accepted.
    let mut waiting = connect(t.addrs[0]);
    waiting.write_all(b"queued").unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 6];
    assert!(
        waiting.read_exact(&mut buf).is_err(),
        "accepted beyond max_connections"
    );
    // One close leaves 9, not below 90% of 10: the gate stays closed (hysteresis).
    drop(clients.pop());
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        waiting.read_exact(&mut buf).is_err(),
        "the gate reopened too early"
    );
    // A second close brings it to 8 < 9: the waiting client is accepted and served.
    drop(clients.pop());
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    waiting.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"queued");
}

#[test]
fn a_source_address_at_its_limit_is_refused_while_other_sources_connect() {
    let cfg = EngineConfig {
        max_connections_per_ip: 3,
        ..config(2)
    };
    let t = TestEngine::start(cfg, 1);
    let mut ours: Vec<_> = (0..3).map(|_| connect(t.addrs[0])).collect();
    for c in &mut ours {
        round_trip(c, b"in");
    }
    // The fourth from 127.0.0.1 is reset at accept, without a byte of service.
    let mut over = connect(t.addrs[0]);
    let _ = over.write_all(b"x");
    assert!(
        closed_by_server(&mut over),
        "a fourth connection was served"
    );
    assert_eq!(t.engine.refused_per_ip(), 1);
    // Another source has a count of its own.
    let mut other = connect_from("127.0.0.2".parse().unwrap(), t.addrs[0]);
    round_trip(&mut other, b"other");
    // A close gives the slot back: a new connection from the first source is served.
    drop(ours.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    let _again = loop {
        let mut again = connect(t.addrs[0]);
        let mut buf = [0u8; 5];
        // Reset at accept while the slot is still taken: the write or the read fails.
        if again.write_all(b"again").is_ok() && again.read_exact(&mut buf).is_ok() {
            assert_eq!(&buf, b"again");
            break again;
        }
        assert!(Instant::now() < deadline, "the slot was never given back");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Two of the first source's, the other source's, and the new one.
    assert_eq!(t.engine.connections(), 4);
}

#[test]
fn idle_closes_past_the_per_tick_budget_wait_for_later_ticks_and_none_is_lost() {
    let cfg = EngineConfig {
        idle_timeout: Some(Duration::from_millis(50)),
        max_idle_closes_per_tick: 3,
        ..config(1)
    };
    let t = TestEngine::start(cfg, 1);
    let mut clients: Vec<_> = (0..40).map(|_| connect(t.addrs[0])).collect();
    let started = Instant::now();
    for c in &mut clients {
        assert!(closed_by_server(c), "an idle connection was never closed");
    }
    // 40 at 3 per 10 ms tick: at least 130 ms, not one turn.
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[test]
fn close_after_flush_delivers_every_queued_byte_then_closes() {
    let t = TestEngine::start(config(1), 1);
    let mut c = connect(t.addrs[0]);
    c.write_all(b"FAREWELL").unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), util::FAREWELL_BYTES, "the answer was cut short");
    assert!(got.iter().all(|&b| b == 7));
}

#[test]
fn listeners_are_tagged() {
    let t = TestEngine::start(config(1), 2);
    let _a = connect(t.addrs[1]);
    match t.events.recv_timeout(Duration::from_secs(10)).unwrap() {
        util::Seen::Opened(_, listener) => assert_eq!(listener.index(), 1),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn an_id_from_another_loop_never_reaches_this_loops_connection() {
    let t = TestEngine::start(config(2), 2);
    // Two connections, one per loop (least connections), usually sharing slot and generation.
    let mut a = connect(t.addrs[1]);
    let id_a = t.next_open();
    let _b = connect(t.addrs[1]);
    let id_b = t.next_open();
    assert_ne!(id_a.loop_index(), id_b.loop_index());
    let handles = t.engine.handles();
    // B's id pushed through A's loop: same slot and generation numbers, other loop.
    let wrong = &handles.loops()[id_a.loop_index()];
    wrong
        .try_send(id_b, Bytes::from_static(b"for b only"))
        .unwrap();
    wrong.try_close(id_b).unwrap();
    handles.send(id_a, Bytes::from_static(b"ok")).unwrap();
    assert_eq!(
        expect_bytes(&mut a, 2),
        b"ok",
        "nothing meant for B arrived first"
    );
    assert_eq!(t.engine.stats()[id_a.loop_index()].stale_commands, 2);
}
