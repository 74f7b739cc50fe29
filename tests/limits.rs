#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! Floods and limits (issue 7) over real sockets: the SEND rate limit, connections per
//! source address, connections that never log in, and HTTP clients that never finish a
//! request. In each case the offender loses at most its own connection or message, with a
//! clear reason code or status, and a healthy pair keeps chatting.

mod util;

use ruyi_proto::types::{channel_type::PERSON, reason};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};
use util::{connect_from, register, start, Client, Login};

/// One message from `a` to `b` and back, both acknowledged: the pair is being served.
fn pair_chats(a: &mut Client, b: &mut Client, tag: &str) {
    a.send(&b.uid.clone(), PERSON, tag.as_bytes(), &format!("{tag}-a"));
    assert_eq!(a.sendack().reason_code, reason::SUCCESS);
    let r = b.recv();
    assert_eq!(&r.payload[..], tag.as_bytes());
    b.recvack(&r);
    b.send(&a.uid.clone(), PERSON, tag.as_bytes(), &format!("{tag}-b"));
    assert_eq!(b.sendack().reason_code, reason::SUCCESS);
    let r = a.recv();
    a.recvack(&r);
}

fn healthy_pair(server: &ruyi::Server) -> (Client, Client) {
    register(server, "alice", "ta", 1, 0);
    register(server, "bob", "tb", 1, 0);
    let a = Client::ok(server.tcp_addr(), &Login::new("alice", "ta"));
    let b = Client::ok(server.tcp_addr(), &Login::new("bob", "tb"));
    (a, b)
}

#[test]
fn sends_over_the_rate_get_reason_22_and_are_neither_stored_nor_delivered() {
    // 5 per second after a burst of 10.
    let server = start("rate", |c| c.max_sends_per_sec = 5);
    let (mut alice, mut bob) = healthy_pair(&server);
    for i in 0..30 {
        alice.send("bob", PERSON, b"flood", &format!("f{i}"));
    }
    let acks: Vec<_> = (0..30).map(|_| alice.sendack()).collect();
    let passed: Vec<_> = acks
        .iter()
        .filter(|a| a.reason_code == reason::SUCCESS)
        .collect();
    assert!(
        (10..=12).contains(&passed.len()),
        "{} of 30 passed a burst of 10 at 5/s",
        passed.len()
    );
    assert!(acks
        .iter()
        .all(|a| a.reason_code == reason::SUCCESS || a.reason_code == reason::RATE_LIMIT));
    for _ in 0..passed.len() {
        let r = bob.recv();
        bob.recvack(&r);
    }
    assert!(
        bob.quiet_for(Duration::from_millis(300)),
        "a refused SEND was delivered"
    );
    // Credit comes back at the rate, and the refused ones took no sequence number.
    std::thread::sleep(Duration::from_millis(400));
    alice.send("bob", PERSON, b"later", "later");
    let ack = alice.sendack();
    assert_eq!(ack.reason_code, reason::SUCCESS);
    assert_eq!(ack.message_seq, passed.len() as u32 + 1);
    let r = bob.recv();
    assert_eq!(&r.payload[..], b"later");
    bob.recvack(&r);
    // The connection itself was never in trouble.
    pair_chats(&mut bob, &mut alice, "after the flood");
}

#[test]
fn a_source_at_its_connection_limit_is_refused_while_others_keep_chatting() {
    let server = start("perip", |c| c.max_connections_per_ip = 4);
    // Alice and Bob take two of 127.0.0.1's four.
    let (mut alice, mut bob) = healthy_pair(&server);
    let crowd: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.tcp_addr()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut over = Client::from_stream(TcpStream::connect(server.tcp_addr()).unwrap());
    assert!(
        over.closed_within(Duration::from_secs(5)),
        "a fifth connection from one address was served"
    );
    // Other sources are counted on their own, on every listener.
    let other = Ipv4Addr::new(127, 0, 0, 2);
    let mut c = Client::from_stream(connect_from(other, server.tcp_addr()).unwrap());
    assert!(!c.closed_within(Duration::from_millis(200)));
    pair_chats(&mut alice, &mut bob, "still here");
    // Closing one frees its slot.
    drop(crowd);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = Client::from_stream(TcpStream::connect(server.tcp_addr()).unwrap());
        if !again.closed_within(Duration::from_millis(200)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "closed connections kept their slots"
        );
    }
}

#[test]
fn five_thousand_connections_that_never_log_in_are_closed_while_a_pair_chats() {
    let server = start("nologin", |c| c.connect_timeout = Duration::from_secs(1));
    let (mut alice, mut bob) = healthy_pair(&server);
    // 1,000 from each of five addresses: at the default per-address limit, not over it.
    let started = Instant::now();
    let mut silent: Vec<TcpStream> = Vec::with_capacity(5000);
    for i in 0..5000u32 {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % 5) as u8);
        silent.push(connect_from(source, server.tcp_addr()).unwrap());
        if i % 1000 == 999 {
            pair_chats(&mut alice, &mut bob, &format!("during {i}"));
        }
    }
    // Every one is closed by the login deadline, a second after its accept.
    let deadline = started + Duration::from_secs(20);
    for s in &mut silent {
        s.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a silent connection was not closed by its deadline: {other:?}"),
        }
    }
    pair_chats(&mut alice, &mut bob, "after");
}

#[test]
fn an_http_request_trickled_or_left_unfinished_is_cut_off_at_its_deadline() {
    let server = start("slowloris", |c| {
        c.http_request_timeout = Duration::from_millis(800)
    });
    let addr = server.http_addr();
    // Trickled: a header byte every 100 ms would keep an idle timer alive forever.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    for b in b"GET /health HTTP/1.1\r\nX-Slow: "
        .iter()
        .chain([b'a'; 200].iter())
    {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        let mut chunk = [0u8; 512];
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "got {text:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut off after {:?}",
        started.elapsed()
    );
    // Unfinished and silent: closed at the same deadline, not at the 60 s keep-alive.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"POST /user/token HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"ui")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 408"), "got {text:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a silent half request held its connection for {:?}",
        started.elapsed()
    );
    // A normal request on a fresh connection is served.
    let (status, _) = util::http(addr, "GET", "/health", &serde_json::Value::Null);
    assert_eq!(status, 200);
}

/// A real binary with `config` as its TOML file, each login held `slow_ms` by its worker.
fn spawn_with_slow_logins(name: &str, config: &str, slow_ms: &str) -> util::RuyiProcess {
    let dir = util::temp_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("ruyi.toml");
    std::fs::write(&conf, config).unwrap();
    util::RuyiProcess::spawn_with_args(
        &dir.join("data"),
        util::free_addr(),
        util::free_addr(),
        &[("RUYI_FAILPOINT_SLOW_LOGINS", slow_ms)],
        &["--config", conf.to_str().unwrap()],
    )
}

/// A login storm the auth workers cannot clear before the login deadline: a login still
/// queued at its connection's deadline is dropped by its worker without a key exchange
/// (CPU spent on nobody while later logins wait) and counted, its connection closed for the
/// client to retry. Two workers, a 1 s deadline, each login held 1.5 s by the failpoint:
/// of twelve encrypted logins at once the workers take two and find the other ten past
/// their deadline.
#[test]
fn logins_left_waiting_past_their_deadline_are_shed_without_a_key_exchange() {
    util::init();
    let server = spawn_with_slow_logins(
        "login-shed",
        "connect_timeout_secs = 1\nauth_workers = 2\n",
        "1500",
    );
    let (tcp, started) = (server.tcp, Instant::now());
    let logins: Vec<_> = (0..12)
        .map(|i| std::thread::spawn(move || Client::connect_is_dropped(tcp, &format!("s{i}"))))
        .collect();
    let dropped = logins
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|&closed| closed)
        .count();
    assert!(
        dropped >= 10,
        "{dropped} of 12 logins were closed unanswered"
    );
    // Without the drop, two workers at 1.5 s a login would take nine seconds over their
    // queue, and no login would be counted as shed.
    let shed = util::metrics::counter_reaching(server.http, "ruyi_logins_shed_total", 10);
    assert!(
        (10..=12).contains(&shed),
        "{shed} logins counted as shed, not the ten left waiting"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the storm took {:?} to clear",
        started.elapsed()
    );
}

/// The logins waiting for a worker are bounded in bytes as well as in number: CONNECTs of
/// 15 KiB each (a large token) fill a 64 KiB budget after four, and the rest are shed at
/// once rather than held. One worker, held 3 s by its first login.
#[test]
fn queued_logins_are_bounded_in_bytes() {
    util::init();
    let server = spawn_with_slow_logins(
        "login-bytes",
        "prelogin_budget_bytes = 65536\nauth_workers = 1\n",
        "3000",
    );
    let tcp = server.tcp;
    let token = "t".repeat(15 << 10);
    let logins: Vec<_> = (0..10)
        .map(|i| {
            let token = token.clone();
            // One at a time: no CONNECT waits half-read against the input budget.
            std::thread::sleep(Duration::from_millis(30));
            std::thread::spawn(move || {
                Client::connect_with_token_is_dropped(tcp, &format!("b{i}"), &token)
            })
        })
        .collect();
    let shed = util::metrics::counter_reaching(server.http, "ruyi_logins_shed_total", 5);
    assert!(
        (5..=6).contains(&shed),
        "{shed} of 10 logins of 15 KiB shed with room for four in the queue"
    );
    assert_eq!(
        util::metrics::counter_reaching(server.http, "ruyi_prelogin_shed_total", 0),
        0,
        "the input budget shed a login: the test sent them too close together"
    );
    drop(server); // the waiting logins' connections close with it
    for t in logins {
        let _ = t.join();
    }
}

/// A stop in a login storm is not held up by the queue: the workers stop taking logins
/// when the server stops (the loops close every client connection anyway). One worker,
/// each login held 2.5 s: ten logins queued would keep it busy for 25 s, or at least until
/// their 4 s deadlines.
#[test]
fn a_stop_in_a_login_storm_does_not_wait_for_the_queue() {
    util::init();
    let mut server = spawn_with_slow_logins(
        "login-stop",
        "auth_workers = 1\nshutdown_drain_secs = 0\n",
        "2500",
    );
    let tcp = server.tcp;
    let logins: Vec<_> = (0..10)
        .map(|i| std::thread::spawn(move || Client::connect_is_dropped(tcp, &format!("q{i}"))))
        .collect();
    std::thread::sleep(Duration::from_millis(300)); // all ten queued, one taken
    let stopped = Instant::now();
    // SAFETY: a signal to our own child process.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) },
        0
    );
    let status = server
        .exit_within(Duration::from_secs(10))
        .expect("ruyi did not stop on SIGTERM");
    // The login in the worker's hands finishes (2.5 s at most); the nine behind it do not.
    assert!(
        stopped.elapsed() < Duration::from_millis(3500),
        "the stop took {:?} with logins queued",
        stopped.elapsed()
    );
    assert!(status.success(), "clean exit: {status:?}");
    for t in logins {
        let _ = t.join();
    }
}
