//! A real protocol client and an HTTP helper for the server's integration tests, speaking
//! to a real server over loopback sockets.

#![allow(dead_code, clippy::unwrap_used)]

pub mod cluster;
pub mod metrics;
pub mod nats;
pub mod pg;
pub mod process;
pub mod rpc;
pub mod tls;

pub use process::{free_addr, RuyiProcess};

use bytes::{Bytes, BytesMut};
use ruyi::{Config, Server};
use ruyi_proto::crypto::{public_key_b64, random_secret};
use ruyi_proto::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A test that cannot run here (an outside component is missing) says so loudly and
/// passes on a developer's machine; under `CI=true` it fails, so CI never passes by
/// skipping.
pub fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and this test cannot run: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

pub fn init() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// A fresh data directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ruyi-test-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The PostgreSQL server the suite runs on (`RUYI_TEST_PG`: an admin URL naming database
/// `postgres`, as `scripts/pg-test-server.sh` prints it); `None`: the suite runs on SQLite.
pub fn pg_admin() -> Option<String> {
    std::env::var("RUYI_TEST_PG").ok().filter(|v| !v.is_empty())
}

/// A store for one test server: `sqlite`, or a new, empty PostgreSQL database when the
/// suite runs on PostgreSQL (issue 16: every storage test runs on both).
pub fn test_store(name: &str) -> String {
    let Some(admin) = pg_admin() else {
        return "sqlite".to_owned();
    };
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    let db = format!(
        "t_{clean}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut client =
        postgres::Client::connect(&admin, postgres::NoTls).expect("the test PostgreSQL answers");
    client
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .expect("a test database");
    admin.replacen("/postgres?", &format!("/{db}?"), 1)
}

/// The test config for a server named `name`: ephemeral ports, a fresh data directory,
/// and the suite's store.
pub fn test_config(name: &str) -> Config {
    let mut config = Config::for_test(temp_dir(name));
    config.store = test_store(name);
    config
}

/// Makes the binary started on `dir` ([`RuyiProcess`]) use SQLite whatever the suite's
/// store: for the tests of SQLite's own files (its WAL, its backup).
pub fn pin_sqlite(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("test-store"), "sqlite").unwrap();
}

/// [`test_config`] with data in `dir`.
pub fn test_config_in(dir: &std::path::Path) -> Config {
    let mut config = Config::for_test(dir);
    config.store = test_store(&dir.file_name().unwrap_or_default().to_string_lossy());
    config
}

/// Starts an in-process server on ephemeral ports with `tweak` applied to the test config.
pub fn start(name: &str, tweak: impl FnOnce(&mut Config)) -> Server {
    init();
    let mut config = test_config(name);
    tweak(&mut config);
    Server::start(config).expect("server starts")
}

/// Writes one whole HTTP request and returns (status, body as text).
fn exchange(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// POSTs JSON and returns (status, body as JSON or Null).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let (status, text) = exchange(
        addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// GETs `path` and returns (status, body as text): for `/metrics`.
pub fn http_text(addr: SocketAddr, path: &str) -> (u16, String) {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    )
}

pub fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    http(addr, "POST", path, &body)
}

/// Registers `uid`'s token for `flag` at `level`.
pub fn register(server: &Server, uid: &str, token: &str, flag: u8, level: u8) {
    let (status, body) = post(
        server.http_addr(),
        "/user/token",
        serde_json::json!({"uid": uid, "token": token, "device_flag": flag, "device_level": level}),
    );
    assert_eq!((status, &body), (200, &serde_json::json!({"status": 200})));
}

/// A protocol client: blocking socket, optional encryption, the session version it asked.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub version: u8,
    pub cipher: Option<SessionCipher>,
    pub uid: String,
    next_seq: u32,
}

pub struct Login<'a> {
    pub uid: &'a str,
    pub token: &'a str,
    pub device_flag: u8,
    pub device_id: &'a str,
    pub version: u8,
    pub encrypt: bool,
}

impl<'a> Login<'a> {
    pub fn new(uid: &'a str, token: &'a str) -> Self {
        Login {
            uid,
            token,
            device_flag: 1,
            device_id: "dev",
            version: 5,
            encrypt: true,
        }
    }
}

impl Client {
    /// The CONNACK, or None when the server closed the connection without one.
    fn connack(&mut self) -> Option<ConnackPacket> {
        match self.read_packet(Duration::from_secs(10)) {
            Some(Packet::Connack(ack)) => Some(ack),
            _ => None,
        }
    }

    /// True when the server closes a CONNECT for `uid` without answering it (PROTOCOL.md
    /// §6.2: an invalid uid; a login shed in a storm). The CONNECT carries a client key,
    /// as an SDK's does, so a login that is answered costs the server its key exchange.
    pub fn connect_is_dropped(addr: SocketAddr, uid: &str) -> bool {
        Client::connect_with_token_is_dropped(addr, uid, "t")
    }

    /// [`Client::connect_is_dropped`] with a given token (a large one, say).
    pub fn connect_with_token_is_dropped(addr: SocketAddr, uid: &str, token: &str) -> bool {
        let stream = TcpStream::connect(addr).unwrap();
        let mut c = Client::from_stream(stream);
        c.write(&Packet::Connect(ConnectPacket {
            version: LATEST_VERSION,
            device_flag: 1,
            device_id: "dev".into(),
            uid: uid.into(),
            token: token.into(),
            client_timestamp: 1_700_000_000_000,
            client_key: public_key_b64(random_secret().unwrap()),
        }));
        c.connack().is_none()
    }

    /// Connects and sends CONNECT; returns the client and the CONNACK.
    pub fn login(addr: SocketAddr, l: &Login<'_>) -> (Client, ConnackPacket) {
        Client::login_over(TcpStream::connect(addr).unwrap(), l)
    }

    /// [`Client::login`] on a connected socket (for tests that send bytes before CONNECT,
    /// such as a PROXY header).
    pub fn login_over(stream: TcpStream, l: &Login<'_>) -> (Client, ConnackPacket) {
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let secret = random_secret().unwrap();
        let mut c = Client {
            stream,
            buf: Vec::new(),
            version: l.version,
            cipher: None,
            uid: l.uid.to_owned(),
            next_seq: 1,
        };
        c.write(&Packet::Connect(ConnectPacket {
            version: l.version,
            device_flag: l.device_flag,
            device_id: l.device_id.into(),
            uid: l.uid.into(),
            token: l.token.into(),
            client_timestamp: 1_700_000_000_000,
            client_key: if l.encrypt {
                public_key_b64(secret)
            } else {
                String::new()
            },
        }));
        let Some(ack) = c.connack() else {
            panic!("no CONNACK for {}", l.uid)
        };
        if ack.reason_code == 1 {
            if ack.server_version > 0 {
                c.version = ack.server_version;
            }
            if !ack.server_key.is_empty() {
                c.cipher = Some(SessionCipher::derive(secret, &ack.server_key, &ack.salt).unwrap());
            }
        }
        (c, ack)
    }

    /// Logs in and asserts success.
    pub fn ok(addr: SocketAddr, l: &Login<'_>) -> Client {
        let (c, ack) = Client::login(addr, l);
        assert_eq!(ack.reason_code, 1, "login of {} refused", l.uid);
        c
    }

    /// Wraps a raw socket (for tests that send hand-made bytes).
    pub fn from_stream(stream: TcpStream) -> Client {
        Client {
            stream,
            buf: Vec::new(),
            version: LATEST_VERSION,
            cipher: None,
            uid: "raw".into(),
            next_seq: 1,
        }
    }

    pub fn write(&mut self, p: &Packet) {
        let mut buf = BytesMut::new();
        p.encode(self.version, &mut buf).unwrap();
        self.stream.write_all(&buf).unwrap();
    }

    /// Reads one packet, or None on timeout or close.
    pub fn read_packet(&mut self, timeout: Duration) -> Option<Packet> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((p, used)) = decode_packet(&self.buf, self.version, MAX_BODY_BYTES).unwrap()
            {
                self.buf.drain(..used);
                return Some(p);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends a message (encrypted when the session is), returns its client_seq.
    pub fn send(
        &mut self,
        channel_id: &str,
        channel_type: u8,
        plain: &[u8],
        client_msg_no: &str,
    ) -> u32 {
        let client_seq = self.next_seq;
        self.next_seq += 1;
        self.send_with(
            client_seq,
            channel_id,
            channel_type,
            plain,
            client_msg_no,
            Flags(Flags::RED_DOT),
        );
        client_seq
    }

    pub fn send_with(
        &mut self,
        client_seq: u32,
        channel_id: &str,
        channel_type: u8,
        plain: &[u8],
        client_msg_no: &str,
        flags: Flags,
    ) {
        let (payload, msg_key) = match &self.cipher {
            Some(c) => {
                let wire = c.encrypt_b64(plain);
                let key = c.send_msg_key(
                    client_seq,
                    client_msg_no,
                    channel_id,
                    channel_type,
                    wire.as_bytes(),
                );
                (Bytes::from(wire.into_bytes()), key)
            }
            None => (Bytes::copy_from_slice(plain), String::new()),
        };
        self.write(&Packet::Send(SendPacket {
            flags,
            client_seq,
            client_msg_no: client_msg_no.into(),
            channel_id: channel_id.into(),
            channel_type,
            msg_key,
            payload,
            ..Default::default()
        }));
    }

    /// The next SENDACK (skipping nothing else: panics on another packet).
    pub fn sendack(&mut self) -> SendackPacket {
        match self.read_packet(Duration::from_secs(10)) {
            Some(Packet::Sendack(a)) => a,
            other => panic!("{}: expected SENDACK, got {other:?}", self.uid),
        }
    }

    /// The next RECV, msgKey checked and payload decrypted as an SDK would.
    pub fn recv(&mut self) -> RecvPacket {
        match self.read_packet(Duration::from_secs(10)) {
            Some(Packet::Recv(r)) => self.open(r),
            other => panic!("{}: expected RECV, got {other:?}", self.uid),
        }
    }

    /// Checks and decrypts a RECV the way the SDKs do (JSSDK.md §5).
    pub fn open(&self, mut r: RecvPacket) -> RecvPacket {
        if let Some(c) = &self.cipher {
            let plain = c
                .open_recv(&r)
                .unwrap_or_else(|e| panic!("{}: {e}", self.uid));
            r.payload = Bytes::from(plain);
        }
        r
    }

    /// A RECVACK that may meet a dead server: false if it could not be written.
    pub fn try_recvack(&mut self, r: &RecvPacket) -> bool {
        let mut buf = BytesMut::new();
        Packet::Recvack(RecvackPacket {
            flags: Flags(0),
            message_id: r.message_id,
            message_seq: r.message_seq,
        })
        .encode(self.version, &mut buf)
        .unwrap();
        self.stream.write_all(&buf).is_ok()
    }

    pub fn recvack(&mut self, r: &RecvPacket) {
        self.write(&Packet::Recvack(RecvackPacket {
            flags: Flags(0),
            message_id: r.message_id,
            message_seq: r.message_seq,
        }));
    }

    /// True when nothing arrives within `d`.
    pub fn quiet_for(&mut self, d: Duration) -> bool {
        match self.read_packet(d) {
            None => true,
            Some(p) => panic!("{}: unexpected {p:?}", self.uid),
        }
    }

    /// True when the server closed the connection within `d` (after any packets).
    pub fn closed_within(&mut self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        loop {
            let left = match deadline.checked_duration_since(Instant::now()) {
                Some(l) => l,
                None => return false,
            };
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// A blocking TCP connection to `addr` from the loopback source address `source` (for
/// example 127.0.0.2), as a second host would connect.
pub fn connect_from(source: std::net::Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect(&addr.into())?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

/// A channel's whole history as (seq, message id), read page by page over the HTTP API.
pub fn history(http: SocketAddr, login: &str, channel: &str, ctype: u8) -> Vec<(u32, i64)> {
    let mut out = Vec::new();
    let mut start = 1;
    loop {
        let (status, v) = post(
            http,
            "/channel/messagesync",
            serde_json::json!({"login_uid": login, "channel_id": channel, "channel_type": ctype, "start_message_seq": start, "end_message_seq": 0, "limit": 1000, "pull_mode": 1}),
        );
        assert_eq!(status, 200);
        let page: Vec<(u32, i64)> = v["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("no messages in {v}"))
            .iter()
            .map(|m| {
                (
                    m["message_seq"].as_u64().unwrap() as u32,
                    m["message_id"].as_i64().unwrap(),
                )
            })
            .collect();
        let Some(&(last, _)) = page.last() else {
            return out;
        };
        out.extend(page);
        start = last + 1;
    }
}

/// A self-signed certificate for 127.0.0.1 and its key: a TLS peer to trust by CA file.
pub fn localhost_cert() -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(std::net::IpAddr::V4(
        std::net::Ipv4Addr::LOCALHOST,
    ))];
    (params.self_signed(&key).unwrap(), key)
}

/// One page of `uid`'s offline queue (`/message/sync`, up to 1,000 entries).
pub fn queue(http: SocketAddr, uid: &str) -> Vec<Value> {
    let (status, list) = post(
        http,
        "/message/sync",
        serde_json::json!({"uid": uid, "limit": 1000}),
    );
    assert_eq!(status, 200, "{list}");
    list.as_array().expect("an array").clone()
}

/// Reads the whole queue as a client does, page by page: sync, syncack the last seq, sync
/// again, until a sync returns nothing or `n` entries were read (at most 10 s).
pub fn drain(http: SocketAddr, uid: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut all = Vec::new();
    while all.len() < n && Instant::now() < deadline {
        let page = queue(http, uid);
        let Some(last) = page.last().map(|m| m["message_seq"].clone()) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        all.extend(page);
        let (status, _) = post(
            http,
            "/message/syncack",
            serde_json::json!({"uid": uid, "last_message_seq": last}),
        );
        assert_eq!(status, 200);
    }
    all
}
