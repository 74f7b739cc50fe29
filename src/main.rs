//! The `ruyi` binary: `ruyi` with no arguments serves on the embedded defaults (TCP 5100,
//! HTTP 127.0.0.1:5001, SQLite in `./data`, token auth and encryption on).

/// mimalloc instead of glibc malloc: frames and messages are allocated on one thread and
/// freed on another (loop → pool → loop), the pattern glibc's arenas handle worst. Measured
/// in BENCHMARKS.md (person chat).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use ruyi::{Config, Server};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Ruyi: an instant-messaging server that speaks WuKongIM's protocol.
#[derive(Parser, Debug)]
#[command(name = "ruyi", version, about)]
struct Cli {
    /// Binary protocol listener (WuKongIM `addr`).
    #[arg(long, default_value = "0.0.0.0:5100")]
    tcp_addr: SocketAddr,
    /// WebSocket listener (WuKongIM `wsAddr`): the same binary protocol in binary messages.
    #[arg(long, default_value = "0.0.0.0:5200")]
    ws_addr: SocketAddr,
    /// HTTP API listener. Loopback by default: the API can act as any user.
    #[arg(long, default_value = "127.0.0.1:5001")]
    http_addr: SocketAddr,
    /// Directory for the SQLite database.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Accept any token at CONNECT (local tests and benchmarks only).
    #[arg(long)]
    no_token_auth: bool,
    /// Disable payload encryption (custom clients and benchmarks only; official SDKs
    /// need it).
    #[arg(long)]
    no_encryption: bool,
    /// Event-loop threads (default: number of cores).
    #[arg(long)]
    loops: Option<usize>,
    /// SQLite synchronous=NORMAL instead of FULL: survives kill -9, not power loss.
    #[arg(long)]
    sync_normal: bool,
    /// Webhook endpoint (http://host:port/path); events go to <url>?event=<name>.
    #[arg(long)]
    webhook_url: Option<String>,
    /// Manager token: every HTTP request must carry it in a `token` header. Required when
    /// --http-addr is not loopback. Also read from RUYI_MANAGER_TOKEN, so it stays out of
    /// process listings.
    #[arg(long, env = "RUYI_MANAGER_TOKEN", hide_env_values = true)]
    manager_token: Option<String>,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let mut config = Config {
        tcp_addr: cli.tcp_addr,
        http_addr: cli.http_addr,
        ws_addr: cli.ws_addr,
        data_dir: cli.data_dir,
        token_auth: !cli.no_token_auth,
        encryption: !cli.no_encryption,
        sync_full: !cli.sync_normal,
        webhook_url: cli.webhook_url,
        manager_token: cli.manager_token,
        ..Config::default()
    };
    if let Some(loops) = cli.loops {
        config.loops = loops;
        config.channel_workers = loops;
    }
    // SIGTERM and SIGINT start a graceful stop: stop accepting, flush what the loops hold,
    // let storage commit what it has, exit. A second signal while stopping exits at once.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        if let Err(e) =
            signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop))
                .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&stop)))
        {
            eprintln!("ruyi: cannot install the signal handler: {e}");
            std::process::exit(1);
        }
    }
    let server = match Server::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ruyi: {e}");
            std::process::exit(1);
        }
    };
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
    }
    log::info!("ruyi: stopping (signal received)");
    server.stop();
    log::info!("ruyi: stopped");
}
