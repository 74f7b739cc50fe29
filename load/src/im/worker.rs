//! One worker thread of `ruyi-load person` / `group`: its share of the connections on a
//! `mio::Poll` of its own, logging in, keeping SENDs in flight, answering RECVs, and
//! counting what it saw (the run and the accounting are in `mod.rs`).

use super::*;

mod failover;
mod input;
use failover::{fail_over, resend};
use input::handle_input;

struct Conn {
    stream: crate::transport::Transport,
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
    /// Speaks JSON-RPC (`--jsonrpc`, `jsonrpc.rs`) instead of binary frames.
    jsonrpc: bool,
    /// Speaks redis or NATS instead (`--peer`, `peer.rs`), and where it stands with it.
    peer: crate::peer::Peer,
    peer_state: crate::peer::PeerState,
    /// SENDs in flight, oldest first. SENDACKs mostly come back in order, but a refusal (a
    /// rate limit) is answered before the accepted SENDs ahead of it are stored, so they
    /// are matched by client_seq.
    in_flight: VecDeque<InFlight>,
    /// Index of its server in `--servers` (0 without).
    server: usize,
    /// Times it logged in again on another server (`--failover`).
    reconnects: u32,
    /// The servers it lost, in order (`recover.rs`).
    lost_on: Vec<usize>,
    /// Counted in the run's logins (its first CONNACK, wherever it came from).
    counted: bool,
    /// Paced mode: when the next SEND is due.
    next_send_at: Instant,
    next_counter: u64,
    client_seq: u32,
    /// Per sender: the counters received (`ledger.rs`).
    seen: HashMap<usize, crate::ledger::Seen>,
}

/// A SEND waiting for its SENDACK.
struct InFlight {
    client_seq: u32,
    /// Its scheduled time (paced) or encoding time: what latencies are measured from.
    stamp: Instant,
    /// Its counter in the payload (`ledger.rs`).
    counter: u64,
    /// The payload before encryption: sent again as is after a failover.
    plain: Bytes,
}

impl Conn {
    /// Encodes and frames one packet onto the output.
    fn queue(&mut self, packet: &Packet) -> io::Result<()> {
        if self.jsonrpc {
            let text = crate::jsonrpc::request(packet)?;
            self.framing.wrap_text(text.as_bytes(), &mut self.output);
            return Ok(());
        }
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

/// `RUYI_LOAD_TRACE=1`: every connection's events on standard error, one line each
/// (login, lost server, SEND, SENDACK, RECV), to follow one message through a failover.
fn tracing() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("RUYI_LOAD_TRACE").is_some_and(|v| v == "1"))
}

/// One trace line (see [`tracing`]): wall-clock microseconds, uid, server, then `what`.
fn trace(c: &Conn, what: std::fmt::Arguments<'_>) {
    if tracing() {
        let us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        eprintln!(
            "T {us} {} s{} r{} {what}",
            c.plan.uid, c.server, c.reconnects
        );
    }
}

/// What one worker counted; the run's totals are the same shape, summed.
pub(super) struct WorkerResult {
    pub(super) sends: u64,
    pub(super) deliveries: u64,
    pub(super) refused: u64,
    /// (sender, counter) of each SEND the server acknowledged, whenever in the run.
    pub(super) acked: Vec<(usize, u64)>,
    /// (plan index, what it received, the servers it lost) of every connection, after
    /// the drain.
    pub(super) received: Vec<super::recover::Received>,
    /// Logins again after a connection was lost (`--failover`).
    pub(super) failovers: u64,
    pub(super) duplicated: u64,
    pub(super) reordered: u64,
    pub(super) unanswered: u64,
    pub(super) sendack: Histogram<u64>,
    pub(super) delivery: Histogram<u64>,
    /// Paced sends: scheduled time to encoding.
    pub(super) send_lag: Histogram<u64>,
    /// Per second of the measured window: [sends, deliveries].
    pub(super) timeline: Vec<[u64; 2]>,
}

impl WorkerResult {
    pub(super) fn new() -> WorkerResult {
        WorkerResult {
            sends: 0,
            deliveries: 0,
            refused: 0,
            acked: Vec::new(),
            received: Vec::new(),
            failovers: 0,
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
    pub(super) fn absorb(&mut self, other: WorkerResult) -> io::Result<()> {
        self.sends += other.sends;
        self.deliveries += other.deliveries;
        self.refused += other.refused;
        self.acked.extend(other.acked);
        self.received.extend(other.received);
        self.failovers += other.failovers;
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

pub(super) fn worker(
    args: &ImArgs,
    plans: Vec<(usize, Plan)>,
    logged_in: &AtomicUsize,
    total: usize,
) -> io::Result<WorkerResult> {
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(plans.len());
    let tls = match &args.tls_ca {
        Some(ca) => Some(crate::transport::client_config(ca)?),
        None => None,
    };
    let start = Instant::now();
    for (i, (global, plan)) in plans.into_iter().enumerate() {
        let server = global % args.servers.len().max(1);
        let mut c = Conn {
            stream: dial(args, &poll, server, global, Token(i), tls.as_ref())?,
            plan,
            global,
            framing: Framing::new(args.ws.is_some(), global as u32),
            raw: Vec::new(),
            input: Vec::new(),
            output: BytesMut::new(),
            scratch: BytesMut::new(),
            cipher: None,
            secret: [0; 32],
            version: 5,
            logged_in: false,
            jsonrpc: args.jsonrpc,
            peer: args.peer,
            peer_state: crate::peer::PeerState::default(),
            in_flight: VecDeque::new(),
            server,
            reconnects: 0,
            lost_on: Vec::new(),
            counted: false,
            next_send_at: start,
            next_counter: 1,
            client_seq: 1,
            seen: HashMap::new(),
        };
        login(&mut c, args)?;
        conns.push(c);
    }
    let mut r = WorkerResult::new();
    // Where every encrypted RECV is checked and decrypted, with no allocation per RECV.
    let mut seal = ruyi_proto::crypto::SealScratch::default();
    // Servers that refused a failover's connect lately (`fail_over`).
    let mut refused: HashMap<usize, Instant> = HashMap::new();
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
                flush_unless_failing_over(c, args)?;
            }
        }
        if let Some((_, until)) = measure {
            // The drain (module docs): no new SENDs; done once every SEND is answered and
            // the input has been quiet a while, or at the limit.
            if now >= until {
                let answered = conns.iter().all(|c| c.in_flight.is_empty());
                let limit = if args.failover {
                    FAILOVER_DRAIN_LIMIT
                } else {
                    DRAIN_LIMIT
                };
                if (answered && now >= last_input + DRAIN_QUIET) || now >= until + limit {
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
        // A rare large RECV does not keep its buffers for the rest of the run.
        seal.trim();
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
            // Lost: the server closed it or died; with `--failover` it logs in elsewhere.
            let mut lost = false;
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                match crate::wire::read_available(&mut c.stream, &mut buf, &mut c.raw) {
                    Ok(false) => {
                        handle_input(c, args, now, window, logged_in, &mut r, &mut seal)?;
                        if started.is_some() && !paced && !draining {
                            top_up(c, args, now, None)?;
                        }
                    }
                    Ok(true) => {
                        // The last bytes may say why (a refusing CONNACK).
                        handle_input(c, args, now, None, logged_in, &mut r, &mut seal)?;
                        if !args.failover {
                            return Err(io::Error::other(format!(
                                "{} closed by the server",
                                c.plan.uid
                            )));
                        }
                        lost = true;
                    }
                    Err(_) if args.failover => lost = true,
                    Err(e) => return Err(e),
                }
            }
            if !lost {
                match flush(c) {
                    Ok(()) => {}
                    Err(_) if args.failover => lost = true,
                    Err(e) => return Err(e),
                }
            }
            if lost {
                trace(c, format_args!("LOST"));
                fail_over(c, &poll, args, event.token(), tls.as_ref(), &mut refused)?;
            }
        }
        if paced && started.is_some() && !draining {
            let now = Instant::now();
            let measuring = measure.is_some_and(|(from, until)| now >= from && now < until);
            next_due = None;
            for c in &mut conns {
                if c.next_send_at <= now {
                    top_up(c, args, now, measuring.then_some(&mut r.send_lag))?;
                    flush_unless_failing_over(c, args)?;
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
    r.received = conns
        .into_iter()
        .map(|c| (c.global, c.seen, c.lost_on))
        .collect();
    Ok(r)
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
        if plain.len() >= 32 {
            plain[24..32].copy_from_slice(&run_id().to_be_bytes());
        }
        let plain = Bytes::from(plain);
        send_packet(c, &target, channel_type, c.client_seq, &plain)?;
        c.in_flight.push_back(InFlight {
            client_seq: c.client_seq,
            stamp,
            counter: c.next_counter,
            plain,
        });
        c.next_counter += 1;
        c.client_seq += 1;
    }
    Ok(())
}

fn flush(c: &mut Conn) -> io::Result<()> {
    crate::wire::write_pending(&mut c.stream, &mut c.output)
}

/// [`flush`]; with `--failover` a failed write is left to the read event that follows a
/// lost connection, which fails it over.
fn flush_unless_failing_over(c: &mut Conn, args: &ImArgs) -> io::Result<()> {
    match flush(c) {
        Err(_) if args.failover => Ok(()),
        other => other,
    }
}

/// The address of server `server` (its index in `--servers`).
fn server_addr(args: &ImArgs, server: usize) -> SocketAddr {
    match (args.ws, args.servers.len()) {
        (Some(ws), _) => ws,
        (None, 0) => args.tcp,
        (None, n) => args.servers[server % n],
    }
}

/// Connects connection `global` to server `server`, registered under `token`.
fn dial(
    args: &ImArgs,
    poll: &Poll,
    server: usize,
    global: usize,
    token: Token,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> io::Result<crate::transport::Transport> {
    let addr = server_addr(args, server);
    let socket = crate::connect_registered(
        poll,
        addr,
        token,
        Some(crate::source::source_of(global, args.sources)),
    )?;
    crate::transport::Transport::new(socket, addr, tls)
}

/// Starts a login on `c`'s new stream: the WebSocket upgrade if any, and CONNECT with a
/// fresh key.
fn login(c: &mut Conn, args: &ImArgs) -> io::Result<()> {
    c.framing = Framing::new(args.ws.is_some(), c.global as u32);
    c.raw.clear();
    c.input.clear();
    c.output.clear();
    c.cipher = None;
    c.logged_in = false;
    c.secret = random_secret().map_err(io::Error::other)?;
    c.framing.start(server_addr(args, c.server), &mut c.output);
    if c.peer != crate::peer::Peer::Ruyi {
        let group = c.plan.member_of.clone();
        crate::peer::connect(
            c.peer,
            &mut c.peer_state,
            &c.plan.uid,
            group.as_deref(),
            &mut c.output,
        );
        trace(c, format_args!("LOGIN"));
        return flush(c);
    }
    let connect = Packet::Connect(ConnectPacket {
        version: 5,
        device_flag: 0,
        device_id: format!("load-{}", c.plan.uid),
        uid: c.plan.uid.clone(),
        token: "load".into(),
        client_timestamp: 0,
        client_key: if args.encrypt {
            public_key_b64(c.secret)
        } else {
            String::new()
        },
    });
    c.queue(&connect)?;
    trace(c, format_args!("LOGIN"));
    flush(c)
}

/// Queues SEND number `client_seq` of `plain` to `target`, encrypted when the session is.
fn send_packet(
    c: &mut Conn,
    target: &str,
    channel_type: u8,
    client_seq: u32,
    plain: &[u8],
) -> io::Result<()> {
    trace(c, format_args!("SEND cs{client_seq}"));
    if c.peer != crate::peer::Peer::Ruyi {
        crate::peer::publish(
            c.peer,
            &mut c.peer_state,
            client_seq,
            target,
            plain,
            &mut c.output,
        );
        return Ok(());
    }
    let client_msg_no = format!("{}-{}", c.plan.uid, client_seq);
    let (payload, msg_key) = match &c.cipher {
        Some(cipher) => {
            let wire = cipher.encrypt_b64(plain);
            let key = cipher.send_msg_key(
                client_seq,
                &client_msg_no,
                target,
                channel_type,
                wire.as_bytes(),
            );
            (Bytes::from(wire.into_bytes()), key)
        }
        None => (Bytes::copy_from_slice(plain), String::new()),
    };
    c.queue(&Packet::Send(SendPacket {
        flags: Flags(Flags::RED_DOT),
        client_seq,
        client_msg_no,
        channel_id: target.to_owned(),
        channel_type,
        msg_key,
        payload,
        ..Default::default()
    }))
}
