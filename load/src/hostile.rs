//! `ruyi-load hostile`: hostile and broken clients against a running server, one kind at a
//! time, while healthy pairs keep chatting at a fixed rate and their latency is measured.
//!
//! Each phase starts the attackers, runs the healthy person chat (`--pairs` pairs at
//! `--rate` messages per second per sender, encrypted, RECVACKed, loss and duplicates
//! counted) for `--seconds`, then stops the attackers and samples the server's RSS. The
//! first phase has no attacker: it is the quiet baseline every other phase's p99 is
//! compared with. The server is expected to run with encryption on and token auth off
//! (scripts/hostile.sh starts it so).
//!
//! The tests in `tests/` check what each offender gets (a reason code, a status, a close);
//! this tool measures what everyone else pays for it.

use crate::im::{self, ImArgs, PersonArgs};
use crate::report::Percentiles;
use clap::Args;
use ruyi_proto::{ConnectPacket, Packet, SendPacket};
use serde::Serialize;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct HostileArgs {
    /// Binary protocol address.
    #[arg(long, default_value = "127.0.0.1:5100")]
    pub tcp: SocketAddr,
    /// WebSocket address.
    #[arg(long, default_value = "127.0.0.1:5200")]
    pub ws: SocketAddr,
    /// HTTP API address.
    #[arg(long, default_value = "127.0.0.1:5001")]
    pub http: SocketAddr,
    /// Healthy pairs.
    #[arg(long, default_value_t = 20)]
    pub pairs: usize,
    /// Messages per second per healthy sender.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Only the phases whose names contain this.
    #[arg(long)]
    pub only: Option<String>,
    /// Server PID, for its RSS after each phase.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Phase {
    name: &'static str,
    sendack: Percentiles,
    delivery: Percentiles,
    /// Healthy p99 delivery latency over the quiet baseline's.
    p99_ratio: f64,
    healthy_sends: u64,
    refused: u64,
    lost: u64,
    duplicated: u64,
    /// Hostile connections opened during the phase.
    attacks: u64,
    server_rss_bytes: Option<u64>,
}

/// An attack: runs until `stop`, counting the hostile connections it opens.
type Attack = fn(&HostileArgs, &AtomicBool, &AtomicU64);

const PHASES: [(&str, Option<Attack>); 16] = [
    ("quiet baseline", None),
    ("random bytes", Some(random_bytes)),
    ("length prefix of 100 MiB", Some(huge_length)),
    ("half frames then silence", Some(half_frames)),
    ("valid CONNECT then garbage", Some(connect_then_garbage)),
    ("packets before CONNECT", Some(before_connect)),
    ("bad msgKey flood", Some(bad_msg_key)),
    ("invalid UTF-8 strings", Some(invalid_utf8)),
    ("5,000 connections that never CONNECT", Some(never_connect)),
    ("slowloris HTTP headers", Some(slowloris)),
    (
        "WebSocket frames unmasked or 1 GiB long",
        Some(ws_bad_frames),
    ),
    (
        "a member that never reads, group flooded",
        Some(never_reads),
    ),
    ("2,000 half-sent 15 KiB logins", Some(half_sent_logins)),
    ("one valid login replayed", Some(replayed_login)),
    (
        "one uid, 400 connections, 700 KB to itself",
        Some(one_uid_many_connections),
    ),
    ("quiet again", None),
];

pub fn run(args: &HostileArgs) -> io::Result<()> {
    let meta = crate::meta::collect("hostile", args.server_pid, args, UNITS);
    let mut phases: Vec<Phase> = Vec::new();
    let mut baseline_p99 = None;
    for (i, (name, attack)) in PHASES.iter().enumerate() {
        let wanted = args.only.as_deref().is_none_or(|o| name.contains(o));
        if i > 0 && !wanted {
            continue;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let attacker = attack.map(|attack| {
            let (args, stop, opened) = (args.clone(), Arc::clone(&stop), Arc::clone(&opened));
            std::thread::spawn(move || attack(&args, &stop, &opened))
        });
        let healthy = im::person(&PersonArgs {
            im: healthy_args(args, i),
            pairs: args.pairs,
        });
        stop.store(true, Ordering::Release);
        if let Some(a) = attacker {
            let _ = a.join();
        }
        let r = healthy?;
        let p99 = r.delivery_latency.p99_us.max(1) as f64;
        let base = *baseline_p99.get_or_insert(p99);
        let phase = Phase {
            name,
            sendack: r.sendack_latency,
            delivery: r.delivery_latency,
            p99_ratio: p99 / base,
            healthy_sends: r.sends,
            refused: r.refused,
            lost: r.lost,
            duplicated: r.duplicated,
            attacks: opened.load(Ordering::Relaxed),
            server_rss_bytes: args.server_pid.map(crate::procfs::rss_bytes).transpose()?,
        };
        println!(
            "phase {:<42} healthy delivery p99={}us ({:.2}x quiet) sendack p99={}us lost={} dup={} refused={} hostile conns={} server rss={}",
            phase.name,
            phase.delivery.p99_us,
            phase.p99_ratio,
            phase.sendack.p99_us,
            phase.lost,
            phase.duplicated,
            phase.refused,
            phase.attacks,
            phase
                .server_rss_bytes
                .map_or("-".into(), |b| format!("{} MiB", b >> 20)),
        );
        phases.push(phase);
    }
    let lossy: Vec<&str> = phases
        .iter()
        .filter(|p| p.lost + p.duplicated > 0)
        .map(|p| p.name)
        .collect();
    #[derive(serde::Serialize)]
    struct Phases {
        phases: Vec<Phase>,
    }
    crate::meta::write_json(args.json.as_deref(), &meta, &Phases { phases })?;
    if !lossy.is_empty() {
        return Err(io::Error::other(format!(
            "healthy messages lost or duplicated in: {}",
            lossy.join(", ")
        )));
    }
    Ok(())
}

/// The meaning of each figure of a [`Phase`] (`meta.rs`).
const UNITS: &[(&str, &str)] = &[
    (
        "phases",
        "one entry per phase: the quiet baseline, then one hostile kind each",
    ),
    (
        "sendack",
        "healthy pairs' SENDACK latency in the phase, microseconds from the scheduled send",
    ),
    (
        "delivery",
        "healthy pairs' delivery latency in the phase, microseconds",
    ),
    (
        "p99_ratio",
        "the phase's healthy p99 delivery latency / the quiet baseline's",
    ),
    ("healthy_sends", "healthy SENDs acknowledged in the phase"),
    ("refused", "healthy SENDs refused"),
    ("lost", "healthy acknowledged messages never delivered"),
    ("duplicated", "healthy messages delivered twice"),
    ("attacks", "hostile connections opened in the phase"),
    (
        "server_rss_bytes",
        "server resident memory at the end of the phase, bytes",
    ),
];

fn healthy_args(args: &HostileArgs, phase: usize) -> ImArgs {
    ImArgs {
        tcp: args.tcp,
        servers: Vec::new(),
        http: args.http,
        failover: false,
        http_servers: Vec::new(),
        ws: None,
        encrypt: true,
        jsonrpc: false,
        peer: crate::peer::Peer::Ruyi,
        tls_ca: None,
        window: 64,
        rate: args.rate,
        sources: 1,
        size: 100,
        threads: 1,
        warmup: 1,
        seconds: args.seconds,
        server_pid: None,
        json: None,
        svg: None,
        prefix: format!("healthy{phase}"),
    }
}

/// A blocking connection from 127.0.0.<10 + n % 50>: attackers come from addresses other
/// than the healthy pairs' 127.0.0.1, as they would, and spread under the per-address limit.
fn hostile_connect(addr: SocketAddr, n: u64) -> io::Result<TcpStream> {
    let source = Ipv4Addr::new(127, 0, 0, 10 + (n % 50) as u8);
    let s = crate::connect_from(addr, Some(source))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// Writes `bytes`, then reads until the server closes or 2 s pass.
fn hit(addr: SocketAddr, n: u64, bytes: &[u8]) {
    let Ok(mut s) = hostile_connect(addr, n) else {
        // Refused (a limit, or the server is down): do not spin a core on it.
        std::thread::sleep(Duration::from_millis(10));
        return;
    };
    let _ = s.write_all(bytes);
    let mut sink = [0u8; 4096];
    while matches!(s.read(&mut sink), Ok(k) if k > 0) {}
}

/// A cheap xorshift: attack bytes need no quality, only variety.
fn noise(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

fn packet(p: &Packet) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    // Encoding our own well-formed packets cannot fail.
    let _ = p.encode(4, &mut buf);
    buf.to_vec()
}

fn connect_bytes(uid: &str, key: String) -> Vec<u8> {
    packet(&Packet::Connect(ConnectPacket {
        version: 4,
        device_flag: 1,
        device_id: format!("{uid}-d"),
        uid: uid.into(),
        token: "x".into(),
        client_timestamp: 0,
        client_key: key,
    }))
}

fn client_key() -> String {
    ruyi_proto::crypto::random_secret()
        .map(ruyi_proto::crypto::public_key_b64)
        .unwrap_or_default()
}

/// Runs `each(n)` with n = 0, 1, 2, ... until `stop`, counting each in `opened`.
fn repeat(stop: &AtomicBool, opened: &AtomicU64, mut each: impl FnMut(u64)) {
    while !stop.load(Ordering::Acquire) {
        each(opened.fetch_add(1, Ordering::Relaxed));
    }
}

fn random_bytes(args: &HostileArgs, stop: &AtomicBool, opened: &AtomicU64) {
    let mut seed = 0x9E37_79B9_7F4A_7C15;
    repeat(stop, opened, |n| hit(args.tcp, n, &noise(&mut seed, 4096)));
}

fn huge_length(args: &HostileArgs, stop: &AtomicBool, opened: &AtomicU64) {
    // SEND header, remaining length 100 MiB as a varint, then some of the "body".
    let mut bytes = vec![0x30, 0x80, 0x80, 0x80, 0x32];
    bytes.extend_from_slice(&[0u8; 1024]);
    repeat(stop, opened, |n| hit(args.tcp, n, &bytes));
}

fn half_frames(args: &HostileArgs, stop: &AtomicBool, opened: &AtomicU64) {
    // 200 connections each holding half a CONNECT until the login deadline closes them.
    let whole = connect_bytes("half", String::new());
    hold_open(args.tcp, stop, opened, 200, &whole[..whole.len() / 2]);
}

/// Keeps `count` connections open, each having sent `hello`, replacing those the server
/// closes, until `stop`.
fn hold_open(addr: SocketAddr, stop: &AtomicBool, opened: &AtomicU64, count: usize, hello: &[u8]) {
    hold_open_with(addr, stop, opened, count, |_| hello.to_vec());
}

/// [`hold_open`] where connection `n` sends `hello(n)`.
fn hold_open_with(
    addr: SocketAddr,
    stop: &AtomicBool,
    opened: &AtomicU64,
    count: usize,
    hello: impl Fn(u64) -> Vec<u8>,
) {
    let mut held: Vec<TcpStream> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        held.retain_mut(|s| {
            let mut b = [0u8; 16];
            let _ = s.set_nonblocking(true);
            !matches!(s.read(&mut b), Ok(0))
        });
        while held.len() < count && !stop.load(Ordering::Acquire) {
            let n = opened.fetch_add(1, Ordering::Relaxed);
            match hostile_connect(addr, n) {
                Ok(mut s) => {
                    let _ = s.write_all(&hello(n));
                    held.push(s);
                }
                Err(_) => break,
            }
        }
        // Checking thousands of sockets is as many syscalls on the machine the server
        // shares: once a second keeps the attacker's own cost out of the measurement.
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn connect_then_garbage(args: &HostileArgs, stop: &AtomicBool, opened: &AtomicU64) {
    let mut seed = 0x2545_F491_4F6C_DD1D;
    repeat(stop, opened, |n| {
        let mut bytes = connect_bytes(&format!("cg{n}"), client_key());
        bytes.extend(noise(&mut seed, 2048));
        hit(args.tcp, n, &bytes);
    });
}

fn before_connect(args: &HostileArgs, stop: &AtomicBool, opened: &AtomicU64) {
    let send = packet(&Packet::Send(SendPacket {
        channel_id: "victim".into(),
        channel_type: 1,
        payload: bytes::Bytes::from_static(b"early"),
        ..Default::default()
    }));
    let bytes: Vec<u8> = send.iter().copied().cycle().take(send.len() * 20).collect();
    repeat(stop, opened, |n| hit(args.tcp, n, &bytes));
}

fn bad_msg_key(args: &HostileArgs, stop: &AtomicBool, opened: &AtomicU64) {
    // Logged in with the key exchange, then SENDs whose msgKey is wrong: each costs the
    // server a check and a SENDACK 9 (and the rate limit's 22 past 200/s).
    repeat(stop, opened, |n| {
        let send = packet(&Packet::Send(SendPacket {
            channel_id: "victim".into(),
            channel_type: 1,
            client_seq: 1,
            msg_key: "00000000000000000000000000000000".into(),
            payload: bytes::Bytes::from_static(b"bm90IHJlYWxseSBlbmNyeXB0ZWQ="),
            ..Default::default()
        }));
        let mut bytes = connect_bytes(&format!("bk{}", n % 20), client_key());
        for _ in 0..500 {
            bytes.extend_from_slice(&send);
        }
        hit(args.tcp, n, &bytes);
    });
}

fn invalid_utf8(args: &HostileArgs, stop: &AtomicBool, opened: &AtomicU64) {
    let mut bytes = connect_bytes("utf8", String::new());
    // Replace the uid's bytes ("utf8") with invalid UTF-8 of the same length.
    if let Some(at) = bytes.windows(4).position(|w| w == b"utf8") {
        bytes[at..at + 4].copy_from_slice(&[0xC3, 0x28, 0xFF, 0xFE]);
    }
    repeat(stop, opened, |n| hit(args.tcp, n, &bytes));
}

fn never_connect(args: &HostileArgs, stop: &AtomicBool, opened: &AtomicU64) {
    // 5,000 open at a time; each is closed by the login deadline and replaced.
    hold_open(args.tcp, stop, opened, 5000, &[]);
}

fn slowloris(args: &HostileArgs, stop: &AtomicBool, opened: &AtomicU64) {
    // 500 HTTP connections, each trickling one header byte every 100 ms.
    let mut held: Vec<TcpStream> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        while held.len() < 500 {
            let n = opened.fetch_add(1, Ordering::Relaxed);
            match hostile_connect(args.http, n) {
                Ok(mut s) => {
                    let _ = s.write_all(b"GET /health HTTP/1.1\r\nX-a: ");
                    held.push(s);
                }
                Err(_) => break,
            }
        }
        held.retain_mut(|s| s.write_all(b"a").is_ok());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ws_bad_frames(args: &HostileArgs, stop: &AtomicBool, opened: &AtomicU64) {
    let upgrade = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    repeat(stop, opened, |n| {
        let mut bytes = upgrade.to_vec();
        if n % 2 == 0 {
            bytes.extend_from_slice(&[0x82, 0x05, 1, 2, 3, 4, 5]); // unmasked
        } else {
            // Masked, 64-bit length of 1 GiB, then a little of it.
            bytes.extend_from_slice(&[0x82, 0xFF, 0, 0, 0, 0, 0x40, 0, 0, 0, 1, 2, 3, 4]);
            bytes.extend_from_slice(&[0u8; 4096]);
        }
        hit(args.ws, n, &bytes);
    });
}

fn never_reads(args: &HostileArgs, stop: &AtomicBool, opened: &AtomicU64) {
    // A group of one member that never reads; the API sends it 16 KB messages, 100 a
    // second (1.6 MB/s: a busy group, not a storage benchmark), until the server closes
    // it at its output cap; then it comes back.
    let group = serde_json::json!({"channel_id": "hostile-flood", "channel_type": 2, "subscribers": ["sloth"], "reset": 1});
    if im::http_post(args.http, "/channel", &group.to_string()).is_err() {
        return;
    }
    let payload = base64_of(16_000);
    let send = serde_json::json!({"from_uid": "flooder", "channel_id": "hostile-flood", "channel_type": 2, "payload": payload}).to_string();
    let mut sloth: Option<TcpStream> = None;
    while !stop.load(Ordering::Acquire) {
        // Never read: a PING that cannot be written means the server closed it.
        if sloth
            .as_mut()
            .is_none_or(|s| s.write_all(&ruyi_proto::PING).is_err())
        {
            let n = opened.fetch_add(1, Ordering::Relaxed);
            sloth = hostile_connect(args.tcp, n).ok().map(|mut s| {
                let _ = s.write_all(&connect_bytes("sloth", client_key()));
                s
            });
        }
        let _ = im::http_post(args.http, "/message/send", &send);
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn base64_of(len: usize) -> String {
    // 'A' * 4k is base64 of zero bytes: valid and cheap to build.
    "A".repeat(len / 3 * 4)
}

/// The first bytes of a CONNECT whose body is declared `declared` bytes long (fixed header
/// and base-128 remaining length, PROTOCOL.md §2).
fn connect_prefix(declared: usize) -> Vec<u8> {
    let mut out = vec![0x10];
    let mut n = declared;
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { byte | 0x80 } else { byte });
        if n == 0 {
            return out;
        }
    }
}

fn half_sent_logins(args: &HostileArgs, stop: &AtomicBool, opened: &AtomicU64) {
    // 2,000 connections each holding 12 KiB of a CONNECT declared 15 KiB long: 24 MB of
    // unauthenticated input, under the 16 KiB pre-login frame bound; past the server's
    // pre-login byte budget the newest are shed.
    let mut hello = connect_prefix(15 << 10);
    hello.extend(std::iter::repeat_n(b'x', 12 << 10));
    hold_open(args.tcp, stop, opened, 2000, &hello);
}

fn replayed_login(args: &HostileArgs, stop: &AtomicBool, opened: &AtomicU64) {
    // The same valid login (token auth is off here, so any is valid) as fast as it is
    // answered: each one the login rates let through costs the server a key exchange.
    let hello = connect_bytes("replayer", client_key());
    repeat(stop, opened, |n| {
        let Ok(mut s) = hostile_connect(args.tcp, n) else {
            std::thread::sleep(Duration::from_millis(10));
            return;
        };
        // Wait for the CONNACK, then hang up and log in again.
        let _ = s.write_all(&hello);
        let mut connack = [0u8; 256];
        let _ = s.read(&mut connack);
    });
}

fn one_uid_many_connections(args: &HostileArgs, stop: &AtomicBool, opened: &AtomicU64) {
    // One account tries to hold 400 connections (each another device, so none replaces
    // another) that never read, and its app sends it 700 KB messages, four a second: each
    // is encrypted once per connection the server let it keep.
    let payload = base64_of(700_000);
    let send = serde_json::json!({"from_uid": "hog", "channel_id": "hog", "channel_type": 1, "payload": payload}).to_string();
    let stop_sends = std::sync::Arc::new(AtomicBool::new(false));
    let sender = {
        let (http, stop_sends) = (args.http, std::sync::Arc::clone(&stop_sends));
        std::thread::spawn(move || {
            while !stop_sends.load(Ordering::Acquire) {
                let _ = im::http_post(http, "/message/send", &send);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    hold_open_with(args.tcp, stop, opened, 400, |n| {
        packet(&Packet::Connect(ConnectPacket {
            version: 4,
            device_flag: 1,
            device_id: format!("hog-{n}"),
            uid: "hog".into(),
            token: "x".into(),
            client_timestamp: 0,
            client_key: client_key(),
        }))
    });
    stop_sends.store(true, Ordering::Release);
    let _ = sender.join();
}
