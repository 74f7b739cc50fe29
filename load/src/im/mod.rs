//! `ruyi-load person` and `ruyi-load group`: drive a Ruyi server over the binary protocol.
//!
//! Every connection logs in (CONNECT/CONNACK, with the key exchange when `--encrypt`),
//! then senders keep `--window` SENDs in flight each (closed loop) and every receiver
//! answers each RECV with a RECVACK, as the SDKs do. The payload carries the send time and
//! a per-sender counter, so the tool measures SENDACK latency (send → SENDACK at the
//! sender) and delivery latency (send → RECV at each receiver).
//!
//! Worker threads each own a `mio::Poll` and a share of the connections; the run has a
//! warm-up, a measured window, and a drain: senders stop, and every worker reads on until
//! its SENDs are all answered and its input has been quiet for [`DRAIN_QUIET`] (at most
//! [`DRAIN_LIMIT`]). Then every message the server acknowledged is checked at every
//! receiver that should have it (`ledger.rs`): lost, duplicated and reordered are reported
//! apart, and a run that lost or duplicated anything fails (exit status 1).

mod recover;
mod worker;

use crate::report::{self, Percentiles};
use crate::wire::Framing;
use bytes::{Bytes, BytesMut};
use clap::Args;
use hdrhistogram::Histogram;
use mio::{Events, Poll, Token};
use ruyi_proto::crypto::{public_key_b64, random_secret};
use ruyi_proto::{
    decode_packet, ConnectPacket, Flags, Packet, RecvackPacket, SendPacket, SessionCipher,
    MAX_BODY_BYTES,
};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use worker::{worker, WorkerResult};

#[derive(Args, Debug, Clone, Serialize)]
pub struct ImArgs {
    /// Binary protocol address.
    #[arg(long, default_value = "127.0.0.1:5100")]
    pub tcp: SocketAddr,
    /// Several servers (a cluster's nodes), comma-separated binary-protocol addresses:
    /// connection i goes to the i-th modulo their number, so a pair's two ends and a
    /// group's members land on different nodes. Overrides --tcp.
    #[arg(long, value_delimiter = ',')]
    pub servers: Vec<SocketAddr>,
    /// HTTP API address (groups are created through it).
    #[arg(long, default_value = "127.0.0.1:5001")]
    pub http: SocketAddr,
    /// A connection whose server closes it or dies logs in on the next of `--servers`,
    /// sends its unanswered SENDs again under their numbers (the server's dedupe answers
    /// those it stored), and after the drain reads back from channel history what it may
    /// have missed (`recover.rs`), so every acknowledged message is still accounted for.
    #[arg(long, requires = "servers")]
    pub failover: bool,
    /// The HTTP API of each of `--servers`, in the same order: where `--failover` reads
    /// history (the first that answers). Default: `--http`.
    #[arg(long, value_delimiter = ',')]
    pub http_servers: Vec<SocketAddr>,
    /// Use the WebSocket listener at this address instead of TCP (binary messages, masked,
    /// as the JS SDK sends them).
    #[arg(long)]
    pub ws: Option<SocketAddr>,
    /// Encrypt (key exchange, AES payloads, msgKeys), as the official SDKs do.
    #[arg(long, conflicts_with = "jsonrpc")]
    pub encrypt: bool,
    /// Speak JSON-RPC, as the EasySDK clients do (needs `--ws`; no encryption there).
    #[arg(long, requires = "ws")]
    pub jsonrpc: bool,
    /// Drive redis pub/sub or NATS core at `--tcp` instead of Ruyi, with the same shapes,
    /// payload and accounting (`peer.rs`; `scripts/bench-peers.sh`).
    #[arg(long, value_enum, default_value_t = crate::peer::Peer::Ruyi,
          conflicts_with_all = ["encrypt", "jsonrpc", "ws", "failover", "tls_ca", "servers"])]
    pub peer: crate::peer::Peer,
    /// Speak TLS to the server (point --tcp or --ws at its TLS listener), trusting the CA
    /// certificate in this PEM file.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// SENDs in flight per sender at most.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Messages per second per sender (open loop, latency measured from each message's
    /// scheduled time); 0 = closed loop, as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Spread connections over source addresses 127.0.0.1 ..= 127.0.0.<sources>, as many
    /// hosts would (each source has its own 64k ports and its own per-address limit).
    #[arg(long, default_value_t = 1)]
    pub sources: u8,
    /// Payload bytes per message (at least 24: a timestamp, the sender and a counter).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Client worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Warm-up seconds, not measured.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Server PID, to report its CPU during the measured window.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw throughput over time and the latency percentiles as an SVG chart here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Prefix for uids and channel ids, so runs against one database do not collide.
    #[arg(long, default_value = "load")]
    pub prefix: String,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct PersonArgs {
    #[command(flatten)]
    pub im: ImArgs,
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 1000)]
    pub pairs: usize,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct GroupArgs {
    #[command(flatten)]
    pub im: ImArgs,
    /// Groups.
    #[arg(long, default_value_t = 1)]
    pub groups: usize,
    /// Members per group (all online).
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Senders per group (the first members).
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
}

/// WuKongIM's published benchmark mix, all at once: person pairs, many small groups and
/// one large group, every member a connection of its own.
#[derive(Args, Debug, Clone, Serialize)]
pub struct MixedArgs {
    #[command(flatten)]
    pub im: ImArgs,
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 500)]
    pub pairs: usize,
    /// Small groups.
    #[arg(long, default_value_t = 100)]
    pub groups: usize,
    /// Members per small group.
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Members of the one large group (0: none).
    #[arg(long, default_value_t = 1000)]
    pub large: usize,
    /// Senders per group, small and large.
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
}

/// One planned connection.
#[derive(Clone, Debug)]
struct Plan {
    uid: String,
    /// Where it sends (`None`: receive only).
    target: Option<(String, u8)>,
    /// Index of this sender among all senders (for loss accounting), if it sends.
    sender_index: Option<usize>,
    /// The group this connection is a member of (it receives the group's messages).
    member_of: Option<String>,
}

/// The connections of a run, and how many of them send.
#[derive(Default)]
struct Plans {
    list: Vec<Plan>,
    senders: usize,
}

impl Plans {
    fn pairs(&mut self, prefix: &str, pairs: usize) {
        for i in 0..pairs {
            self.list.push(Plan {
                uid: format!("{prefix}-a{i}"),
                target: Some((format!("{prefix}-b{i}"), 1)),
                sender_index: Some(self.senders),
                member_of: None,
            });
            self.senders += 1;
            self.list.push(Plan {
                uid: format!("{prefix}-b{i}"),
                target: None,
                sender_index: None,
                member_of: None,
            });
        }
    }

    /// Creates `groups` groups of `members` through the HTTP API and plans their members;
    /// the first `senders` of each group send.
    fn groups(
        &mut self,
        args: &ImArgs,
        tag: &str,
        groups: usize,
        members: usize,
        senders: usize,
    ) -> io::Result<()> {
        let p = &args.prefix;
        for g in 0..groups {
            let gid = format!("{p}-{tag}{g}");
            let uids: Vec<String> = (0..members).map(|m| format!("{gid}m{m}")).collect();
            if args.peer == crate::peer::Peer::Ruyi {
                let body = serde_json::json!({"channel_id": gid, "channel_type": 2, "subscribers": uids, "reset": 1});
                http_post(args.http, "/channel", &body.to_string())?;
            } // A peer's members subscribe to the group's channel at login (`peer.rs`).
            for (m, uid) in uids.into_iter().enumerate() {
                let sends = m < senders;
                self.list.push(Plan {
                    uid,
                    target: sends.then(|| (gid.clone(), 2)),
                    sender_index: sends.then_some(self.senders),
                    member_of: Some(gid.clone()),
                });
                self.senders += usize::from(sends);
            }
        }
        Ok(())
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct ImReport {
    scenario: String,
    transport: &'static str,
    connections: usize,
    senders: usize,
    encrypt: bool,
    window: usize,
    rate_per_sender: f64,
    size: usize,
    seconds: f64,
    pub(crate) sends: u64,
    sends_per_sec: f64,
    deliveries: u64,
    deliveries_per_sec: f64,
    pub(crate) sendack_latency: Percentiles,
    pub(crate) delivery_latency: Percentiles,
    /// Paced runs: a SEND's scheduled time to its encoding, the client's own floor.
    client_send_lag: Option<Percentiles>,
    pub(crate) refused: u64,
    /// Acknowledged messages missing at a receiver that should have them, after the drain.
    pub(crate) lost: u64,
    /// Messages a receiver got more than once.
    pub(crate) duplicated: u64,
    /// Messages a receiver got after a later one of the same sender (nothing missing).
    pub(crate) reordered: u64,
    /// SENDs still without a SENDACK when the drain gave up.
    pub(crate) unanswered: u64,
    /// Logins again on another server after a connection was lost (`--failover`).
    failovers: u64,
    /// Messages those connections had missed and found in their offline queues.
    recovered_from_queue: u64,
    /// Missed, not queued, found in history: RECVs a killed node took along.
    history_only: u64,
    server_cpu_seconds: Option<f64>,
    deliveries_per_server_cpu_sec: Option<f64>,
    /// Per second of the measured window: [sends, deliveries].
    timeline: Vec<[u64; 2]>,
}

/// The unit or meaning of each figure of [`ImReport`] (`meta.rs`).
const UNITS: &[(&str, &str)] = &[
    ("connections", "connections logged in"),
    ("senders", "connections that send"),
    ("window", "SENDs in flight per sender at most"),
    ("rate_per_sender", "SENDs per second per sender; 0 = unpaced (closed loop, as fast as the window allows)"),
    ("size", "payload bytes per message"),
    ("seconds", "length of the measured window, after the warm-up, in seconds"),
    ("sends", "SENDs acknowledged (SENDACK success) in the measured window"),
    ("sends_per_sec", "sends / seconds"),
    ("deliveries", "RECVs received in the measured window"),
    ("deliveries_per_sec", "deliveries / seconds"),
    ("sendack_latency", "microseconds from a SEND's scheduled time (paced) or its encoding (unpaced) to its SENDACK: p50_us, p99_us, p999_us, max_us"),
    ("delivery_latency", "microseconds from a message's scheduled time or encoding to its RECV at a receiver"),
    ("client_send_lag", "microseconds from a paced SEND's scheduled time to its encoding, in the measured window: the client's own lateness, included in both latencies (also any time a full window held the SEND back); null when unpaced"),
    ("refused", "SENDs answered with a failure reason, whole run"),
    ("lost", "acknowledged messages missing at a receiver after the drain, whole run"),
    ("duplicated", "messages a receiver got more than once, whole run"),
    ("reordered", "messages a receiver got after a later one of the same sender, whole run"),
    ("unanswered", "SENDs with no SENDACK when the drain ended (10 s after the window at most, 30 s with --failover): a stalled server; fails the run"),
    ("failovers", "logins again on the next server after a connection was lost (--failover)"),
    ("recovered_from_queue", "acknowledged messages a connection that failed over had not received and found in its offline queue after the drain (/message/sync, --failover); counted as received"),
    ("history_only", "acknowledged messages a connection that lost a server dead by the end had not received, not in its queue, found in channel history: RECVs the killed node took along (RELIABILITY.md); not counted lost"),
    ("server_cpu_seconds", "user + system CPU seconds of the server during the measured window"),
    ("deliveries_per_server_cpu_sec", "deliveries / server_cpu_seconds"),
    ("timeline", "per 1-second slot of the measured window: [sends, deliveries]"),
];

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// This run's id, in every payload of 32 bytes or more (`recover.rs`).
fn run_id() -> u64 {
    static RUN: OnceLock<u64> = OnceLock::new();
    *RUN.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ u64::from(std::process::id()).rotate_left(32)
    })
}

/// The poll token of a worker's pacing timer (connections use their index).
const TIMER: Token = Token(usize::MAX);

/// The drain ends once a worker's SENDs are all answered and its input has been quiet this
/// long: deliveries trail their SENDACKs by at most a few milliseconds on a healthy server.
const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// The drain ends at this limit whatever is still missing (and is then counted lost).
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// [`DRAIN_LIMIT`] with `--failover`: a leader's kill stops every SEND until its lease
/// lapses and another node leads (6–8 s), and the backlog then (every sender's resent
/// window, on the same two cores as the cluster) was seen stored a second after a
/// 10-second drain gave up on it, counted unanswered.
const FAILOVER_DRAIN_LIMIT: Duration = Duration::from_secs(30);

fn nanos_since_epoch(t: Instant) -> u64 {
    t.duration_since(*EPOCH.get_or_init(Instant::now))
        .as_nanos() as u64
}

pub fn run_person(args: &PersonArgs) -> io::Result<()> {
    person(args).and_then(|r| judged(&r))
}

/// The run fails when it lost or duplicated anything (module docs).
fn judged(report: &ImReport) -> io::Result<()> {
    if report.lost + report.duplicated + report.unanswered > 0 {
        return Err(io::Error::other(format!(
            "{}: {} acknowledged messages lost, {} duplicated, {} SENDs never answered",
            report.scenario, report.lost, report.duplicated, report.unanswered
        )));
    }
    Ok(())
}

/// The person scenario, its report returned as well as printed.
pub(crate) fn person(args: &PersonArgs) -> io::Result<ImReport> {
    let mut plans = Plans::default();
    plans.pairs(&args.im.prefix, args.pairs);
    let settings = serde_json::to_value(args).unwrap_or_default();
    run(&args.im, &format!("person {}", args.pairs), plans, settings)
}

pub fn run_group(args: &GroupArgs) -> io::Result<()> {
    let mut plans = Plans::default();
    plans.groups(&args.im, "g", args.groups, args.members, args.senders)?;
    let scenario = format!(
        "group {}x{} senders {}",
        args.groups, args.members, args.senders
    );
    let settings = serde_json::to_value(args).unwrap_or_default();
    run(&args.im, &scenario, plans, settings).and_then(|r| judged(&r))
}

pub fn run_mixed(args: &MixedArgs) -> io::Result<()> {
    let mut plans = Plans::default();
    plans.pairs(&args.im.prefix, args.pairs);
    plans.groups(&args.im, "s", args.groups, args.members, args.senders)?;
    plans.groups(
        &args.im,
        "L",
        usize::from(args.large > 0),
        args.large,
        args.senders,
    )?;
    let scenario = format!(
        "mixed {} pairs + {}x{} + 1x{}",
        args.pairs, args.groups, args.members, args.large
    );
    let settings = serde_json::to_value(args).unwrap_or_default();
    run(&args.im, &scenario, plans, settings).and_then(|r| judged(&r))
}

pub(crate) fn http_post(addr: SocketAddr, path: &str, body: &str) -> io::Result<String> {
    // Bounded: a stopped or vanished API must fail the call, not hang the tool.
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if !out.starts_with("HTTP/1.1 200") {
        return Err(io::Error::other(format!(
            "{path}: {}",
            out.lines().next().unwrap_or("")
        )));
    }
    Ok(out
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned()))
}

fn run(
    args: &ImArgs,
    scenario: &str,
    plans: Plans,
    settings: serde_json::Value,
) -> io::Result<ImReport> {
    if args.size < 24
        || args.window == 0
        || args.threads == 0
        || args.sources == 0
        || args.rate < 0.0
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "size >= 24, window, threads and sources > 0, rate >= 0",
        ));
    }
    let _ = EPOCH.get_or_init(Instant::now);
    let subcommand = scenario.split(' ').next().unwrap_or(scenario);
    let meta = crate::meta::collect(subcommand, args.server_pid, &settings, UNITS);
    let Plans {
        list: plans,
        senders,
    } = plans;
    let connections = plans.len();
    let logged_in = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..args.threads)
        .map(|w| {
            let mine: Vec<(usize, Plan)> = plans
                .iter()
                .cloned()
                .enumerate()
                .skip(w)
                .step_by(args.threads)
                .collect();
            let (args, logged_in) = (args.clone(), Arc::clone(&logged_in));
            std::thread::spawn(move || worker(&args, mine, &logged_in, connections))
        })
        .collect();
    // The measured window starts once everyone is logged in.
    while logged_in.load(Ordering::Acquire) < connections {
        if workers.iter().all(|w| w.is_finished()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let server_cpu = match args.server_pid {
        Some(pid) => {
            std::thread::sleep(Duration::from_secs(args.warmup));
            let before = crate::procfs::cpu_seconds(pid)?;
            std::thread::sleep(Duration::from_secs(args.seconds));
            Some(crate::procfs::cpu_seconds(pid)? - before)
        }
        None => None,
    };
    let mut t = WorkerResult::new();
    for w in workers {
        t.absorb(
            w.join()
                .map_err(|_| io::Error::other("worker panicked"))??,
        )?;
    }
    let secs = args.seconds as f64;
    let mut acked: HashMap<usize, Vec<u64>> = HashMap::new();
    for &(sender, counter) in &t.acked {
        acked.entry(sender).or_default().push(counter);
    }
    let sending: Vec<crate::ledger::Sender<'_>> = plans
        .iter()
        .filter_map(|p| {
            let (target, ctype) = p.target.as_ref()?;
            Some(crate::ledger::Sender {
                index: p.sender_index?,
                uid: &p.uid,
                target: (target, *ctype),
            })
        })
        .collect();
    let recovered = if args.failover {
        recover::recover(args, &plans, &mut t.received, &acked, run_id())?
    } else {
        recover::Recovered::default()
    };
    let receivers: Vec<crate::ledger::Receiver<'_>> = t
        .received
        .iter()
        .filter_map(|(global, seen, _)| {
            let p = plans.get(*global)?;
            Some(crate::ledger::Receiver {
                uid: &p.uid,
                member_of: p.member_of.as_deref(),
                seen,
            })
        })
        .collect();
    let lost = crate::ledger::lost(&sending, &receivers, &acked);
    let report = ImReport {
        scenario: scenario.to_owned(),
        transport: match (args.ws.is_some(), args.jsonrpc, args.tls_ca.is_some()) {
            _ if args.peer == crate::peer::Peer::Redis => "redis",
            _ if args.peer == crate::peer::Peer::Nats => "nats",
            (true, true, false) => "ws-jsonrpc",
            (true, true, true) => "wss-jsonrpc",
            (true, false, false) => "ws",
            (true, false, true) => "wss",
            (false, _, false) => "tcp",
            (false, _, true) => "tls",
        },
        connections,
        senders,
        encrypt: args.encrypt,
        window: args.window,
        rate_per_sender: args.rate,
        size: args.size,
        seconds: secs,
        sends: t.sends,
        sends_per_sec: t.sends as f64 / secs,
        deliveries: t.deliveries,
        deliveries_per_sec: t.deliveries as f64 / secs,
        sendack_latency: Percentiles::of(&t.sendack),
        delivery_latency: Percentiles::of(&t.delivery),
        client_send_lag: (args.rate > 0.0).then(|| Percentiles::of(&t.send_lag)),
        refused: t.refused,
        lost,
        duplicated: t.duplicated,
        reordered: t.reordered,
        unanswered: t.unanswered,
        failovers: t.failovers,
        recovered_from_queue: recovered.queued,
        history_only: recovered.history_only,
        server_cpu_seconds: server_cpu,
        deliveries_per_server_cpu_sec: server_cpu.map(|c| t.deliveries as f64 / c.max(1e-9)),
        timeline: t.timeline.clone(),
    };
    println!(
        "{} [{}] conns={} encrypt={} sends/s={:.0} deliveries/s={:.0} sendack p50={}us p99={}us delivery p50={}us p99={}us refused={} lost={} dup={} reordered={} unanswered={} failovers={} queued={} history_only={} server_cpu={:.2}s{}",
        report.scenario,
        report.transport,
        report.connections,
        report.encrypt,
        report.sends_per_sec,
        report.deliveries_per_sec,
        report.sendack_latency.p50_us,
        report.sendack_latency.p99_us,
        report.delivery_latency.p50_us,
        report.delivery_latency.p99_us,
        report.refused,
        report.lost,
        report.duplicated,
        report.reordered,
        report.unanswered,
        report.failovers,
        report.recovered_from_queue,
        report.history_only,
        report.server_cpu_seconds.unwrap_or(f64::NAN),
        report.client_send_lag.map_or(String::new(), |l| format!(
            " client lag p50={}us p99={}us",
            l.p50_us, l.p99_us
        )),
    );
    if let Some(path) = &args.svg {
        crate::chart::write(
            path,
            &format!(
                "ruyi-load {} [{}] encrypt={} window={} rate={} {}s",
                report.scenario,
                report.transport,
                if args.encrypt { "on" } else { "off" },
                args.window,
                if args.rate > 0.0 {
                    format!("{}/s per sender", args.rate)
                } else {
                    "unpaced".to_owned()
                },
                args.seconds
            ),
            &report.timeline,
            &[("SENDACK", &t.sendack), ("delivery", &t.delivery)],
        )?;
    }
    crate::meta::write_json(args.json.as_deref(), &meta, &report)?;
    Ok(report)
}
