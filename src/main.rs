//! The `ruyi` binary: `ruyi` with no arguments serves on the embedded defaults (TCP 5100,
//! WebSocket 5200, HTTP 127.0.0.1:5001, SQLite in `./data`, token auth and encryption on).
//!
//! Settings come from, in rising precedence: the defaults, a TOML file (`--config`), and
//! command-line flags.

/// mimalloc instead of glibc malloc: frames and messages are allocated on one thread and
/// freed on another (loop → pool → loop), the pattern glibc's arenas handle worst. Measured
/// in BENCHMARKS.md (person chat).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use ruyi::config::Secret;
use ruyi::{Config, Server};
use serde::Deserialize;
use signal_hook::consts::{SIGINT, SIGTERM};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Ruyi: an instant-messaging server that speaks WuKongIM's protocol and HTTP API.
///
/// Every flag can also be set in the TOML file given with --config (same names, with
/// underscores: `tcp_addr = "0.0.0.0:5100"`); flags win over the file.
#[derive(Parser, Debug)]
#[command(name = "ruyi", version = ruyi::metrics::VERSION_LINE, about, long_about = None)]
struct Cli {
    /// What to do instead of serving (default: serve).
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML file with settings (see README for the keys).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Binary protocol listener (WuKongIM `addr`) [default: 0.0.0.0:5100]
    #[arg(long)]
    tcp_addr: Option<SocketAddr>,
    /// WebSocket listener (WuKongIM `wsAddr`): the same protocol in binary messages
    /// [default: 0.0.0.0:5200]
    #[arg(long)]
    ws_addr: Option<SocketAddr>,
    /// Certificate chain (PEM) for TLS; with --tls-key, serves WebSocket over TLS on
    /// --wss-addr. SIGHUP reads both files again
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// WebSocket over TLS listener (WuKongIM `wssAddr`), with a certificate
    /// [default: 0.0.0.0:5210]
    #[arg(long)]
    wss_addr: Option<SocketAddr>,
    /// The binary protocol over TLS on this address too [default: off]
    #[arg(long)]
    tls_addr: Option<SocketAddr>,
    /// HTTP API listener; beyond loopback it requires --manager-token
    /// [default: 127.0.0.1:5001]
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// The address clients are told to connect to (/route); default: the listener's, or
    /// this machine's first non-loopback address for a wildcard listener
    #[arg(long, value_name = "IP")]
    external_ip: Option<String>,
    /// The whole TCP address to advertise (host:port), e.g. a load balancer's
    #[arg(long, value_name = "HOST:PORT")]
    external_tcp_addr: Option<String>,
    /// The whole WebSocket address to advertise (ws://host:port)
    #[arg(long, value_name = "URL")]
    external_ws_addr: Option<String>,
    /// A TLS WebSocket address to advertise (wss://host:port, served by a proxy in front)
    #[arg(long, value_name = "URL")]
    external_wss_addr: Option<String>,
    /// Data directory: the SQLite database, the token key and the lock [default: data]
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Where messages and state live: `sqlite` (in --data-dir) or
    /// postgres://user:password@host:port/db. Also read from RUYI_STORE, which keeps the
    /// password out of process listings [default: sqlite]
    #[arg(long, env = "RUYI_STORE", hide_env_values = true)]
    store: Option<String>,
    /// PostgreSQL: read connections the pool threads share; the writer holds one more
    /// [default: 16]
    #[arg(long, value_name = "N")]
    store_pool_size: Option<usize>,
    /// PostgreSQL: how long a statement may run before it is cancelled [default: 10000]
    #[arg(long, value_name = "MS")]
    store_statement_timeout_ms: Option<u64>,
    /// PostgreSQL with sslmode=require: extra trusted certificates (PEM), e.g. the
    /// database's own CA; the server's certificate is always verified
    #[arg(long, value_name = "FILE")]
    store_ca_file: Option<PathBuf>,
    /// Accept any token at CONNECT (local tests and benchmarks only)
    #[arg(long)]
    no_token_auth: bool,
    /// Disable payload encryption (custom clients and benchmarks only; the official SDKs
    /// need it)
    #[arg(long)]
    no_encryption: bool,
    /// Refuse JSON-RPC clients on the WebSocket port (WuKongIM's disableJSONRPC): where
    /// every client must encrypt, as only the binary protocol does
    #[arg(long)]
    no_jsonrpc: bool,
    /// Event loops and channel workers [default: number of cores]
    #[arg(long)]
    loops: Option<usize>,
    /// SQLite synchronous=NORMAL instead of FULL: survives kill -9, not power loss
    #[arg(long)]
    sync_normal: bool,
    /// Webhook endpoint (http:// or https://host:port/path); events go to
    /// <url>?event=<name>
    #[arg(long)]
    webhook_url: Option<String>,
    /// Extra trusted certificates (PEM) for an https webhook endpoint (an internal CA)
    #[arg(long, value_name = "FILE")]
    webhook_ca_file: Option<PathBuf>,
    /// Connections open at most; lowered to what the open-file limit holds
    /// [default: 1000000]
    #[arg(long)]
    max_connections: Option<usize>,
    /// Connections open at most from one source address (IPv4, or IPv6 /64); 0 = no limit.
    /// Raise it behind a reverse proxy [default: 1000]
    #[arg(long)]
    max_conns_per_ip: Option<usize>,
    /// SENDs per second per connection (burst: twice that); over it, SENDACK reason 22;
    /// 0 = no limit [default: 200]
    #[arg(long)]
    max_sends_per_sec: Option<u32>,
    /// On SIGTERM, client connections are closed spread over this many seconds, so their
    /// reconnects do not arrive elsewhere as one herd; 0 = all at once [default: 5]
    #[arg(long)]
    shutdown_drain_secs: Option<u64>,
    /// Microseconds from one storage commit's start to the next at least, so one fsync
    /// serves every message that arrived meanwhile; 0 = commit at once [default: 1000]
    #[arg(long)]
    commit_interval_us: Option<u64>,
    /// Manager token: every HTTP request must carry it in a `token` header. Also read
    /// from RUYI_MANAGER_TOKEN, which keeps it out of process listings
    #[arg(long, env = "RUYI_MANAGER_TOKEN", hide_env_values = true)]
    manager_token: Option<String>,
    /// Browser origins allowed to call the HTTP API, comma-separated (e.g.
    /// https://admin.example.com; `*` for any). Default: none (requests from other
    /// origins get 403; WuKongIM allows all)
    #[arg(long, value_delimiter = ',')]
    cors_origins: Option<Vec<String>>,
    /// Host names besides loopback ones that a loopback-bound HTTP API answers,
    /// comma-separated (against DNS rebinding) [default: none]
    #[arg(long, value_delimiter = ',')]
    allowed_hosts: Option<Vec<String>>,
    /// Load balancers trusted to name the client, comma-separated CIDRs or addresses:
    /// their PROXY protocol headers (v1, v2) on the TCP and WebSocket ports, and
    /// X-Forwarded-For / X-Real-Ip on WebSocket upgrades [default: none; a PROXY header
    /// from elsewhere closes the connection]
    #[arg(long, value_delimiter = ',')]
    proxy_from: Option<Vec<String>>,
    /// The header a trusted WebSocket proxy names the client in: X-Forwarded-For or
    /// X-Real-Ip [default: X-Forwarded-For]
    #[arg(long)]
    proxy_client_header: Option<String>,
    /// Write JSON-RPC recv payloads as base64 always, as WuKongIM does, instead of as a
    /// JSON value when they are JSON [default: false]
    #[arg(long)]
    jsonrpc_base64_payloads: Option<bool>,
    /// The WAL size in bytes past which it is forced to start over [default: 67108864]
    #[arg(long)]
    wal_max_bytes: Option<u64>,
    /// Snowflake node id, unique per node of a cluster (0-1023; leased in PostgreSQL, so a
    /// duplicate is refused) [default: 1001]
    #[arg(long, value_name = "N")]
    node_id: Option<u16>,
    /// Cluster mode: NATS servers, comma-separated (nats://host:port,...). Needs a
    /// PostgreSQL --store, which the nodes share
    #[arg(long, value_delimiter = ',', value_name = "URLS")]
    nats: Option<Vec<String>>,
    /// Cluster mode: the cluster's name, the prefix of its NATS subjects [default: ruyi]
    #[arg(long, value_name = "NAME")]
    cluster_name: Option<String>,
    /// SEND payload bytes per second per connection, burst twice that; over it SENDACK 22;
    /// 0 = no limit [default: 2097152]
    #[arg(long)]
    max_send_bytes_per_sec: Option<u32>,
    /// Logins per second from one address (IPv6: /64), burst twice that; over it CONNACK
    /// 22. Off by default: behind a proxy or NAT all users share one address [default: 0]
    #[arg(long)]
    max_logins_per_sec_per_ip: Option<u32>,
    /// Logins per second for one uid, burst twice that; 0 = no limit [default: 20]
    #[arg(long)]
    max_logins_per_sec_per_uid: Option<u32>,
    /// Connections one uid may hold at once [default: 16]
    #[arg(long)]
    max_conns_per_uid: Option<usize>,
}

/// What the binary does besides serving.
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Writes a consistent copy of the database (of --data-dir, or the config's) to FILE,
    /// while a server may be running and writing: restore by putting it in an empty data
    /// directory as ruyi.db (README, "Backup and restore").
    Backup {
        /// Where the copy goes; must not exist yet.
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },
    /// Reads the settings (flags, --config file, environment), checks them as a start
    /// would, prints the summary and exits: 0 when they would start, 2 when not. Touches
    /// neither ports nor the data directory.
    Check,
}

/// The TOML file: every key optional; unknown keys are an error, so a typo is not silently
/// ignored.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    tcp_addr: Option<SocketAddr>,
    ws_addr: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    wss_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    external_ip: Option<String>,
    external_tcp_addr: Option<String>,
    external_ws_addr: Option<String>,
    external_wss_addr: Option<String>,
    store: Option<String>,
    store_pool_size: Option<usize>,
    store_statement_timeout_ms: Option<u64>,
    store_ca_file: Option<PathBuf>,
    token_auth: Option<bool>,
    encryption: Option<bool>,
    jsonrpc: Option<bool>,
    loops: Option<usize>,
    auth_workers: Option<usize>,
    sync_full: Option<bool>,
    webhook_url: Option<String>,
    webhook_ca_file: Option<PathBuf>,
    manager_token: Option<String>,
    idle_timeout_secs: Option<u64>,
    connect_timeout_secs: Option<u64>,
    max_frame_bytes: Option<usize>,
    offline_queue_max_group: Option<usize>,
    offline_queue_max_per_user: Option<u32>,
    wal_max_bytes: Option<u64>,
    nats: Option<Vec<String>>,
    cluster_name: Option<String>,
    cors_origins: Option<Vec<String>>,
    allowed_hosts: Option<Vec<String>>,
    proxy_from: Option<Vec<String>>,
    proxy_client_header: Option<String>,
    jsonrpc_base64_payloads: Option<bool>,
    max_send_bytes_per_sec: Option<u32>,
    max_logins_per_sec_per_ip: Option<u32>,
    max_logins_per_sec_per_uid: Option<u32>,
    max_conns_per_uid: Option<usize>,
    prelogin_budget_bytes: Option<usize>,
    node_id: Option<u16>,
    max_connections: Option<usize>,
    max_conns_per_ip: Option<usize>,
    max_sends_per_sec: Option<u32>,
    http_request_timeout_secs: Option<u64>,
    commit_interval_us: Option<u64>,
    shutdown_drain_secs: Option<u64>,
}

fn load(cli: Cli) -> Result<Config, String> {
    let mut c = Config::default();
    if let Some(path) = &cli.config {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let f: FileConfig =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        c.tcp_addr = f.tcp_addr.unwrap_or(c.tcp_addr);
        c.ws_addr = f.ws_addr.unwrap_or(c.ws_addr);
        c.tls_cert = f.tls_cert.or(c.tls_cert);
        c.tls_key = f.tls_key.or(c.tls_key);
        c.wss_addr = f.wss_addr.unwrap_or(c.wss_addr);
        c.tls_addr = f.tls_addr.or(c.tls_addr);
        c.http_addr = f.http_addr.unwrap_or(c.http_addr);
        c.data_dir = f.data_dir.unwrap_or(c.data_dir);
        c.store = f.store.unwrap_or(c.store);
        c.external_ip = f.external_ip.or(c.external_ip);
        c.external_tcp_addr = f.external_tcp_addr.or(c.external_tcp_addr);
        c.external_ws_addr = f.external_ws_addr.or(c.external_ws_addr);
        c.external_wss_addr = f.external_wss_addr.or(c.external_wss_addr);
        c.store_pool_size = f.store_pool_size.unwrap_or(c.store_pool_size);
        c.store_statement_timeout = f
            .store_statement_timeout_ms
            .map_or(c.store_statement_timeout, Duration::from_millis);
        c.store_ca_file = f.store_ca_file.or(c.store_ca_file);
        c.token_auth = f.token_auth.unwrap_or(c.token_auth);
        c.encryption = f.encryption.unwrap_or(c.encryption);
        c.jsonrpc = f.jsonrpc.unwrap_or(c.jsonrpc);
        c.sync_full = f.sync_full.unwrap_or(c.sync_full);
        if let Some(n) = f.loops {
            (c.loops, c.channel_workers) = (n, n);
        }
        c.auth_workers = f.auth_workers.unwrap_or(c.auth_workers);
        c.idle_timeout = f
            .idle_timeout_secs
            .map_or(c.idle_timeout, Duration::from_secs);
        c.connect_timeout = f
            .connect_timeout_secs
            .map_or(c.connect_timeout, Duration::from_secs);
        c.max_frame_bytes = f.max_frame_bytes.unwrap_or(c.max_frame_bytes);
        c.offline_queue_max_group = f
            .offline_queue_max_group
            .unwrap_or(c.offline_queue_max_group);
        c.offline_queue_max_per_user = f
            .offline_queue_max_per_user
            .unwrap_or(c.offline_queue_max_per_user);
        c.wal_max_bytes = f.wal_max_bytes.unwrap_or(c.wal_max_bytes);
        c.node_id = f.node_id.unwrap_or(c.node_id);
        c.nats = f.nats.unwrap_or(c.nats);
        c.cluster_name = f.cluster_name.unwrap_or(c.cluster_name);
        c.max_connections = f.max_connections.unwrap_or(c.max_connections);
        c.max_connections_per_ip = f.max_conns_per_ip.unwrap_or(c.max_connections_per_ip);
        c.max_sends_per_sec = f.max_sends_per_sec.unwrap_or(c.max_sends_per_sec);
        c.http_request_timeout = f
            .http_request_timeout_secs
            .map_or(c.http_request_timeout, Duration::from_secs);
        c.commit_interval = f
            .commit_interval_us
            .map_or(c.commit_interval, Duration::from_micros);
        c.shutdown_drain = f
            .shutdown_drain_secs
            .map_or(c.shutdown_drain, Duration::from_secs);
        c.webhook_url = f.webhook_url.or(c.webhook_url);
        c.webhook_ca_file = f.webhook_ca_file.or(c.webhook_ca_file);
        c.manager_token = f.manager_token.map(Secret::from).or(c.manager_token);
        c.cors_origins = f.cors_origins.unwrap_or(c.cors_origins);
        c.allowed_hosts = f.allowed_hosts.unwrap_or(c.allowed_hosts);
        c.proxy_from = f.proxy_from.unwrap_or(c.proxy_from);
        c.proxy_client_header = f.proxy_client_header.unwrap_or(c.proxy_client_header);
        c.jsonrpc_base64_payloads = f
            .jsonrpc_base64_payloads
            .unwrap_or(c.jsonrpc_base64_payloads);
        c.max_send_bytes_per_sec = f.max_send_bytes_per_sec.unwrap_or(c.max_send_bytes_per_sec);
        c.max_logins_per_sec_per_ip = f
            .max_logins_per_sec_per_ip
            .unwrap_or(c.max_logins_per_sec_per_ip);
        c.max_logins_per_sec_per_uid = f
            .max_logins_per_sec_per_uid
            .unwrap_or(c.max_logins_per_sec_per_uid);
        c.max_conns_per_uid = f.max_conns_per_uid.unwrap_or(c.max_conns_per_uid);
        c.prelogin_budget_bytes = f.prelogin_budget_bytes.unwrap_or(c.prelogin_budget_bytes);
    }
    c.tcp_addr = cli.tcp_addr.unwrap_or(c.tcp_addr);
    c.ws_addr = cli.ws_addr.unwrap_or(c.ws_addr);
    c.tls_cert = cli.tls_cert.or(c.tls_cert);
    c.tls_key = cli.tls_key.or(c.tls_key);
    c.wss_addr = cli.wss_addr.unwrap_or(c.wss_addr);
    c.tls_addr = cli.tls_addr.or(c.tls_addr);
    c.http_addr = cli.http_addr.unwrap_or(c.http_addr);
    c.data_dir = cli.data_dir.unwrap_or(c.data_dir);
    c.store = cli.store.unwrap_or(c.store);
    c.external_ip = cli.external_ip.or(c.external_ip);
    c.external_tcp_addr = cli.external_tcp_addr.or(c.external_tcp_addr);
    c.external_ws_addr = cli.external_ws_addr.or(c.external_ws_addr);
    c.external_wss_addr = cli.external_wss_addr.or(c.external_wss_addr);
    c.store_pool_size = cli.store_pool_size.unwrap_or(c.store_pool_size);
    c.store_statement_timeout = cli
        .store_statement_timeout_ms
        .map_or(c.store_statement_timeout, Duration::from_millis);
    c.store_ca_file = cli.store_ca_file.or(c.store_ca_file);
    c.token_auth &= !cli.no_token_auth;
    c.encryption &= !cli.no_encryption;
    c.jsonrpc &= !cli.no_jsonrpc;
    c.sync_full &= !cli.sync_normal;
    if let Some(n) = cli.loops {
        (c.loops, c.channel_workers) = (n, n);
    }
    c.webhook_url = cli.webhook_url.or(c.webhook_url);
    c.webhook_ca_file = cli.webhook_ca_file.or(c.webhook_ca_file);
    c.max_connections = cli.max_connections.unwrap_or(c.max_connections);
    c.max_connections_per_ip = cli.max_conns_per_ip.unwrap_or(c.max_connections_per_ip);
    c.max_sends_per_sec = cli.max_sends_per_sec.unwrap_or(c.max_sends_per_sec);
    c.commit_interval = cli
        .commit_interval_us
        .map_or(c.commit_interval, Duration::from_micros);
    c.manager_token = cli.manager_token.map(Secret::from).or(c.manager_token);
    c.cors_origins = cli.cors_origins.unwrap_or(c.cors_origins);
    c.allowed_hosts = cli.allowed_hosts.unwrap_or(c.allowed_hosts);
    c.proxy_from = cli.proxy_from.unwrap_or(c.proxy_from);
    c.proxy_client_header = cli.proxy_client_header.unwrap_or(c.proxy_client_header);
    c.jsonrpc_base64_payloads = cli
        .jsonrpc_base64_payloads
        .unwrap_or(c.jsonrpc_base64_payloads);
    c.wal_max_bytes = cli.wal_max_bytes.unwrap_or(c.wal_max_bytes);
    c.node_id = cli.node_id.unwrap_or(c.node_id);
    c.nats = cli.nats.unwrap_or(c.nats);
    c.cluster_name = cli.cluster_name.unwrap_or(c.cluster_name);
    c.max_send_bytes_per_sec = cli
        .max_send_bytes_per_sec
        .unwrap_or(c.max_send_bytes_per_sec);
    c.max_logins_per_sec_per_ip = cli
        .max_logins_per_sec_per_ip
        .unwrap_or(c.max_logins_per_sec_per_ip);
    c.max_logins_per_sec_per_uid = cli
        .max_logins_per_sec_per_uid
        .unwrap_or(c.max_logins_per_sec_per_uid);
    c.max_conns_per_uid = cli.max_conns_per_uid.unwrap_or(c.max_conns_per_uid);
    c.shutdown_drain = cli
        .shutdown_drain_secs
        .map_or(c.shutdown_drain, Duration::from_secs);
    Ok(c)
}

/// A second SIGTERM or SIGINT during the drain forces an exit only after this long: an
/// impatient double Ctrl-C, or a supervisor that sends the signal twice, must not cut a
/// drain that takes a second.
const FORCE_AFTER: Duration = Duration::from_secs(3);

/// Watches the signals on a thread of its own (module docs of `main`): the first SIGTERM or
/// SIGINT sets `stop`; another one, `FORCE_AFTER` later, exits at once (status 1); SIGHUP
/// sets `reload` (the TLS certificate is read again).
fn watch_signals(stop: Arc<AtomicBool>, reload: Arc<AtomicBool>) -> std::io::Result<()> {
    use signal_hook::consts::SIGHUP;
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("ruyi-signals".into())
        .spawn(move || {
            let mut first: Option<std::time::Instant> = None;
            for signal in signals.forever() {
                if signal == SIGHUP {
                    reload.store(true, Ordering::Release);
                    continue;
                }
                match first {
                    None => {
                        first = Some(std::time::Instant::now());
                        stop.store(true, Ordering::Release);
                    }
                    Some(at) if at.elapsed() >= FORCE_AFTER => {
                        log::warn!("ruyi: second stop signal: exiting without finishing the drain");
                        std::process::exit(1);
                    }
                    Some(_) => log::info!(
                        "ruyi: already stopping; send it again after {FORCE_AFTER:?} to force"
                    ),
                }
            }
        })?;
    Ok(())
}

fn main() {
    ruyi::logging::init();
    // A panic anywhere stops the process loudly rather than leave a half-dead server.
    ruyi::exit_on_panic();
    let mut cli = Cli::parse();
    let command = cli.command.take();
    let config = match load(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ruyi: {e}");
            std::process::exit(2);
        }
    };
    if let Some(Command::Check) = command {
        let ca = config.webhook_ca_file.as_deref();
        let checked = config
            .validate()
            .and_then(|()| match ca {
                Some(path) => ruyi::tls::client_config(Some(path))
                    .map(|_| ())
                    .map_err(|e| format!("webhook_ca_file: {e}")),
                None => Ok(()),
            })
            .and_then(|()| match (&config.tls_cert, &config.tls_key) {
                (Some(cert), Some(key)) => ruyi::tls::ServerCert::load(cert, key)
                    .map(|_| ())
                    .map_err(|e| format!("TLS certificate: {e}")),
                _ => Ok(()),
            })
            // The store URL and its CA file, without connecting.
            .and_then(|()| {
                ruyi::server::store_of(&config)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        match checked {
            Ok(()) => {
                println!("ruyi: settings ok: {}", config.summary());
                return;
            }
            Err(e) => {
                eprintln!("ruyi: configuration: {e}");
                std::process::exit(2);
            }
        }
    }
    if let (Some(Command::Backup { .. }), false) = (&command, config.store == "sqlite") {
        eprintln!("ruyi: backup copies the SQLite store; back up PostgreSQL with its own tools (pg_dump, or a replica)");
        std::process::exit(2);
    }
    if let Some(Command::Backup { to }) = command {
        match ruyi::storage::backup(&config.data_dir, &to) {
            Ok(bytes) => {
                println!("ruyi: backed up {} ({bytes} bytes)", to.display());
                return;
            }
            Err(e) => {
                eprintln!("ruyi: backup failed: {e}");
                std::process::exit(1);
            }
        }
    }
    // SIGTERM and SIGINT start a graceful stop: stop accepting, flush what the loops hold,
    // let storage commit what it has, exit. SIGHUP (a renewed certificate, a closed
    // terminal) never kills a server: it reloads the TLS certificate, if there is one.
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    if let Err(e) = watch_signals(Arc::clone(&stop), Arc::clone(&reload)) {
        eprintln!("ruyi: cannot install the signal handler: {e}");
        std::process::exit(1);
    }
    ruyi::server::raise_open_file_limit();
    let server = match Server::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ruyi: {e}");
            // 2: the settings are wrong, and starting again cannot help (a supervisor can
            // tell, `packaging/ruyi.service`); 1: anything else, which may pass.
            let status = if matches!(e, ruyi::server::StartError::Config(_)) {
                2
            } else {
                1
            };
            std::process::exit(status);
        }
    };
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
        if reload.swap(false, Ordering::AcqRel) {
            match server.reload_tls() {
                Ok(true) => log::info!("ruyi: SIGHUP: TLS certificate reloaded"),
                Ok(false) => log::info!("ruyi: SIGHUP: nothing to reload (no TLS certificate)"),
                Err(e) => log::error!(
                    "ruyi: SIGHUP: TLS certificate not reloaded, the old one stays: {e}"
                ),
            }
        }
    }
    log::info!("ruyi: stopping (signal received)");
    server.stop();
    log::info!("ruyi: stopped");
}
