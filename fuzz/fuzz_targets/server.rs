//! Fuzz the whole server input path: real Ruyi servers in this process, real loopback
//! sockets, and the fuzzer's bytes sent to them as a hostile client would, on the TCP,
//! WebSocket and HTTP ports, before and after a valid login. Any panic on any server
//! thread aborts the process (a crash for the fuzzer); every few hundred inputs a fresh
//! client logs in and expects a PONG, so a server that stopped answering is a crash too.
//!
//! ```text
//! scripts/fuzz.sh 60            # both targets, 60 s each, no cargo-fuzz needed
//! cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run server -- -max_total_time=60
//! ```
//!
//! The first input byte picks what comes before the rest of the input:
//! - 0: nothing, on the TCP port of the strict server (token auth and encryption on);
//! - 1: a valid CONNECT (version from the second byte), same server: the connect state
//!   machine with bytes arriving while the login is checked, and after it;
//! - 2: a CONNECT to the open server (no token check, no encryption), so SENDs reach the
//!   channels and storage;
//! - 3: a WebSocket upgrade on the open server, then raw bytes (frames or not);
//! - 4: nothing, on the open server's HTTP port (the JSON API, storage reads and writes);
//! - 5: a WebSocket upgrade and a JSON-RPC `connect` on the open server, then the rest as
//!   one text message: the JSON-RPC dialect after a login;
//! - 6 and 7: nothing, on the TCP and WebSocket ports of a server that trusts 127.0.0.1 as
//!   a proxy: the PROXY protocol reader (a TCP connection without a header is closed).

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ruyi::ws::{client_frame, OP_TEXT};
use ruyi::{Config, Server};
use ruyi_proto::{decode_packet, ConnectPacket, Packet, MAX_BODY_BYTES};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Servers {
    strict: Server,
    open: Server,
    proxied: Server,
    /// The strict server's token for uid "fuzz", and a valid client key.
    token: String,
    client_key: String,
}

static SERVERS: OnceLock<Servers> = OnceLock::new();

const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
static INPUTS: AtomicU64 = AtomicU64::new(0);

/// Health check period, in inputs.
const CHECK_EVERY: u64 = 256;

fn servers() -> &'static Servers {
    SERVERS.get_or_init(|| {
        // A panic anywhere, on any server thread, is a finding.
        std::panic::set_hook(Box::new(|info| {
            eprintln!("panic: {info}");
            std::process::abort();
        }));
        let dir = std::env::temp_dir().join(format!("ruyi-fuzz-{}", std::process::id()));
        let start = |name: &str, tweak: &dyn Fn(&mut Config)| {
            let mut c = Config::for_test(dir.join(name));
            c.connect_timeout = Duration::from_millis(500);
            c.http_request_timeout = Duration::from_millis(500);
            // Every input logs in as the same uid, thousands of times a second: the login
            // limits (tested in tests/security.rs) would refuse most and hide the paths
            // behind a login from the fuzzer.
            c.max_logins_per_sec_per_uid = 0;
            c.max_conns_per_uid = usize::MAX;
            tweak(&mut c);
            Server::start(c).expect("server starts")
        };
        let strict = start("strict", &|_| {});
        let open = start("open", &|c| {
            c.token_auth = false;
            c.encryption = false;
        });
        let proxied = start("proxied", &|c| c.proxy_from = vec!["127.0.0.1".into()]);
        let token = "fuzz-token".to_owned();
        let body =
            format!(r#"{{"uid":"fuzz","token":"{token}","device_flag":1,"device_level":1}}"#);
        let answer = exchange(strict.http_addr(), &http_post("/user/token", &body));
        assert!(answer.starts_with(b"HTTP/1.1 200"), "token registered");
        let secret = ruyi_proto::crypto::random_secret().expect("randomness");
        Servers {
            strict,
            open,
            proxied,
            token,
            client_key: ruyi_proto::crypto::public_key_b64(secret),
        }
    })
}

fn http_post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn connect_packet(version: u8, token: &str, client_key: &str) -> Vec<u8> {
    let mut buf = BytesMut::new();
    ConnectPacket {
        version,
        device_flag: 1,
        device_id: "fuzz-device".into(),
        uid: "fuzz".into(),
        token: token.into(),
        client_timestamp: 0,
        client_key: client_key.into(),
    }
    .encode(&mut buf)
    .expect("CONNECT encodes");
    buf.to_vec()
}

/// Sends `bytes`, closes our writing side, and reads what comes back until the server
/// closes (or 3 s pass: a server may legitimately keep a half-closed socket a while).
fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return Vec::new(); // Refused at accept (a limit): not this input's business.
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// A fresh client logs in to `server` and gets a PONG for its PING.
fn check_alive(server: &Server, connect: &[u8]) {
    let mut s = TcpStream::connect(server.tcp_addr()).expect("the server accepts");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut hello = connect.to_vec();
    hello.extend_from_slice(&ruyi_proto::PING);
    s.write_all(&hello).expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "the server stopped answering PING"
        );
        if let Ok(n) = s.read(&mut chunk) {
            assert!(n > 0, "the server closed a healthy client");
            buf.extend_from_slice(&chunk[..n]);
        }
        let mut rest = &buf[..];
        while let Ok(Some((packet, used))) = decode_packet(rest, 4, MAX_BODY_BYTES) {
            if matches!(packet, Packet::Pong) {
                return;
            }
            rest = &rest[used..];
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let s = servers();
    let n = INPUTS.fetch_add(1, Ordering::Relaxed);
    if n % CHECK_EVERY == 0 {
        check_alive(&s.open, &connect_packet(4, "", ""));
    }
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 8 {
        0 => {
            exchange(s.strict.tcp_addr(), rest);
        }
        1 => {
            let (version, rest) = rest.split_first().unwrap_or((&4, &[]));
            let mut bytes = connect_packet(2 + version % 4, &s.token, &s.client_key);
            bytes.extend_from_slice(rest);
            exchange(s.strict.tcp_addr(), &bytes);
        }
        2 => {
            let mut bytes = connect_packet(4, "", "");
            bytes.extend_from_slice(rest);
            exchange(s.open.tcp_addr(), &bytes);
        }
        3 => {
            let mut bytes = UPGRADE.to_vec();
            bytes.extend_from_slice(rest);
            exchange(s.open.ws_addr(), &bytes);
        }
        4 => {
            exchange(s.open.http_addr(), rest);
        }
        5 => {
            let mut bytes = UPGRADE.to_vec();
            let connect = br#"{"id":"c","method":"connect","params":{"uid":"fuzz","token":"x"}}"#;
            bytes.extend(client_frame(OP_TEXT, true, connect, [1, 2, 3, 4]));
            bytes.extend(client_frame(OP_TEXT, true, rest, [5, 6, 7, 8]));
            exchange(s.open.ws_addr(), &bytes);
        }
        6 => {
            exchange(s.proxied.tcp_addr(), rest);
        }
        _ => {
            exchange(s.proxied.ws_addr(), rest);
        }
    }
});
