//! `ruyi-load`: the load generator for Ruyi and its baselines.
//!
//! It drives Ruyi over the binary protocol (TCP or WebSocket, encrypted or not) in person,
//! group and mixed scenarios, and the echo servers that are the engine's floor. Every run
//! is bounded in connections and time and stops by itself.

mod chart;
mod churn;
mod connect;
mod echo;
mod floor;
mod hostile;
mod idle;
mod im;
mod jsonrpc;
mod ledger;
mod meta;
mod peer;
mod procfs;
mod report;
mod source;
mod timer;
mod transport;
mod wire;

/// Connects a blocking socket (from `source` when given), then hands it to `poll` as a
/// non-blocking mio stream with `token`: how every scenario opens its connections.
fn connect_registered(
    poll: &mio::Poll,
    addr: std::net::SocketAddr,
    token: mio::Token,
    source: Option<std::net::Ipv4Addr>,
) -> std::io::Result<mio::net::TcpStream> {
    // The error names the address: "Connection refused" alone does not say which.
    let std_stream = connect_from(addr, source).map_err(|e| {
        let from = source.map_or_else(String::new, |s| format!(" from {s}"));
        std::io::Error::new(e.kind(), format!("connect to {addr}{from}: {e}"))
    })?;
    std_stream.set_nodelay(true)?;
    std_stream.set_nonblocking(true)?;
    let mut stream = mio::net::TcpStream::from_std(std_stream);
    poll.registry().register(
        &mut stream,
        token,
        mio::Interest::READABLE | mio::Interest::WRITABLE,
    )?;
    Ok(stream)
}

/// A blocking connection to `addr`, bound to `source` first when given (127.0.0.x spreads
/// load over source addresses: each has its own ephemeral ports and per-address limit).
fn connect_from(
    addr: std::net::SocketAddr,
    source: Option<std::net::Ipv4Addr>,
) -> std::io::Result<std::net::TcpStream> {
    // Bounded: a server that vanished without a reset (a black hole) must not hold a
    // worker for the kernel's two minutes.
    let limit = std::time::Duration::from_secs(5);
    let Some(source) = source else {
        return std::net::TcpStream::connect_timeout(&addr, limit);
    };
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    crate::source::bind_source(&socket, source)?;
    socket.connect_timeout(&addr.into(), limit)?;
    Ok(socket.into())
}

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ruyi-load",
    version,
    about = "Load generator for Ruyi and the echo baselines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Drive an echo server: fixed-size messages, request/response or pipelined.
    Echo(echo::EchoArgs),
    /// Open idle connections (spread over 127.0.0.x source addresses) and hold them.
    Idle(idle::IdleArgs),
    /// Ruyi person chat: pairs, each sender sending to its peer, receivers RECVACKing.
    Person(im::PersonArgs),
    /// Ruyi group fan-out: groups of online members, some of them sending.
    Group(im::GroupArgs),
    /// Ruyi connect storm, then an idle hold of the logged-in connections with heartbeats.
    Connect(connect::ConnectArgs),
    /// Reconnect churn with the offline path: sync and syncack, every message accounted.
    Churn(churn::ChurnArgs),
    /// The IM workloads' floor: a relay on the same engine with no storage, auth or crypto.
    Floor(floor::FloorArgs),
    /// Hostile clients, one kind per phase, while healthy pairs chat and are measured.
    Hostile(hostile::HostileArgs),
    /// Ruyi mixed load at once: person pairs, many small groups, one large group.
    Mixed(im::MixedArgs),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Echo(args) => echo::run(&args),
        Command::Idle(args) => idle::run(&args),
        Command::Person(args) => im::run_person(&args),
        Command::Group(args) => im::run_group(&args),
        Command::Mixed(args) => im::run_mixed(&args),
        Command::Connect(args) => connect::run(&args),
        Command::Hostile(args) => hostile::run(&args),
        Command::Churn(args) => churn::run(&args),
        Command::Floor(args) => floor::run(&args),
    };
    if let Err(e) = result {
        eprintln!("ruyi-load: {e}");
        std::process::exit(1);
    }
}
