//! `ruyi-load idle`: opens N connections, spread over several 127.0.0.x source addresses,
//! and holds them without sending, for memory-per-connection measurements.
//!
//! One process can hold at most its open-file limit (20,000 here), so a script runs several
//! of these side by side. Prints `connected N` once every connection is up, then holds for
//! `--hold` seconds and exits.

use clap::Args;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub addr: SocketAddr,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Source addresses 127.0.0.<first> .. 127.0.0.<first + count - 1>, used in turn.
    #[arg(long, default_value_t = 2)]
    pub source_first: u8,
    /// How many source addresses.
    #[arg(long, default_value_t = 4)]
    pub source_count: u8,
    /// Seconds to hold the connections once all are open.
    #[arg(long, default_value_t = 10)]
    pub hold: u64,
    /// PID of the server: print its RSS once every connection is open.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

pub fn run(args: &IdleArgs) -> io::Result<()> {
    let started = Instant::now();
    let mut held = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        let offset = (i % usize::from(args.source_count.max(1))) as u8;
        let source = Ipv4Addr::new(127, 0, 0, args.source_first.wrapping_add(offset));
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        crate::source::bind_source(&socket, source)?;
        socket.connect_timeout(&args.addr.into(), Duration::from_secs(10))?;
        held.push(socket);
    }
    println!(
        "connected {} in {:.2}s",
        held.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(pid) = args.server_pid {
        println!("server_rss_bytes {}", crate::procfs::rss_bytes(pid)?);
    }
    std::thread::sleep(Duration::from_secs(args.hold));
    Ok(())
}
