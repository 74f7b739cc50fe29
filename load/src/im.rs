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

use crate::report::{self, Percentiles};
use crate::wire::Framing;
use bytes::{Bytes, BytesMut};
use clap::Args;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Poll, Token};
use ruyi_proto::crypto::{public_key_b64, random_secret};
use ruyi_proto::{
    decode_packet, ConnectPacket, Flags, Packet, RecvackPacket, SendPacket, SessionCipher,
    MAX_BODY_BYTES,
};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

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
    /// Use the WebSocket listener at this address instead of TCP (binary messages, masked,
    /// as the JS SDK sends them).
    #[arg(long)]
    pub ws: Option<SocketAddr>,
    /// Encrypt (key exchange, AES payloads, msgKeys), as the official SDKs do.
    #[arg(long)]
    pub encrypt: bool,
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
            let body = serde_json::json!({"channel_id": gid, "channel_type": 2, "subscribers": uids, "reset": 1});
            http_post(args.http, "/channel", &body.to_string())?;
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
    ("unanswered", "SENDs with no SENDACK when the drain ended (10 s after the window at most): a stalled server; fails the run"),
    ("server_cpu_seconds", "user + system CPU seconds of the server during the measured window"),
    ("deliveries_per_server_cpu_sec", "deliveries / server_cpu_seconds"),
    ("timeline", "per 1-second slot of the measured window: [sends, deliveries]"),
];

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The poll token of a worker's pacing timer (connections use their index).
const TIMER: Token = Token(usize::MAX);

/// The drain ends once a worker's SENDs are all answered and its input has been quiet this
/// long: deliveries trail their SENDACKs by at most a few milliseconds on a healthy server.
const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// The drain ends at this limit whatever is still missing (and is then counted lost).
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

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
    let mut s = std::net::TcpStream::connect(addr)?;
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
    let receivers: Vec<crate::ledger::Receiver<'_>> = t
        .received
        .iter()
        .filter_map(|(global, seen)| {
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
        transport: if args.ws.is_some() { "ws" } else { "tcp" },
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
        server_cpu_seconds: server_cpu,
        deliveries_per_server_cpu_sec: server_cpu.map(|c| t.deliveries as f64 / c.max(1e-9)),
        timeline: t.timeline.clone(),
    };
    println!(
        "{} [{}] conns={} encrypt={} sends/s={:.0} deliveries/s={:.0} sendack p50={}us p99={}us delivery p50={}us p99={}us refused={} lost={} dup={} reordered={} unanswered={} server_cpu={:.2}s{}",
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

struct Conn {
    stream: TcpStream,
    plan: Plan,
    /// Index of its plan in the run.
    global: usize,
    framing: Framing,
    /// Bytes read from the socket, not yet unframed.
    raw: Vec<u8>,
    /// The protocol byte stream, not yet decoded.
    input: Vec<u8>,
    output: BytesMut,
    /// Encoding space for one packet before it is framed (WebSocket only).
    scratch: BytesMut,
    cipher: Option<SessionCipher>,
    secret: [u8; 32],
    version: u8,
    logged_in: bool,
    /// (client_seq, send time, counter) of SENDs in flight, oldest first. SENDACKs mostly
    /// come back in order, but a refusal (a rate limit) is answered before the accepted
    /// SENDs ahead of it are stored, so they are matched by client_seq.
    in_flight: VecDeque<(u32, Instant, u64)>,
    /// Paced mode: when the next SEND is due.
    next_send_at: Instant,
    next_counter: u64,
    client_seq: u32,
    /// Per sender: the counters received (`ledger.rs`).
    seen: HashMap<usize, crate::ledger::Seen>,
}

impl Conn {
    /// Encodes and frames one packet onto the output.
    fn queue(&mut self, packet: &Packet) -> io::Result<()> {
        if let Framing::Tcp = self.framing {
            return packet
                .encode(self.version, &mut self.output)
                .map_err(io::Error::other);
        }
        self.scratch.clear();
        packet
            .encode(self.version, &mut self.scratch)
            .map_err(io::Error::other)?;
        self.framing.wrap(&self.scratch, &mut self.output);
        Ok(())
    }
}

/// What one worker counted; the run's totals are the same shape, summed.
struct WorkerResult {
    sends: u64,
    deliveries: u64,
    refused: u64,
    /// (sender, counter) of each SEND the server acknowledged, whenever in the run.
    acked: Vec<(usize, u64)>,
    /// (plan index, what it received) of every connection, after the drain.
    received: Vec<(usize, HashMap<usize, crate::ledger::Seen>)>,
    duplicated: u64,
    reordered: u64,
    unanswered: u64,
    sendack: Histogram<u64>,
    delivery: Histogram<u64>,
    /// Paced sends: scheduled time to encoding.
    send_lag: Histogram<u64>,
    /// Per second of the measured window: [sends, deliveries].
    timeline: Vec<[u64; 2]>,
}

impl WorkerResult {
    fn new() -> WorkerResult {
        WorkerResult {
            sends: 0,
            deliveries: 0,
            refused: 0,
            acked: Vec::new(),
            received: Vec::new(),
            duplicated: 0,
            reordered: 0,
            unanswered: 0,
            sendack: report::latency_histogram(),
            delivery: report::latency_histogram(),
            send_lag: report::latency_histogram(),
            timeline: Vec::new(),
        }
    }

    /// Adds another worker's counts and latencies to these.
    fn absorb(&mut self, other: WorkerResult) -> io::Result<()> {
        self.sends += other.sends;
        self.deliveries += other.deliveries;
        self.refused += other.refused;
        self.acked.extend(other.acked);
        self.received.extend(other.received);
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.unanswered += other.unanswered;
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), [0, 0]);
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(&other.timeline) {
            mine[0] += theirs[0];
            mine[1] += theirs[1];
        }
        self.sendack.add(&other.sendack).map_err(io::Error::other)?;
        self.send_lag
            .add(&other.send_lag)
            .map_err(io::Error::other)?;
        self.delivery.add(&other.delivery).map_err(io::Error::other)
    }

    /// Counts one event in the timeline slot of `now` (`column` 0 = send, 1 = delivery).
    fn tick(&mut self, from: Instant, now: Instant, column: usize) {
        let slot = now.saturating_duration_since(from).as_secs() as usize;
        if self.timeline.len() <= slot {
            self.timeline.resize(slot + 1, [0, 0]);
        }
        self.timeline[slot][column] += 1;
    }
}

/// The source address of connection `index`: 127.0.0.1 ..= 127.0.0.<sources> in turn.
pub(crate) fn source_of(index: usize, sources: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (index % usize::from(sources.max(1))) as u8)
}

fn worker(
    args: &ImArgs,
    plans: Vec<(usize, Plan)>,
    logged_in: &AtomicUsize,
    total: usize,
) -> io::Result<WorkerResult> {
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(plans.len());
    let start = Instant::now();
    for (i, (global, plan)) in plans.into_iter().enumerate() {
        let server = match (args.ws, args.servers.len()) {
            (Some(ws), _) => ws,
            (None, 0) => args.tcp,
            (None, n) => args.servers[global % n],
        };
        let source = source_of(global, args.sources);
        let stream = crate::connect_registered(&poll, server, Token(i), Some(source))?;
        let secret = random_secret().map_err(io::Error::other)?;
        let mut c = Conn {
            stream,
            plan,
            global,
            framing: Framing::new(args.ws.is_some(), global as u32),
            raw: Vec::new(),
            input: Vec::new(),
            output: BytesMut::new(),
            scratch: BytesMut::new(),
            cipher: None,
            secret,
            version: 5,
            logged_in: false,
            in_flight: VecDeque::new(),
            next_send_at: start,
            next_counter: 1,
            client_seq: 1,
            seen: HashMap::new(),
        };
        c.framing.start(server, &mut c.output);
        let connect = Packet::Connect(ConnectPacket {
            version: 5,
            device_flag: 0,
            device_id: format!("load-{}", c.plan.uid),
            uid: c.plan.uid.clone(),
            token: "load".into(),
            client_timestamp: 0,
            client_key: if args.encrypt {
                public_key_b64(secret)
            } else {
                String::new()
            },
        });
        c.queue(&connect)?;
        flush(&mut c)?;
        conns.push(c);
    }
    let mut r = WorkerResult::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 256 << 10];
    let mut started: Option<Instant> = None;
    let mut measure: Option<(Instant, Instant)> = None;
    let login_deadline = Instant::now() + Duration::from_secs(60);
    let mut last_input = Instant::now();
    // Paced senders are topped up when their next SEND is due (closed-loop ones on every
    // SENDACK), woken by a timerfd: `poll`'s own timeout is whole milliseconds
    // (`timer.rs`). `client_send_lag` reports how close to its time a SEND leaves.
    let paced = args.rate > 0.0;
    let mut next_due: Option<Instant> = None;
    let timer = crate::timer::Timer::new(poll.registry(), TIMER)?;
    loop {
        let now = Instant::now();
        if started.is_none() && logged_in.load(Ordering::Acquire) >= total {
            started = Some(now);
            let n = conns.len().max(1) as f64;
            let from = now + Duration::from_secs(args.warmup);
            measure = Some((from, from + Duration::from_secs(args.seconds)));
            for (i, c) in conns.iter_mut().enumerate() {
                // Spread paced senders' first sends over one interval, not all at once.
                if paced {
                    let spread = (i as f64 / n) / args.rate;
                    c.next_send_at = now + Duration::from_secs_f64(spread);
                }
                top_up(c, args, now, None)?;
                flush(c)?;
            }
        }
        if let Some((_, until)) = measure {
            // The drain (module docs): no new SENDs; done once every SEND is answered and
            // the input has been quiet a while, or at the limit.
            if now >= until {
                let answered = conns.iter().all(|c| c.in_flight.is_empty());
                if (answered && now >= last_input + DRAIN_QUIET) || now >= until + DRAIN_LIMIT {
                    break;
                }
            }
        } else if now > login_deadline {
            return Err(io::Error::other(
                "not every connection logged in within 60 s",
            ));
        }
        if let Some(due) = next_due {
            timer.arm(due)?;
        }
        poll.poll(&mut events, Some(Duration::from_millis(20)))?;
        let now = Instant::now();
        let window = measure.and_then(|(from, until)| (now >= from && now < until).then_some(from));
        let draining = measure.is_some_and(|(_, until)| now >= until);
        if !events.is_empty() {
            last_input = now;
        }
        for event in events.iter() {
            if event.token() == TIMER {
                timer.clear();
                continue;
            }
            let c = &mut conns[event.token().0];
            if event.is_readable() {
                if crate::wire::read_available(&mut c.stream, &mut buf, &mut c.raw)? {
                    // The last bytes may say why (a refusing CONNACK).
                    handle_input(c, args, now, None, logged_in, &mut r)?;
                    return Err(io::Error::other(format!(
                        "{} closed by the server",
                        c.plan.uid
                    )));
                }
                handle_input(c, args, now, window, logged_in, &mut r)?;
                if started.is_some() && !paced && !draining {
                    top_up(c, args, now, None)?;
                }
            }
            flush(c)?;
        }
        if paced && started.is_some() && !draining {
            let now = Instant::now();
            let measuring = measure.is_some_and(|(from, until)| now >= from && now < until);
            next_due = None;
            for c in &mut conns {
                if c.next_send_at <= now {
                    top_up(c, args, now, measuring.then_some(&mut r.send_lag))?;
                    flush(c)?;
                }
                // A sender with a full window waits for a SENDACK, which wakes the poll.
                if c.plan.sender_index.is_some() && c.logged_in && c.in_flight.len() < args.window {
                    next_due = Some(next_due.map_or(c.next_send_at, |d| d.min(c.next_send_at)));
                }
            }
        } else {
            next_due = None;
        }
    }
    r.unanswered = conns.iter().map(|c| c.in_flight.len() as u64).sum();
    r.received = conns.into_iter().map(|c| (c.global, c.seen)).collect();
    Ok(r)
}

fn handle_input(
    c: &mut Conn,
    args: &ImArgs,
    now: Instant,
    window: Option<Instant>,
    logged_in: &AtomicUsize,
    r: &mut WorkerResult,
) -> io::Result<()> {
    c.framing.unwrap(&mut c.raw, &mut c.input)?;
    let mut consumed = 0;
    while let Some((packet, used)) =
        decode_packet(&c.input[consumed..], c.version, MAX_BODY_BYTES).map_err(io::Error::other)?
    {
        consumed += used;
        match packet {
            Packet::Connack(ack) => {
                if ack.reason_code != 1 {
                    return Err(io::Error::other(format!(
                        "{} login refused: {}",
                        c.plan.uid, ack.reason_code
                    )));
                }
                if args.encrypt {
                    c.cipher = Some(
                        SessionCipher::derive(c.secret, &ack.server_key, &ack.salt)
                            .map_err(io::Error::other)?,
                    );
                }
                c.logged_in = true;
                logged_in.fetch_add(1, Ordering::AcqRel);
            }
            Packet::Sendack(ack) => {
                let sent = c
                    .in_flight
                    .iter()
                    .position(|f| f.0 == ack.client_seq)
                    .and_then(|i| c.in_flight.remove(i));
                if ack.reason_code != 1 {
                    r.refused += 1; // Never accepted, so never owed.
                } else {
                    if let (Some(sender), Some((_, _, counter))) = (c.plan.sender_index, sent) {
                        r.acked.push((sender, counter));
                    }
                    if let (Some(from), Some((_, sent, _))) = (window, sent) {
                        r.sends += 1;
                        r.tick(from, now, 0);
                        report::record(&mut r.sendack, now.saturating_duration_since(sent));
                    }
                }
            }
            Packet::Recv(recv) => {
                let payload = match &c.cipher {
                    // Check the msgKey as the SDKs do: a bad one is a server bug.
                    Some(cipher) => Bytes::from(cipher.open_recv(&recv).map_err(io::Error::other)?),
                    None => recv.payload.clone(),
                };
                c.queue(&Packet::Recvack(RecvackPacket {
                    flags: Flags(0),
                    message_id: recv.message_id,
                    message_seq: recv.message_seq,
                }))?;
                if payload.len() >= 24 {
                    let sent_ns = u64::from_be_bytes(payload[0..8].try_into().unwrap_or_default());
                    let sender =
                        u64::from_be_bytes(payload[8..16].try_into().unwrap_or_default()) as usize;
                    let counter =
                        u64::from_be_bytes(payload[16..24].try_into().unwrap_or_default());
                    match c.seen.entry(sender).or_default().record(counter) {
                        crate::ledger::Arrival::New => {}
                        crate::ledger::Arrival::Duplicate => r.duplicated += 1,
                        crate::ledger::Arrival::Reordered => r.reordered += 1,
                    }
                    if let Some(from) = window {
                        r.deliveries += 1;
                        r.tick(from, now, 1);
                        let latency = nanos_since_epoch(now).saturating_sub(sent_ns);
                        report::record(&mut r.delivery, Duration::from_nanos(latency));
                    }
                }
            }
            Packet::Pong => {}
            other => {
                return Err(io::Error::other(format!(
                    "{}: unexpected {:?}",
                    c.plan.uid,
                    other.packet_type()
                )))
            }
        }
    }
    c.input.drain(..consumed);
    Ok(())
}

/// Starts SENDs until `window` are in flight (closed loop), or sends those that are due
/// (paced: one every 1/rate seconds, each stamped with its scheduled time, so a stalled
/// server shows up in the latency instead of silently lowering the offered load).
/// `lag` records paced sends' lateness (in the measured window only, as the latencies).
fn top_up(
    c: &mut Conn,
    args: &ImArgs,
    now: Instant,
    lag: Option<&mut Histogram<u64>>,
) -> io::Result<()> {
    let (Some((target, channel_type)), Some(sender)) = (c.plan.target.clone(), c.plan.sender_index)
    else {
        return Ok(());
    };
    if !c.logged_in {
        return Ok(());
    }
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let mut lag = lag;
    while c.in_flight.len() < args.window {
        let stamp = match interval {
            // Unpaced: timed from its encoding, not from when the poll returned.
            None => Instant::now(),
            Some(_) if c.next_send_at > now => break,
            Some(_) => c.next_send_at,
        };
        if let Some(interval) = interval {
            c.next_send_at += interval;
            if let Some(lag) = lag.as_deref_mut() {
                report::record(lag, Instant::now().saturating_duration_since(stamp));
            }
        }
        let mut plain = vec![b'x'; args.size];
        plain[0..8].copy_from_slice(&nanos_since_epoch(stamp).to_be_bytes());
        plain[8..16].copy_from_slice(&(sender as u64).to_be_bytes());
        plain[16..24].copy_from_slice(&c.next_counter.to_be_bytes());
        c.next_counter += 1;
        let client_msg_no = format!("{}-{}", c.plan.uid, c.client_seq);
        let (payload, msg_key) = match &c.cipher {
            Some(cipher) => {
                let wire = cipher.encrypt_b64(&plain);
                let key = cipher.send_msg_key(
                    c.client_seq,
                    &client_msg_no,
                    &target,
                    channel_type,
                    wire.as_bytes(),
                );
                (Bytes::from(wire.into_bytes()), key)
            }
            None => (Bytes::from(plain), String::new()),
        };
        c.queue(&Packet::Send(SendPacket {
            flags: Flags(Flags::RED_DOT),
            client_seq: c.client_seq,
            client_msg_no,
            channel_id: target.clone(),
            channel_type,
            msg_key,
            payload,
            ..Default::default()
        }))?;
        c.in_flight
            .push_back((c.client_seq, stamp, c.next_counter - 1));
        c.client_seq += 1;
    }
    Ok(())
}

fn flush(c: &mut Conn) -> io::Result<()> {
    crate::wire::write_pending(&mut c.stream, &mut c.output)
}
