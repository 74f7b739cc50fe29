#![allow(clippy::unwrap_used)] // Tests fail loudly by design.
//! TLS on a listener (`event_loop/tls.rs`), over real sockets with a rustls client: the
//! probe handler echoes plaintext, big replies arrive whole and end with a close_notify,
//! bytes that are not TLS cost only their own connection, and a PROXY header may come
//! before the handshake.

mod util;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use ruyi_reactor::{CloseReason, HeaderRule, ProxyTrust};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use util::{config, connect, TestEngine, FAREWELL_BYTES};

/// A server configuration for a fresh self-signed 127.0.0.1 certificate, and a client
/// configuration that trusts it.
fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(std::net::IpAddr::V4(
        std::net::Ipv4Addr::LOCALHOST,
    ))];
    let cert = params.self_signed(&key).unwrap();
    let der = CertificateDer::from(cert.der().to_vec());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_over(stream: TcpStream, client: &Arc<rustls::ClientConfig>) -> Tls {
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let session = rustls::ClientConnection::new(Arc::clone(client), name).unwrap();
    rustls::StreamOwned::new(session, stream)
}

fn tls_engine(listeners: usize) -> (TestEngine, Arc<rustls::ClientConfig>) {
    let (server, client) = configs();
    let engine = TestEngine::start_built(config(1), listeners, |b, ids| {
        b.tls(ids[0], server);
    });
    (engine, client)
}

fn read_exactly(s: &mut Tls, n: usize) -> Vec<u8> {
    let mut got = vec![0; n];
    s.read_exact(&mut got).expect("the whole reply");
    got
}

#[test]
fn plaintext_round_trips_and_a_big_reply_ends_with_close_notify() {
    let (t, client) = tls_engine(1);
    let mut s = tls_over(connect(t.addrs[0]), &client);
    s.write_all(b"hello over tls").unwrap();
    assert_eq!(read_exactly(&mut s, 14), b"hello over tls");
    // Bigger than the session's 64 KiB of records and than one write budget.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    s.write_all(&big).unwrap();
    assert_eq!(read_exactly(&mut s, big.len()), big);
    let id = t.next_open();
    s.write_all(b"FAREWELL").unwrap();
    assert_eq!(
        read_exactly(&mut s, FAREWELL_BYTES),
        vec![7u8; FAREWELL_BYTES]
    );
    // A clean end: rustls reports a close_notify as EOF, a cut as an error.
    let mut rest = Vec::new();
    assert_eq!(
        s.read_to_end(&mut rest).expect("a close_notify, not a cut"),
        0
    );
    assert_eq!(t.close_of(id), CloseReason::Handler);
}

#[test]
fn plain_bytes_on_a_tls_port_close_only_that_connection() {
    let (t, client) = tls_engine(1);
    let mut good = tls_over(connect(t.addrs[0]), &client);
    good.write_all(b"before").unwrap();
    assert_eq!(read_exactly(&mut good, 6), b"before");
    let good_id = t.next_open();

    let mut plain = connect(t.addrs[0]);
    let plain_id = t.next_open();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // The answer is an alert at most, then the close.
    let mut sink = Vec::new();
    let _ = plain.read_to_end(&mut sink);
    assert!(sink.len() < 64, "a plain client got {} bytes", sink.len());
    assert_eq!(t.close_of(plain_id), CloseReason::Tls);
    assert!(t.engine.stats()[0].closed[CloseReason::Tls.index()] >= 1);

    good.write_all(b"after").unwrap();
    assert_eq!(read_exactly(&mut good, 5), b"after");
    drop(good);
    assert_eq!(t.close_of(good_id), CloseReason::PeerClosed);
}

#[test]
fn garbage_in_the_middle_of_a_session_closes_it_as_tls() {
    let (t, client) = tls_engine(1);
    let mut s = tls_over(connect(t.addrs[0]), &client);
    s.write_all(b"ok").unwrap();
    assert_eq!(read_exactly(&mut s, 2), b"ok");
    let id = t.next_open();
    // A record header claiming application data, with a body that fails to decrypt.
    let mut raw = s.sock.try_clone().unwrap();
    raw.write_all(&[23, 3, 3, 0, 32]).unwrap();
    raw.write_all(&[0xAB; 32]).unwrap();
    assert_eq!(t.close_of(id), CloseReason::Tls);
}

#[test]
fn a_proxy_header_may_come_before_the_handshake() {
    let (server, client) = configs();
    let t = TestEngine::start_built(config(1), 1, |b, ids| {
        b.tls(ids[0], server);
        b.proxy_protocol(
            ids[0],
            ProxyTrust::parse(&["127.0.0.1/32".to_owned()]).unwrap(),
            HeaderRule::Required,
        );
    });
    let mut stream = connect(t.addrs[0]);
    let named: SocketAddr = "203.0.113.5:4000".parse().unwrap();
    let header = format!(
        "PROXY TCP4 {} {} 4000 {}\r\n",
        named.ip(),
        "127.0.0.1",
        t.addrs[0].port()
    );
    stream.write_all(header.as_bytes()).unwrap();
    let mut s = tls_over(stream, &client);
    s.write_all(b"behind a balancer").unwrap();
    assert_eq!(read_exactly(&mut s, 17), b"behind a balancer");
}

#[test]
fn a_client_that_never_reads_is_bounded_like_any_other() {
    // The session holds at most 64 KiB of records; the rest waits in the queue, where the
    // slow-consumer caps see it.
    let mut cfg = config(1);
    cfg.max_outbound_bytes = 1 << 20;
    let (server, client) = configs();
    let t = TestEngine::start_built(cfg, 1, |b, ids| {
        b.tls(ids[0], server);
    });
    let mut s = tls_over(connect(t.addrs[0]), &client);
    s.write_all(b"hi").unwrap();
    assert_eq!(read_exactly(&mut s, 2), b"hi");
    let id = t.next_open();
    // Echoes of 256 KiB each, never read: the queue passes the hard cap.
    let chunk = vec![1u8; 256 << 10];
    s.sock
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    for _ in 0..64 {
        if s.write_all(&chunk).is_err() {
            break;
        }
    }
    assert_eq!(t.close_of(id), CloseReason::SlowConsumer);
}

#[test]
fn a_storm_of_handshakes_in_one_turn_is_spread_over_turns_and_all_complete() {
    // More ClientHellos than a turn's handshake budget, all readable at once: the loop
    // processes some and keeps the rest in their sessions for the next turns.
    let (t, client) = tls_engine(1);
    let n = 3 * 32 + 7;
    let mut sessions: Vec<Tls> = (0..n)
        .map(|_| tls_over(connect(t.addrs[0]), &client))
        .collect();
    for _ in 0..n {
        t.next_open();
    }
    for s in &mut sessions {
        while s.conn.wants_write() {
            s.conn.write_tls(&mut s.sock).unwrap(); // the ClientHello, nothing more
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    for (i, s) in sessions.iter_mut().enumerate() {
        let msg = format!("client {i}");
        s.write_all(msg.as_bytes()).unwrap();
        assert_eq!(read_exactly(s, msg.len()), msg.as_bytes());
    }
}

#[test]
fn a_handshake_that_grows_past_its_cap_closes_as_tls() {
    // A ClientHello announced as 64 KiB, sent in records that never complete it: the
    // session would hold it all; the cap closes the connection at 16 KiB.
    let (t, _) = tls_engine(1);
    let mut s = connect(t.addrs[0]);
    let id = t.next_open();
    let mut first = vec![22u8, 3, 1, 0x10, 0x00, 1, 0x00, 0xFF, 0xFF];
    first.resize(5 + 0x1000, 0);
    s.write_all(&first).unwrap();
    let mut more = vec![22u8, 3, 1, 0x10, 0x00];
    more.resize(5 + 0x1000, 0);
    for _ in 0..5 {
        if s.write_all(&more).is_err() {
            break;
        }
    }
    assert_eq!(t.close_of(id), CloseReason::Tls);
}

#[test]
fn data_sent_right_behind_the_clients_finished_is_not_counted_as_handshake() {
    // A client may write before its handshake ends; rustls sends that data behind its
    // Finished, often in the same segment as the server reads it. More of it than the
    // handshake cap must still go through.
    let (t, client) = tls_engine(1);
    let mut sock = connect(t.addrs[0]);
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut session = rustls::ClientConnection::new(Arc::clone(&client), name).unwrap();
    let early: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
    session.writer().write_all(&early).unwrap(); // buffered until the handshake ends
    while session.is_handshaking() {
        session.complete_io(&mut sock).unwrap();
    }
    let mut s = rustls::StreamOwned::new(session, sock);
    s.flush().unwrap();
    assert_eq!(read_exactly(&mut s, early.len()), early);
}
