//! One worker of `ruyi-load connect`: its share of the connections, opened in batches,
//! logged in and held on a `mio::Poll` of its own (the run and its report: `mod.rs`).

use super::*;

/// One connection of a worker.
struct Conn {
    stream: Option<crate::transport::Transport>,
    framing: Framing,
    raw: Vec<u8>,
    input: Vec<u8>,
    output: BytesMut,
    scratch: BytesMut,
    scheduled: Instant,
    state: State,
    next_ping: Instant,
    /// The key exchange's secret, until the session key is derived.
    secret: Option<[u8; 32]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Connected or connecting, no CONNACK yet.
    Pending,
    LoggedIn,
    /// Refused, failed or closed: counted once, then ignored.
    Done,
}

impl Conn {
    fn new(
        framing: Framing,
        stream: Option<crate::transport::Transport>,
        scheduled: Instant,
    ) -> Conn {
        Conn {
            state: if stream.is_some() {
                State::Pending
            } else {
                State::Done
            },
            stream,
            framing,
            raw: Vec::new(),
            input: Vec::new(),
            output: BytesMut::new(),
            scratch: BytesMut::new(),
            scheduled,
            next_ping: scheduled,
            secret: None,
        }
    }
}

/// Connections an unpaced storm opens between two polls: CONNECTs go out (and CONNACKs
/// come back) while the rest are still being opened, instead of after all of them.
const OPEN_BATCH: usize = 64;

/// The poll token of a worker's pacing timer (connections use their index).
const TIMER: Token = Token(usize::MAX);

/// Runs worker `index`'s share: connections index, index + P, index + 2P, ...
pub(super) fn worker(
    args: &ConnectArgs,
    index: usize,
    notify: &mut dyn FnMut(Phase),
) -> io::Result<WorkerReport> {
    let mine: Vec<usize> = (index..args.conns).step_by(args.processes).collect();
    let server = args.ws.unwrap_or(args.tcp);
    let mut poll = Poll::new()?;
    let timer = crate::timer::Timer::new(poll.registry(), TIMER)?;
    let mut events = Events::with_capacity(1024);
    let mut r = WorkerReport::default();
    let start = Instant::now();
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let mut conns: Vec<Conn> = Vec::with_capacity(mine.len());
    let mut opened = 0;
    // `--server-crypto-only`: one client key for every login, made before the storm.
    let fixed_key = match args.server_crypto_only {
        true => Some(public_key_b64(random_secret().map_err(io::Error::other)?)),
        false => None,
    };
    let mut pending = 0usize; // opened, not yet logged in or failed
    let connect_deadline = start + Duration::from_secs(args.connect_timeout);
    let mut last_connack = start;
    let mut buf = vec![0u8; 64 << 10];
    let tls = match &args.tls_ca {
        Some(ca) => Some(crate::transport::client_config(ca)?),
        None => None,
    };
    // Connect phase, then hold phase.
    let mut hold_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        // Open the connections that are due (unpaced: a batch per pass).
        let batch_end = opened + OPEN_BATCH;
        while opened < mine.len() && opened < batch_end {
            let global = mine[opened];
            // Unpaced, a login is timed from its own opening.
            let scheduled =
                interval.map_or_else(Instant::now, |i| start + i.mul_f64(global as f64));
            if scheduled > now && interval.is_some() {
                break;
            }
            let source = crate::source::source_of(global, args.sources);
            match open(&poll, server, Token(opened), source) {
                Ok(stream) => {
                    let framing = Framing::new(args.ws.is_some(), global as u32);
                    let stream = crate::transport::Transport::new(stream, server, tls.as_ref())?;
                    let mut c = Conn::new(framing, Some(stream), scheduled);
                    c.framing.start(server, &mut c.output);
                    // The SDK's work for a login: a key pair now, the session key at CONNACK.
                    let key = if let Some(key) = &fixed_key {
                        key.clone()
                    } else if args.encrypt {
                        let began = Instant::now();
                        let secret = random_secret().map_err(io::Error::other)?;
                        let key = public_key_b64(secret);
                        c.secret = Some(secret);
                        r.keypair_us += began.elapsed().as_micros() as u64;
                        r.keypairs += 1;
                        key
                    } else {
                        String::new()
                    };
                    queue(
                        &mut c,
                        &Packet::Connect(ConnectPacket {
                            version: 5,
                            device_flag: 0,
                            device_id: format!("d-{global}"),
                            uid: format!("{}-{global}", args.prefix),
                            token: "load".into(),
                            client_timestamp: 0,
                            client_key: key,
                        }),
                    )?;
                    // Out now, not after the rest of the batch is opened: the login is
                    // timed from here. (A connect still in progress keeps it queued.)
                    let _ = flush(&mut c);
                    conns.push(c);
                    pending += 1;
                }
                Err(e) => {
                    log::debug!("connect {global}: {e}");
                    r.failed_connect += 1;
                    conns.push(Conn::new(Framing::Tcp, None, scheduled));
                }
            }
            opened += 1;
        }
        if hold_until.is_none() && opened == mine.len() && (pending == 0 || now >= connect_deadline)
        {
            // Stragglers count once, as timed out: close them so a late CONNACK or close
            // cannot count them again.
            r.timed_out += pending;
            pending = 0;
            for c in conns.iter_mut().filter(|c| c.state == State::Pending) {
                c.state = State::Done;
                if let Some(mut s) = c.stream.take() {
                    let _ = poll.registry().deregister(s.socket());
                }
            }
            r.connect_seconds = last_connack.duration_since(start).as_secs_f64();
            notify(Phase::Ready);
            let held_from = Instant::now();
            hold_until = Some(held_from + Duration::from_secs(args.hold));
            // Spread the PINGs over one period.
            let period = Duration::from_secs(args.ping_every.max(1));
            let n = conns.len().max(1) as f64;
            for (i, c) in conns.iter_mut().enumerate() {
                c.next_ping = held_from + period.mul_f64(i as f64 / n);
            }
        }
        if let Some(until) = hold_until {
            if now >= until {
                notify(Phase::Held);
                break;
            }
            let period = Duration::from_secs(args.ping_every.max(1));
            for c in conns
                .iter_mut()
                .filter(|c| c.state == State::LoggedIn && c.next_ping <= now)
            {
                c.next_ping += period;
                c.framing.wrap(&ruyi_proto::PING, &mut c.output);
                r.pings += 1;
                if flush(c).is_err() {
                    c.state = State::Done;
                    r.closed_while_held += 1;
                }
            }
        }
        let timeout = match (hold_until, interval) {
            (Some(_), _) => Duration::from_millis(50),
            (None, None) if opened < mine.len() => Duration::ZERO,
            (None, Some(i)) if opened < mine.len() => i.min(Duration::from_millis(5)),
            _ => Duration::from_millis(5),
        };
        // Paced: woken at the next connection's time by the timer (`timer.rs`), not by
        // the poll's whole-millisecond timeout.
        if let (Some(i), Some(&next)) = (interval, mine.get(opened)) {
            if hold_until.is_none() {
                timer.arm(start + i.mul_f64(next as f64))?;
            }
        }
        poll.poll(&mut events, Some(timeout))?;
        for event in events.iter() {
            if event.token() == TIMER {
                timer.clear();
                continue;
            }
            let c = &mut conns[event.token().0];
            let Some(stream) = c.stream.as_mut() else {
                continue;
            };
            let mut closed = event.is_error();
            if event.is_readable() {
                // EOF and errors alike end the connection.
                closed |= crate::wire::read_available(stream, &mut buf, &mut c.raw).unwrap_or(true);
                match read_packets(c) {
                    Ok(packets) => {
                        for p in packets {
                            match p {
                                Packet::Connack(ack) if c.state == State::Pending => {
                                    pending -= 1;
                                    if ack.reason_code == 1 {
                                        if let Some(secret) = c.secret.take() {
                                            let began = Instant::now();
                                            SessionCipher::derive(
                                                secret,
                                                &ack.server_key,
                                                &ack.salt,
                                            )
                                            .map_err(io::Error::other)?;
                                            r.derive_us += began.elapsed().as_micros() as u64;
                                        }
                                        let done = Instant::now();
                                        c.state = State::LoggedIn;
                                        r.connected += 1;
                                        last_connack = done;
                                        r.connack_us.push(
                                            done.saturating_duration_since(c.scheduled).as_micros()
                                                as u64,
                                        );
                                    } else {
                                        r.refused_login += 1;
                                        c.state = State::Done;
                                        closed = true;
                                    }
                                }
                                Packet::Pong => r.pongs += 1,
                                _ => {}
                            }
                        }
                    }
                    Err(_) => closed = true,
                }
            }
            if !closed && event.is_writable() && flush(c).is_err() {
                closed = true;
            }
            if closed {
                match c.state {
                    State::LoggedIn => r.closed_while_held += 1,
                    State::Pending => {
                        pending -= 1;
                        r.failed_connect += 1;
                    }
                    State::Done => {}
                }
                c.state = State::Done;
                if let Some(mut s) = c.stream.take() {
                    let _ = poll.registry().deregister(s.socket());
                }
            }
        }
    }
    Ok(r)
}

/// A non-blocking connect from `source`, registered with `poll`.
fn open(
    poll: &Poll,
    server: SocketAddr,
    token: Token,
    source: std::net::Ipv4Addr,
) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    crate::source::bind_source(&socket, source)?;
    match socket.connect(&server.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let mut stream = TcpStream::from_std(socket.into());
    poll.registry()
        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
    Ok(stream)
}

fn queue(c: &mut Conn, packet: &Packet) -> io::Result<()> {
    c.scratch.clear();
    packet.encode(5, &mut c.scratch).map_err(io::Error::other)?;
    c.framing.wrap(&c.scratch, &mut c.output);
    Ok(())
}

fn read_packets(c: &mut Conn) -> io::Result<Vec<Packet>> {
    c.framing.unwrap(&mut c.raw, &mut c.input)?;
    let mut out = Vec::new();
    let mut consumed = 0;
    while let Some((p, used)) =
        decode_packet(&c.input[consumed..], 5, MAX_BODY_BYTES).map_err(io::Error::other)?
    {
        consumed += used;
        out.push(p);
    }
    c.input.drain(..consumed);
    Ok(out)
}

fn flush(c: &mut Conn) -> io::Result<()> {
    match c.stream.as_mut() {
        Some(stream) => crate::wire::write_pending(stream, &mut c.output),
        None => Ok(()),
    }
}
