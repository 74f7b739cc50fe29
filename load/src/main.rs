//! `ruyi-load`: the load generator for Ruyi and its baselines.
//!
//! Today it drives echo servers (the engine's floor measurements) and holds idle
//! connections for memory-per-connection measurements; it grows into the protocol load tool.
//! Every run is bounded in connections and time and stops by itself.

mod echo;
mod idle;
mod im;
mod procfs;
mod report;

/// Connects a blocking socket, then hands it to `poll` as a non-blocking mio stream with
/// `token`: how every scenario opens its connections.
fn connect_registered(
    poll: &mio::Poll,
    addr: std::net::SocketAddr,
    token: mio::Token,
) -> std::io::Result<mio::net::TcpStream> {
    let std_stream = std::net::TcpStream::connect(addr)?;
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
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Echo(args) => echo::run(&args),
        Command::Idle(args) => idle::run(&args),
        Command::Person(args) => im::run_person(&args),
        Command::Group(args) => im::run_group(&args),
    };
    if let Err(e) = result {
        eprintln!("ruyi-load: {e}");
        std::process::exit(1);
    }
}
