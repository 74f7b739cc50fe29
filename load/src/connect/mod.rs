//! `ruyi-load connect`: a connect storm, then an idle hold of the logged-in connections.
//!
//! Phase 1 opens `--conns` connections at `--rate` per second (0 = as fast as possible, a
//! batch of `OPEN_BATCH` (`worker.rs`) between polls), each logging in with CONNECT and waiting for its
//! CONNACK; with `--encrypt` it does an SDK's whole work: a key pair before the CONNECT,
//! the session key derived from the CONNACK. It reports authenticated connects per second,
//! login latency (from the scheduled time, or the connection's opening when unpaced, to
//! the session key), the client's crypto CPU per login, and failures by kind. Phase 2
//! holds them for `--hold` seconds, each sending PING every `--ping-every` seconds as the
//! SDKs do, and samples the server's RSS and CPU from /proc: RSS per held connection
//! (signed) and CPU per second of holding, up to the end of the hold (not the teardown).
//! Run it against a freshly started server: a warm one has memory to reuse, which makes
//! the RSS delta meaningless.
//!
//! Past one process's open-file limit the connections are spread over `--processes`
//! worker processes (this binary, run again with `--worker`), and over 127.0.0.x source
//! addresses (`--sources`), each of which has its own ephemeral ports. Workers report on
//! stdout: a `ready` line when their connects are done, a JSON line at the end.

mod worker;

use worker::worker;

use crate::report::{self, Percentiles};
use crate::wire::Framing;
use bytes::BytesMut;
use clap::Args;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use ruyi_proto::crypto::{public_key_b64, random_secret, SessionCipher};
use ruyi_proto::{decode_packet, ConnectPacket, Packet, MAX_BODY_BYTES};
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone, Serialize)]
pub struct ConnectArgs {
    /// Binary protocol address.
    #[arg(long, default_value = "127.0.0.1:5100")]
    pub tcp: SocketAddr,
    /// Use the WebSocket listener at this address instead of TCP.
    #[arg(long)]
    pub ws: Option<SocketAddr>,
    /// Speak TLS (point --tcp or --ws at the server's TLS listener), trusting the CA
    /// certificate in this PEM file.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Connections in all.
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// New connections per second over all workers (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Log in with the key exchange, as the official SDKs do.
    #[arg(long)]
    pub encrypt: bool,
    /// With `--encrypt`: every connection sends one client public key made before the
    /// storm, and no session key is derived from the CONNACKs, so the client's crypto does
    /// not share the cores with the server's. The server still does its whole work per
    /// login (a fresh key pair and a shared secret each).
    #[arg(long, requires = "encrypt")]
    pub server_crypto_only: bool,
    /// Seconds to hold the connections once all are logged in.
    #[arg(long, default_value_t = 10)]
    pub hold: u64,
    /// Seconds between a connection's PINGs while held (the JS SDK: 60 s).
    #[arg(long, default_value_t = 30)]
    pub ping_every: u64,
    /// Source addresses 127.0.0.1 ..= 127.0.0.<sources>.
    #[arg(long, default_value_t = 1)]
    pub sources: u8,
    /// Worker processes (each holds conns / processes connections and descriptors).
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// Seconds the connect phase may take before the stragglers count as failures.
    #[arg(long, default_value_t = 60)]
    pub connect_timeout: u64,
    /// Server PID: its RSS and CPU are sampled.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// uid prefix.
    #[arg(long, default_value = "conn")]
    pub prefix: String,
    /// Internal: run as worker `index` of `processes` and report on stdout.
    #[arg(long, hide = true)]
    pub worker: Option<usize>,
}

/// What one worker saw.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerReport {
    connected: usize,
    failed_connect: usize,
    refused_login: usize,
    timed_out: usize,
    closed_while_held: usize,
    pings: u64,
    pongs: u64,
    /// Login latency of each login, in microseconds: the CONNECT's scheduled time (paced)
    /// or its opening (unpaced) to the CONNACK read and, with `--encrypt`, the session key
    /// derived from it, as an SDK must before it can send.
    connack_us: Vec<u64>,
    /// Client time making key pairs, in microseconds, and how many it made (one per
    /// connection opened, logged in or not).
    keypair_us: u64,
    keypairs: usize,
    /// Client time deriving session keys from CONNACKs, in microseconds (one per login).
    derive_us: u64,
    /// First connect attempt to last CONNACK, seconds.
    connect_seconds: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    transport: &'static str,
    encrypt: bool,
    conns: usize,
    processes: usize,
    sources: u8,
    /// Connections per second offered; `None` (null) = no limit.
    offered_rate: Option<f64>,
    connected: usize,
    failed_connect: usize,
    refused_login: usize,
    timed_out: usize,
    connects_per_sec: f64,
    connack_latency: Percentiles,
    hold_seconds: u64,
    pings: u64,
    pongs: u64,
    closed_while_held: usize,
    server_rss_before_bytes: Option<u64>,
    server_rss_held_bytes: Option<u64>,
    /// Signed: a server that gave memory back while connections arrived reads negative.
    server_rss_per_conn_bytes: Option<f64>,
    server_cpu_per_sec_held: Option<f64>,
    client_crypto_us_per_login: Option<f64>,
}

/// The unit or meaning of each figure of [`Report`] (`meta.rs`).
const UNITS: &[(&str, &str)] = &[
    ("conns", "connections attempted"),
    ("processes", "client worker processes"),
    ("sources", "source addresses 127.0.0.1 ..= 127.0.0.<sources>"),
    ("offered_rate", "connections per second offered; null = no limit (as fast as possible)"),
    ("connected", "logins that got CONNACK success"),
    ("failed_connect", "connections that failed before a CONNACK"),
    ("refused_login", "CONNACKs with a failure reason"),
    ("timed_out", "connections with no CONNACK within --connect-timeout"),
    ("connects_per_sec", "connected / seconds from the first connect to the last CONNACK"),
    ("connack_latency", "microseconds from a CONNECT's scheduled time (paced) or its opening (unpaced) to the CONNACK read and, encrypted, the session key derived: p50_us, p99_us, p999_us, max_us"),
    ("hold_seconds", "seconds the logged-in connections were held"),
    ("pings", "PINGs sent while held"),
    ("pongs", "PONGs received while held"),
    ("closed_while_held", "logged-in connections closed by the server or the network while held"),
    ("server_rss_before_bytes", "server resident memory before the storm, bytes"),
    ("server_rss_held_bytes", "server resident memory with every connection logged in, bytes"),
    ("server_rss_per_conn_bytes", "(held - before) / connected, bytes; signed"),
    ("server_cpu_per_sec_held", "server CPU seconds per second while holding (teardown excluded)"),
    ("client_crypto_us_per_login", "client microseconds per login for one key pair and one session key (wall-clock on cores the server shares: an upper bound on the CPU); null unencrypted"),
];

/// What workers tell the coordinator.
enum Msg {
    /// Its connects are done: the hold begins.
    Ready,
    /// Its hold is over; the teardown begins.
    Held,
    Done(WorkerReport),
    Failed(String),
}

/// A worker's phase change, for the coordinator's samples.
#[derive(Clone, Copy)]
enum Phase {
    Ready,
    Held,
}

pub fn run(args: &ConnectArgs) -> io::Result<()> {
    if let Some(index) = args.worker {
        return run_as_child(args, index);
    }
    if args.processes == 0 || args.sources == 0 || args.rate < 0.0 {
        return Err(io::Error::other("processes and sources > 0, rate >= 0"));
    }
    let meta = crate::meta::collect("connect", args.server_pid, args, UNITS);
    let rss_before = args.server_pid.map(crate::procfs::rss_bytes).transpose()?;
    let (tx, rx) = mpsc::channel();
    let mut children = Vec::new();
    if args.processes == 1 {
        let (args, tx) = (args.clone(), tx.clone());
        std::thread::spawn(move || {
            let phases = tx.clone();
            let msg = match worker(&args, 0, &mut |phase| {
                let _ = phases.send(match phase {
                    Phase::Ready => Msg::Ready,
                    Phase::Held => Msg::Held,
                });
            }) {
                Ok(r) => Msg::Done(r),
                Err(e) => Msg::Failed(e.to_string()),
            };
            let _ = tx.send(msg);
        });
    } else {
        for index in 0..args.processes {
            children.push(spawn_child(args, index, tx.clone())?);
        }
    }
    drop(tx);
    // Every worker ready: the connections are all up; sample the server while held.
    let (mut ready, mut held) = (0, 0);
    let mut reports = Vec::new();
    let mut held_sample: Option<(u64, f64, Instant)> = None;
    let mut cpu_per_sec = None;
    while let Ok(msg) = rx.recv() {
        match msg {
            // The first worker's hold is over: CPU up to here, before any teardown (the
            // others hold as long or longer; their holds began later).
            Msg::Held => {
                held += 1;
                if let (1, Some((_, cpu, at)), Some(pid)) = (held, held_sample, args.server_pid) {
                    let spent = crate::procfs::cpu_seconds(pid)? - cpu;
                    cpu_per_sec = Some(spent / at.elapsed().as_secs_f64().max(1e-9));
                }
            }
            Msg::Ready => {
                ready += 1;
                if ready == args.processes {
                    if let Some(pid) = args.server_pid {
                        // Let the last logins settle before reading RSS; not when a worker's
                        // hold may end meanwhile (its teardown would be in the sample).
                        if args.hold >= 2 {
                            std::thread::sleep(Duration::from_millis(500));
                        }
                        if held == 0 {
                            held_sample = Some((
                                crate::procfs::rss_bytes(pid)?,
                                crate::procfs::cpu_seconds(pid)?,
                                Instant::now(),
                            ));
                        } else {
                            log::warn!(
                                "a worker's hold ended before all logged in: no RSS or CPU figure"
                            );
                        }
                    }
                }
            }
            Msg::Done(r) => reports.push(r),
            Msg::Failed(e) => return Err(io::Error::other(format!("worker: {e}"))),
        }
    }
    for mut c in children {
        let _ = c.wait();
    }
    if reports.len() != args.processes {
        return Err(io::Error::other("a worker ended without a report"));
    }
    let mut hist = report::latency_histogram();
    let mut total = WorkerReport::default();
    for r in reports {
        for &us in &r.connack_us {
            report::record(&mut hist, Duration::from_micros(us));
        }
        total.connected += r.connected;
        total.failed_connect += r.failed_connect;
        total.refused_login += r.refused_login;
        total.timed_out += r.timed_out;
        total.closed_while_held += r.closed_while_held;
        total.pings += r.pings;
        total.pongs += r.pongs;
        total.keypair_us += r.keypair_us;
        total.keypairs += r.keypairs;
        total.derive_us += r.derive_us;
        total.connect_seconds = total.connect_seconds.max(r.connect_seconds);
    }
    let rss_held = held_sample.map(|s| s.0);
    let report = Report {
        transport: match (args.ws.is_some(), args.tls_ca.is_some()) {
            (true, false) => "ws",
            (true, true) => "wss",
            (false, false) => "tcp",
            (false, true) => "tls",
        },
        encrypt: args.encrypt,
        conns: args.conns,
        processes: args.processes,
        sources: args.sources,
        offered_rate: (args.rate > 0.0).then_some(args.rate),
        connected: total.connected,
        failed_connect: total.failed_connect,
        refused_login: total.refused_login,
        timed_out: total.timed_out,
        connects_per_sec: total.connected as f64 / total.connect_seconds.max(1e-9),
        connack_latency: Percentiles::of(&hist),
        hold_seconds: args.hold,
        pings: total.pings,
        pongs: total.pongs,
        closed_while_held: total.closed_while_held,
        server_rss_before_bytes: rss_before,
        server_rss_held_bytes: rss_held,
        server_rss_per_conn_bytes: rss_before
            .zip(rss_held)
            .map(|(b, h)| (h as f64 - b as f64) / total.connected.max(1) as f64),
        server_cpu_per_sec_held: cpu_per_sec,
        client_crypto_us_per_login: args.encrypt.then(|| {
            total.keypair_us as f64 / total.keypairs.max(1) as f64
                + total.derive_us as f64 / total.connected.max(1) as f64
        }),
    };
    println!(
        "connect [{}] encrypt={} conns={} connected={} connects/s={:.0} connack p50={}us p99={}us failed={} refused={} timed_out={} held {}s: pings={} pongs={} closed={} server rss/conn={} cpu/s held={} client crypto/login={}",
        report.transport,
        report.encrypt,
        report.conns,
        report.connected,
        report.connects_per_sec,
        report.connack_latency.p50_us,
        report.connack_latency.p99_us,
        report.failed_connect,
        report.refused_login,
        report.timed_out,
        report.hold_seconds,
        report.pings,
        report.pongs,
        report.closed_while_held,
        report
            .server_rss_per_conn_bytes
            .map_or("-".into(), |b| format!("{b:.0}B")),
        report
            .server_cpu_per_sec_held
            .map_or("-".into(), |c| format!("{c:.3}")),
        report
            .client_crypto_us_per_login
            .map_or("-".into(), |c| format!("{c:.0}us")),
    );
    crate::meta::write_json(args.json.as_deref(), &meta, &report)?;
    if report.connected < report.conns || report.closed_while_held > 0 {
        return Err(io::Error::other(format!(
            "{} of {} logged in ({} failed, {} refused, {} timed out), {} closed while held",
            report.connected,
            report.conns,
            report.failed_connect,
            report.refused_login,
            report.timed_out,
            report.closed_while_held
        )));
    }
    Ok(())
}

/// Starts worker `index` as a child process and forwards what it reports to `tx`.
fn spawn_child(
    args: &ConnectArgs,
    index: usize,
    tx: mpsc::Sender<Msg>,
) -> io::Result<std::process::Child> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("connect")
        .args(["--tcp", &args.tcp.to_string()])
        .args(["--conns", &args.conns.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--hold", &args.hold.to_string()])
        .args(["--ping-every", &args.ping_every.to_string()])
        .args(["--sources", &args.sources.to_string()])
        .args(["--processes", &args.processes.to_string()])
        .args(["--connect-timeout", &args.connect_timeout.to_string()])
        .args(["--prefix", &args.prefix])
        .args(["--worker", &index.to_string()])
        .stdout(std::process::Stdio::piped());
    if let Some(ws) = args.ws {
        cmd.args(["--ws", &ws.to_string()]);
    }
    if args.encrypt {
        cmd.arg("--encrypt");
    }
    if args.server_crypto_only {
        cmd.arg("--server-crypto-only");
    }
    if let Some(ca) = &args.tls_ca {
        cmd.arg("--tls-ca").arg(ca);
    }
    let mut child = cmd.spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout from a worker"))?;
    std::thread::spawn(move || {
        for line in io::BufReader::new(stdout).lines() {
            let msg = match line {
                Ok(l) if l == "ready" => Msg::Ready,
                Ok(l) if l == "held" => Msg::Held,
                Ok(l) => match serde_json::from_str(&l) {
                    Ok(r) => Msg::Done(r),
                    Err(_) => continue, // not a report line
                },
                Err(e) => Msg::Failed(e.to_string()),
            };
            let _ = tx.send(msg);
        }
    });
    Ok(child)
}

fn run_as_child(args: &ConnectArgs, index: usize) -> io::Result<()> {
    let report = worker(args, index, &mut |phase| {
        println!(
            "{}",
            match phase {
                Phase::Ready => "ready",
                Phase::Held => "held",
            }
        );
        let _ = io::stdout().flush();
    })?;
    println!(
        "{}",
        serde_json::to_string(&report).map_err(io::Error::other)?
    );
    Ok(())
}
