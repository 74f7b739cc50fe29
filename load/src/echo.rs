//! `ruyi-load echo`: drives an echo server with fixed-size messages.
//!
//! Each worker thread owns a `mio::Poll` and a share of the connections. A connection keeps
//! `depth` messages in flight: depth 1 is request/response, more is pipelining. Because the
//! server echoes in order and messages have a fixed size, every `size` bytes received
//! complete the oldest message in flight, whose send time is the front of a queue.
//!
//! The run has a warm-up (not measured) and a measured window, then stops by itself.

use crate::report::{self, Percentiles};
use clap::Args;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Poll, Token};
use serde::Serialize;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct EchoArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub addr: SocketAddr,
    /// Connections, spread over the worker threads.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Messages in flight per connection (1 = request/response).
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// Client worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Warm-up seconds, not measured.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// A label for the server, carried into the report.
    #[arg(long, default_value = "server")]
    pub label: String,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// PID of the server, to report its CPU use during the measured window.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
struct EchoReport {
    label: String,
    conns: usize,
    size: usize,
    depth: usize,
    threads: usize,
    seconds: f64,
    messages: u64,
    msgs_per_sec: f64,
    latency: Percentiles,
    errors: u64,
    /// Server CPU seconds (user + system) during the measured window, when its PID was given.
    server_cpu_seconds: Option<f64>,
    /// Messages per server CPU-second: the work the server does per unit of CPU.
    msgs_per_server_cpu_sec: Option<f64>,
}

struct Conn {
    stream: TcpStream,
    /// Send times of the messages in flight, oldest first.
    in_flight: VecDeque<Instant>,
    /// Bytes of the current outgoing messages not yet accepted by the kernel.
    unsent: usize,
    /// Bytes received towards the next complete message.
    partial: usize,
    dead: bool,
}

struct WorkerResult {
    messages: u64,
    histogram: Histogram<u64>,
    errors: u64,
}

pub fn run(args: &EchoArgs) -> io::Result<()> {
    let meta = crate::meta::collect("echo", args.server_pid, args, UNITS);
    if args.size == 0 || args.depth == 0 || args.threads == 0 || args.conns == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "size, depth, threads and conns must be > 0",
        ));
    }
    let start_at = Instant::now() + Duration::from_millis(500);
    let measure_from = start_at + Duration::from_secs(args.warmup);
    let measure_until = measure_from + Duration::from_secs(args.seconds);
    let workers: Vec<_> = (0..args.threads)
        .map(|w| {
            let share = args.conns / args.threads + usize::from(w < args.conns % args.threads);
            let args = args.clone();
            std::thread::spawn(move || worker(&args, share, start_at, measure_from, measure_until))
        })
        .collect();
    let server_cpu = match args.server_pid {
        Some(pid) => {
            std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
            let before = crate::procfs::cpu_seconds(pid)?;
            std::thread::sleep(measure_until.saturating_duration_since(Instant::now()));
            Some(crate::procfs::cpu_seconds(pid)? - before)
        }
        None => None,
    };
    let mut messages = 0;
    let mut errors = 0;
    let mut histogram = report::latency_histogram();
    for w in workers {
        let r = w
            .join()
            .map_err(|_| io::Error::other("worker panicked"))??;
        messages += r.messages;
        errors += r.errors;
        histogram.add(&r.histogram).map_err(io::Error::other)?;
    }
    let seconds = args.seconds as f64;
    let report = EchoReport {
        label: args.label.clone(),
        conns: args.conns,
        size: args.size,
        depth: args.depth,
        threads: args.threads,
        seconds,
        messages,
        msgs_per_sec: messages as f64 / seconds,
        latency: Percentiles::of(&histogram),
        errors,
        server_cpu_seconds: server_cpu,
        msgs_per_server_cpu_sec: server_cpu.map(|cpu| messages as f64 / cpu.max(1e-9)),
    };
    println!(
        "echo {} conns={} size={} depth={} msgs/s={:.0} p50={}us p99={}us p999={}us errors={} server_cpu={:.2}s",
        report.label,
        report.conns,
        report.size,
        report.depth,
        report.msgs_per_sec,
        report.latency.p50_us,
        report.latency.p99_us,
        report.latency.p999_us,
        report.errors,
        report.server_cpu_seconds.unwrap_or(f64::NAN),
    );
    crate::meta::write_json(args.json.as_deref(), &meta, &report)
}

/// The meaning of each figure of the echo report (`meta.rs`).
const UNITS: &[(&str, &str)] = &[
    ("conns", "client connections"),
    ("size", "bytes per message"),
    (
        "depth",
        "messages in flight per connection (1 = request/response)",
    ),
    (
        "msgs_per_sec",
        "echoed messages per second of the measured window",
    ),
    (
        "latency",
        "microseconds from a message's write to its echo: p50_us, p99_us, p999_us, max_us",
    ),
    ("errors", "connection errors"),
    (
        "server_cpu_seconds",
        "user + system CPU seconds of the server during the measured window",
    ),
];

fn worker(
    args: &EchoArgs,
    conns: usize,
    start_at: Instant,
    measure_from: Instant,
    measure_until: Instant,
) -> io::Result<WorkerResult> {
    let mut poll = Poll::new()?;
    let mut list = Vec::with_capacity(conns);
    for i in 0..conns {
        let stream = crate::connect_registered(&poll, args.addr, Token(i), None)?;
        list.push(Conn {
            stream,
            in_flight: VecDeque::with_capacity(args.depth),
            unsent: 0,
            partial: 0,
            dead: false,
        });
    }
    // All threads start sending together, after every connection is up.
    std::thread::sleep(start_at.saturating_duration_since(Instant::now()));
    let out = vec![b'e'; args.size * args.depth];
    let mut buf = vec![0u8; 64 << 10];
    let mut result = WorkerResult {
        messages: 0,
        histogram: report::latency_histogram(),
        errors: 0,
    };
    let now = Instant::now();
    for c in &mut list {
        top_up(c, args, now);
        flush(c, &out, &mut result);
    }
    let mut events = Events::with_capacity(1024);
    while Instant::now() < measure_until {
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        let now = Instant::now();
        let measuring = now >= measure_from && now < measure_until;
        for event in events.iter() {
            let c = &mut list[event.token().0];
            if c.dead {
                continue;
            }
            if event.is_readable() {
                loop {
                    match c.stream.read(&mut buf) {
                        Ok(0) => {
                            c.dead = true;
                            result.errors += 1;
                            break;
                        }
                        Ok(n) => {
                            let mut bytes = c.partial + n;
                            while bytes >= args.size {
                                bytes -= args.size;
                                if let Some(sent) = c.in_flight.pop_front() {
                                    if measuring {
                                        result.messages += 1;
                                        report::record(&mut result.histogram, now - sent);
                                    }
                                }
                            }
                            c.partial = bytes;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            c.dead = true;
                            result.errors += 1;
                            break;
                        }
                    }
                }
            }
            if !c.dead {
                top_up(c, args, now);
                flush(c, &out, &mut result);
            }
        }
    }
    Ok(result)
}

/// Starts new messages until `depth` are in flight.
fn top_up(c: &mut Conn, args: &EchoArgs, now: Instant) {
    while c.in_flight.len() < args.depth {
        c.in_flight.push_back(now);
        c.unsent += args.size;
    }
}

/// Writes unsent bytes until done or `WouldBlock`. Every message has the same bytes, so
/// `out` (depth messages long) always holds what is left to send.
fn flush(c: &mut Conn, out: &[u8], result: &mut WorkerResult) {
    while c.unsent > 0 {
        match c.stream.write(&out[..c.unsent.min(out.len())]) {
            Ok(n) => c.unsent -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                c.dead = true;
                result.errors += 1;
                return;
            }
        }
    }
}
