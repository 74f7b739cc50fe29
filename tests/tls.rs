//! TLS listeners (`--tls-cert`, `--tls-key`): WebSocket over TLS on `wss_addr` and the
//! binary protocol over TLS on `tls_addr`, served by the engine's own TLS sessions. Over
//! real sockets: TLS clients chat with plain ones in both dialects, `/route` names the
//! wss address, what is not TLS costs only its own connection, a handshake that never
//! ends meets the login deadline, a bad certificate stops the start, and SIGHUP swaps the
//! certificate for new handshakes without dropping a connection.

#![allow(clippy::unwrap_used)]

mod util;

use ruyi::config::Config;
use ruyi::server::{Server, StartError};
use ruyi_proto::types::channel_type;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};
use util::metrics::closed_reaching;
use util::rpc::RpcClient;
use util::tls::{connect, relay, start_tls, Pki};
use util::*;

/// A server with both TLS listeners: WebSocket over TLS and the binary protocol over TLS.
fn with_tls(name: &str, pki: &Pki, tweak: impl FnOnce(&mut Config)) -> Server {
    start_tls(name, pki, |c| {
        c.tls_addr = Some("127.0.0.1:0".parse().unwrap());
        tweak(c);
    })
}

#[test]
fn tls_clients_chat_with_plain_ones_in_both_dialects() {
    let dir = temp_dir("tls-chat-pki");
    let pki = Pki::new(&dir, "a");
    let server = with_tls("tls-chat", &pki, |_| {});
    let (wss, tls) = (server.wss_addr().unwrap(), server.tls_addr().unwrap());
    for uid in ["ann", "cy"] {
        register(&server, uid, "t", 1, 0);
    }
    // The binary protocol with its own encryption, inside TLS, as an SDK on a TLS port.
    let mut ann = Client::ok(relay(tls, pki.client()), &Login::new("ann", "t"));
    let mut cy = Client::ok(server.tcp_addr(), &Login::new("cy", "t"));
    let mut bo = RpcClient::login_at(&server, relay(wss, pki.client()), "bo");

    ann.send("cy", channel_type::PERSON, b"over tls", "m1");
    assert_eq!(ann.sendack().reason_code, 1);
    let got = cy.recv();
    assert_eq!(
        (&got.from_uid[..], &got.payload[..]),
        ("ann", &b"over tls"[..])
    );
    cy.recvack(&got);

    cy.send("ann", channel_type::PERSON, b"back in clear", "m2");
    assert_eq!(cy.sendack().reason_code, 1);
    let got = ann.recv();
    assert_eq!(&got.payload[..], b"back in clear");
    ann.recvack(&got);

    // JSON-RPC over wss to the binary user over TLS, and back.
    let ack = bo.send(
        "r1",
        "ann",
        channel_type::PERSON,
        json!({"type": 1, "content": "rpc over wss"}),
    );
    assert_eq!(ack["reasonCode"], 1, "{ack}");
    let got = ann.recv();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&got.payload).unwrap()["content"],
        "rpc over wss"
    );
    ann.recvack(&got);
    ann.send(
        "bo",
        channel_type::PERSON,
        br#"{"type":1,"content":"to rpc"}"#,
        "m3",
    );
    assert_eq!(ann.sendack().reason_code, 1);
    let recv = bo.next();
    assert_eq!(recv["method"], "recv", "{recv}");
    assert_eq!(recv["params"]["payload"]["content"], "to rpc", "{recv}");

    // Clients are told where TLS listens.
    let (status, route) = http(server.http_addr(), "GET", "/route?uid=ann", &json!(null));
    assert_eq!(status, 200);
    assert_eq!(route["wss_addr"], format!("wss://{wss}"), "{route}");
}

#[test]
fn bytes_that_are_not_tls_cost_only_their_own_connection() {
    let dir = temp_dir("tls-garbage-pki");
    let pki = Pki::new(&dir, "a");
    let server = with_tls("tls-garbage", &pki, |_| {});
    let (wss, tls) = (server.wss_addr().unwrap(), server.tls_addr().unwrap());
    for uid in ["ann", "bo"] {
        register(&server, uid, "t", 1, 0);
    }
    let mut ann = Client::ok(relay(tls, pki.client()), &Login::new("ann", "t"));
    let mut bo = Client::ok(relay(tls, pki.client()), &Login::new("bo", "t"));

    let tries: [(&str, std::net::SocketAddr, Vec<u8>); 3] = [
        (
            "a plain WebSocket upgrade",
            wss,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("a plain CONNECT", tls, vec![0x10, 0x05, 1, 2, 3, 4, 5]),
        (
            "a record of noise",
            tls,
            [&[22u8, 3, 1, 0, 40][..], &[0xEE; 40]].concat(),
        ),
    ];
    for (what, addr, bytes) in &tries {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(bytes).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        // At most a TLS alert (7 bytes), never the protocol's own answer.
        assert!(answer.len() <= 7, "{what} was answered with {answer:?}");
    }
    assert_eq!(closed_reaching(server.http_addr(), "tls", 3), 3);

    ann.send("bo", channel_type::PERSON, b"still here", "m1");
    assert_eq!(ann.sendack().reason_code, 1);
    assert_eq!(&bo.recv().payload[..], b"still here");
}

#[test]
fn a_handshake_that_never_finishes_meets_the_login_deadline() {
    let dir = temp_dir("tls-slow-pki");
    let pki = Pki::new(&dir, "a");
    let server = with_tls("tls-slow", &pki, |c| {
        c.connect_timeout = Duration::from_secs(1);
    });
    // The first bytes of a ClientHello, and then nothing; and a socket that sends nothing.
    let mut partial = TcpStream::connect(server.wss_addr().unwrap()).unwrap();
    partial
        .write_all(&[22, 3, 1, 2, 0, 1, 0, 1, 252, 3, 3])
        .unwrap();
    let silent = TcpStream::connect(server.tls_addr().unwrap()).unwrap();
    let started = Instant::now();
    for s in [partial, silent] {
        let mut c = Client::from_stream(s);
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "a stalled handshake stayed open"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the deadline"
    );
}

#[test]
fn a_missing_or_foreign_key_stops_the_start_and_says_which_file() {
    let dir = temp_dir("tls-bad-pki");
    let (a, b) = (Pki::new(&dir, "a"), Pki::new(&dir, "b"));
    let start_with = |cert: &Path, key: &Path| {
        let mut c = test_config("tls-bad");
        c.tls_cert = Some(cert.to_owned());
        c.tls_key = Some(key.to_owned());
        Server::start(c).err().map(|e| match e {
            StartError::Config(why) => why,
            other => panic!("not a configuration error: {other}"),
        })
    };
    let missing = dir.join("nowhere.pem");
    let why = start_with(&missing, &a.key).expect("a missing certificate refused");
    assert!(why.contains("nowhere.pem"), "{why}");
    let why = start_with(&a.cert, &b.key).expect("a key of another certificate refused");
    assert!(why.contains("does not belong"), "{why}");
    let why = start_with(&a.key, &a.key).expect("a key file as the certificate refused");
    assert!(why.contains("a-key.pem"), "{why}");
    // A key pasted as one line (literal \n, as secret stores hand them out) is refused
    // without its content in the message, which goes to logs.
    let pem = std::fs::read_to_string(&a.key).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let one_line = dir.join("one-line-key.pem");
    std::fs::write(&one_line, pem.trim_end().replace('\n', "\\n")).unwrap();
    let why = start_with(&a.cert, &one_line).expect("a one-line key refused");
    assert!(why.contains("one-line-key.pem"), "{why}");
    assert!(
        !why.contains(&body[..16]) && why.len() < 300,
        "the key leaked: {why}"
    );
    assert!(start_with(&a.cert, &a.key).is_none(), "a good pair starts");
}

#[test]
fn a_request_sent_with_close_notify_is_answered_before_the_close() {
    // CONNECT, a SEND and the client's close_notify in one burst: the login pauses the
    // connection, and the SEND must wait in its input, not vanish with the close.
    let dir = temp_dir("tls-notify-pki");
    let pki = Pki::new(&dir, "a");
    let server = with_tls("tls-notify", &pki, |c| c.encryption = false);
    for uid in ["ann", "bo"] {
        register(&server, uid, "t", 1, 0);
    }
    let mut bo = Client::ok(
        server.tcp_addr(),
        &Login {
            encrypt: false,
            ..Login::new("bo", "t")
        },
    );
    let mut tls = connect(server.tls_addr().unwrap(), &pki.client()).unwrap();
    let mut burst = bytes::BytesMut::new();
    let connect_packet = ruyi_proto::Packet::Connect(ruyi_proto::ConnectPacket {
        version: ruyi_proto::LATEST_VERSION,
        device_flag: 1,
        device_id: "d".into(),
        uid: "ann".into(),
        token: "t".into(),
        client_timestamp: 1_700_000_000_000,
        client_key: String::new(),
    });
    connect_packet
        .encode(ruyi_proto::LATEST_VERSION, &mut burst)
        .unwrap();
    let send = ruyi_proto::Packet::Send(ruyi_proto::SendPacket {
        client_seq: 1,
        client_msg_no: "m1".into(),
        channel_id: "bo".into(),
        channel_type: channel_type::PERSON,
        payload: bytes::Bytes::from_static(b"last words"),
        ..Default::default()
    });
    send.encode(ruyi_proto::LATEST_VERSION, &mut burst).unwrap();
    tls.conn.writer().write_all(&burst).unwrap();
    tls.conn.send_close_notify();
    while tls.conn.wants_write() {
        tls.conn.write_tls(&mut tls.sock).unwrap();
    }
    // The login is answered, the SEND is served, and the close_notify is then the
    // client's EOF: the server closes at once, not at the idle timeout. As after a FIN on
    // TCP, the SENDACK may or may not beat the close; the message is stored either way.
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer)
        .expect("the server closes once it has served the input");
    let packets = decode_all(&answer);
    assert!(
        matches!(packets.first(), Some(ruyi_proto::Packet::Connack(a)) if a.reason_code == 1),
        "{packets:?}"
    );
    assert!(
        packets[1..]
            .iter()
            .all(|p| matches!(p, ruyi_proto::Packet::Sendack(s) if s.reason_code == 1)),
        "{packets:?}"
    );
    assert_eq!(&bo.recv().payload[..], b"last words");
}

fn decode_all(mut bytes: &[u8]) -> Vec<ruyi_proto::Packet> {
    let mut out = Vec::new();
    while let Ok(Some((p, used))) =
        ruyi_proto::decode_packet(bytes, ruyi_proto::LATEST_VERSION, 1 << 20)
    {
        out.push(p);
        bytes = &bytes[used..];
    }
    out
}

#[test]
fn sighup_serves_a_new_certificate_to_new_handshakes_and_keeps_open_connections() {
    let dir = temp_dir("tls-reload");
    let (old, new) = (Pki::new(&dir, "old"), Pki::new(&dir, "new"));
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(&old.cert, &cert).unwrap();
    std::fs::copy(&old.key, &key).unwrap();
    let (tcp, http, tls) = (free_addr(), free_addr(), free_addr());
    let args = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tls-addr",
        &tls.to_string(),
        "--wss-addr",
        &free_addr().to_string(),
    ];
    let process = RuyiProcess::spawn_with_args(&dir.join("data"), tcp, http, &[], &args);
    let hup = || {
        let pid = process.child.id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    };
    // Token auth is off on the spawned binary: any token logs in.
    let mut ann = Client::ok(relay(tls, old.client()), &Login::new("ann", "t"));
    let mut bo = Client::ok(tcp, &Login::new("bo", "t"));

    std::fs::copy(&new.cert, &cert).unwrap();
    std::fs::copy(&new.key, &key).unwrap();
    hup();
    let deadline = Instant::now() + Duration::from_secs(5);
    while connect(tls, &new.client()).is_err() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        connect(tls, &old.client()).is_err(),
        "the old certificate is still served"
    );
    // The connection from before the reload is untouched.
    ann.send("bo", channel_type::PERSON, b"across a reload", "m1");
    assert_eq!(ann.sendack().reason_code, 1);
    assert_eq!(&bo.recv().payload[..], b"across a reload");
    bo.send("ann", channel_type::PERSON, b"and back", "m2");
    assert_eq!(bo.sendack().reason_code, 1);
    assert_eq!(&ann.recv().payload[..], b"and back");

    // A broken file on the next SIGHUP keeps the certificate in use.
    std::fs::write(&cert, "not a certificate").unwrap();
    hup();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        connect(tls, &new.client()).is_ok(),
        "a failed reload dropped the certificate"
    );
}
