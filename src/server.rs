//! Wiring: opens storage, starts the engine with a [`Gateway`] per loop, then the pools
//! (auth, channel, storage writer, HTTP), each with its bounded queue. The pusher runs on
//! the writer thread after each commit.
//!
//! ```text
//! loops --CONNECT--> auth pool --CONNACK--> loops
//! loops --SEND--> channel pool --Planned--> storage writer (commit, then pusher) --> loops
//! loops --HTTP request--> HTTP pool --> storage / channel pool --> loops
//! ```

use crate::config::Config;
use crate::gateway::{
    Gateway, LISTENER_HTTP, LISTENER_TCP, LISTENER_TLS, LISTENER_WS, LISTENER_WSS,
};
use crate::ids::IdGenerator;
use crate::mailbox;
use crate::registry::Registry;
use crate::shared::{Counters, Shared, SharedRef};
use crate::storage::writer::{Writer, WriterSettings};
use crate::storage::{self, StorageError};
use crate::to_loop::ToLoop;
use crossbeam_channel::bounded;
use ruyi_reactor::{Engine, EngineConfig, StopMode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// Commands queued per channel worker. Past it, loops pause the sending connections.
const CHANNEL_QUEUE: usize = 16 << 10;
/// Messages waiting for the storage writer: a few group commits' worth.
const WRITER_QUEUE: usize = 32 << 10;
/// HTTP requests waiting for a worker; beyond it the loop answers 503.
const HTTP_QUEUE: usize = 1024;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Storage could not be opened or migrated.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The engine could not bind or start.
    #[error(transparent)]
    Engine(#[from] ruyi_reactor::Error),
    /// A pool thread could not be spawned.
    #[error("cannot spawn {0}: {1}")]
    Spawn(String, std::io::Error),
    /// The configuration cannot be used.
    #[error("configuration: {0}")]
    Config(String),
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    engine: Engine<ToLoop>,
    shared: SharedRef,
    tcp_addr: SocketAddr,
    http_addr: SocketAddr,
    ws_addr: SocketAddr,
    /// WebSocket over TLS and the binary protocol over TLS, when they listen.
    wss_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    /// The TLS listeners' certificate, for SIGHUP's reload.
    cert: Option<Arc<crate::tls::ServerCert>>,
    threads: Vec<JoinHandle<()>>,
    checkpoint_stop: Arc<AtomicBool>,
    /// This server's node id, leased on PostgreSQL (released after the last commit).
    lease: Option<storage::postgres::NodeLease>,
}

/// The store `config` names (parsed, not opened).
///
/// # Errors
/// A `store` value or a PostgreSQL setting that cannot be used; the message names it.
pub fn store_of(config: &Config) -> Result<storage::Store, storage::StorageError> {
    storage::Store::parse(
        &config.store,
        config.data_dir.clone(),
        config.sync_full,
        config.wal_max_bytes,
        storage::PgSettings {
            pool_size: config.store_pool_size,
            statement_timeout: config.store_statement_timeout,
            ca_file: config.store_ca_file.clone(),
        },
    )
}

fn spawn(
    threads: &mut Vec<JoinHandle<()>>,
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> Result<(), StartError> {
    let t = std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|e| StartError::Spawn(name, e))?;
    threads.push(t);
    Ok(())
}

impl Server {
    /// Opens storage and starts every thread.
    ///
    /// # Errors
    /// See [`StartError`].
    pub fn start(config: Config) -> Result<Server, StartError> {
        config.validate().map_err(StartError::Config)?;
        // The ports first: a port in use is the commonest start failure, and it must not
        // cost a database open, a migration or a token conversion first.
        let engine_config = EngineConfig {
            loops: config.loops.max(1),
            // Ticks drive kick timers, retries and the resumption of paused connections.
            tick: crate::gateway::TICK,
            max_inbound_bytes: config.max_frame_bytes + (64 << 10),
            max_connections: connection_budget(config.max_connections),
            max_connections_per_ip: config.max_connections_per_ip,
            // A reconnect storm after a restart arrives faster than one accept turn: a
            // backlog of 1,024 overflowed at 5,000 simultaneous connects here and cost the
            // dropped SYNs a one-second retransmit. The kernel caps it at somaxconn.
            listen_backlog: 4096,
            // The same budget as the gateway's deadline closes: 3,200 per second per loop.
            max_idle_closes_per_tick: crate::gateway::DEADLINE_CLOSES_PER_TICK,
            ..EngineConfig::default()
        };
        let mut builder = Engine::builder(engine_config);
        let tcp = builder.listen(config.tcp_addr)?;
        let http = builder.listen(config.http_addr)?;
        let ws = builder.listen(config.ws_addr)?;
        // Always on: without trusted sources every PROXY header is refused (`proxy.rs`).
        let proxies =
            ruyi_reactor::ProxyTrust::parse(&config.proxy_from).map_err(StartError::Config)?;
        // An L4 balancer in front of the TCP port always sends a header; one in front of
        // the WebSocket port may be an HTTP proxy that names the client in its headers.
        builder.proxy_protocol(tcp, proxies.clone(), ruyi_reactor::HeaderRule::Required);
        builder.proxy_protocol(ws, proxies.clone(), ruyi_reactor::HeaderRule::Optional);
        debug_assert_eq!(
            (tcp.index(), http.index(), ws.index()),
            (LISTENER_TCP, LISTENER_HTTP, LISTENER_WS)
        );
        // TLS listeners, after the plain ones so the ids above stay put: the same
        // protocols, with the engine's TLS sessions under them (PROXY headers first).
        let cert = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(
                crate::tls::ServerCert::load(cert, key)
                    .map_err(|e| StartError::Config(format!("TLS certificate: {e}")))?,
            ),
            _ => None,
        };
        let (mut wss, mut tls_tcp) = (None, None);
        if let Some(cert) = &cert {
            let tls = cert.server_config().map_err(StartError::Config)?;
            let id = builder.listen(config.wss_addr)?;
            debug_assert_eq!(id.index(), LISTENER_WSS);
            builder.tls(id, Arc::clone(&tls));
            builder.proxy_protocol(id, proxies.clone(), ruyi_reactor::HeaderRule::Optional);
            wss = Some(id);
            if let Some(addr) = config.tls_addr {
                let id = builder.listen(addr)?;
                debug_assert_eq!(id.index(), LISTENER_TLS);
                builder.tls(id, tls);
                builder.proxy_protocol(id, proxies, ruyi_reactor::HeaderRule::Required);
                tls_tcp = Some(id);
            }
        }
        let store = store_of(&config)?;
        let lock = storage::lock_data_dir(&config.data_dir)?;
        let tokens = crate::tokens::TokenHasher::load_or_create(&config.data_dir)?;
        let mut write_store = store.open_writer(|t| tokens.hash(t))?;
        // The holder's name: this data directory on this running machine, whose lock we
        // now hold (`storage::lease_holder`).
        let lease = store.claim_node(config.node_id, &storage::lease_holder(&config.data_dir)?)?;
        if let Some(lease) = &lease {
            write_store.fence(lease.node_id(), lease.incarnation());
            if !config.nats.is_empty() {
                write_store.lead(); // only the cluster's leader commits (`cluster/`)
            }
        }
        let floor = store.open_reader()?.max_message_id().map_err(|source| {
            storage::StorageError::Database {
                path: store.name().into(),
                source,
            }
        })?;

        let (writer_tx, writer_rx) = mailbox::bounded(WRITER_QUEUE);
        let (auth_tx, auth_rx) = crate::auth::AuthQueue::new(config.prelogin_budget_bytes);
        let (http_tx, http_rx) = bounded(HTTP_QUEUE);
        let (channel_txs, channel_rxs): (Vec<_>, Vec<_>) = (0..config.channel_workers.max(1))
            .map(|_| mailbox::bounded(CHANNEL_QUEUE))
            .unzip();

        let stopping = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let webhooks = match config.webhook_url.clone() {
            Some(url) => {
                let (hooks, hook_threads) = crate::webhook::Webhooks::start(
                    url,
                    config.webhook_ca_file.as_deref(),
                    Arc::clone(&stopping),
                )
                .map_err(|e| match e.kind() {
                    // A CA file that cannot be read or parsed is a setting, not a fault.
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::NotFound => {
                        StartError::Config(format!("webhook_ca_file: {e}"))
                    }
                    _ => StartError::Spawn("webhooks".into(), e),
                })?;
                threads.extend(hook_threads);
                Some(hooks)
            }
            None => None,
        };
        let advertised = crate::advertise::Advertised::resolve(
            &config,
            builder.local_addr(tcp)?,
            builder.local_addr(ws)?,
            wss.map(|id| builder.local_addr(id)).transpose()?,
        );
        let system_uids = store.open_reader()?.system_uids().map_err(|source| {
            storage::StorageError::Database {
                path: store.name().into(),
                source,
            }
        })?;
        let shared = Arc::new(Shared {
            system_uids: crate::system_uids::SystemUids::new(system_uids),
            advertised,
            cluster: OnceLock::new(),
            registry: Registry::default(),
            ids: IdGenerator::new(config.node_id, floor),
            channels: channel_txs,
            auth: auth_tx,
            http: http_tx,
            writer: writer_tx,
            loops: OnceLock::new(),
            stopping,
            draining: AtomicBool::new(false),
            connz_running: AtomicBool::new(false),
            webhooks,
            counters: Counters::default(),
            queue: Arc::default(),
            latency: Arc::default(),
            login_warnings: crate::logging::LogEvery::new(Duration::from_secs(10)),
            shed_warnings: crate::logging::LogEvery::new(Duration::from_secs(10)),
            http_auth_warnings: crate::logging::LogEvery::new(Duration::from_secs(10)),
            storage_health: Arc::default(),
            prelogin_bytes: Default::default(),
            tokens,
            logins_by_ip: crate::rate::KeyedBuckets::new(Config::login_limit(
                config.max_logins_per_sec_per_ip,
            )),
            logins_by_uid: crate::rate::KeyedBuckets::new(Config::login_limit(
                config.max_logins_per_sec_per_uid,
            )),
            started: std::time::Instant::now(),
            config,
        });

        let for_loops = Arc::clone(&shared);
        let engine = builder
            .start(move |_, handles| Gateway::new(Arc::clone(&for_loops), handles.clone()))?;
        shared.loops.set(engine.handles()).expect("set once, here");

        let checkpoint_stop = Arc::new(AtomicBool::new(false));
        let settings = WriterSettings {
            max_batch: shared.config.max_commit_batch,
            commit_interval: shared.config.commit_interval,
            max_queue_per_user: shared.config.offline_queue_max_per_user,
        };
        let (stats, health, stopping) = (
            Arc::clone(&shared.queue),
            Arc::clone(&shared.storage_health),
            Arc::clone(&shared.stopping),
        );
        let pusher = Box::new(crate::pusher::Pusher::new(Arc::clone(&shared)));
        // The writer stops on the flag once its queue is empty. It holds the data
        // directory's lock until it has stopped writing: dropping a `Server` without
        // `stop` lets its threads wind down for a moment, and another server on the same
        // directory must not start writing meanwhile.
        spawn(&mut threads, "ruyi-writer".into(), move || {
            let _lock = lock;
            Writer::new(
                write_store,
                writer_rx,
                pusher,
                settings,
                stats,
                health,
                stopping,
            )
            .run();
        })?;
        if store.is_sqlite() {
            // SQLite's WAL is folded back by a thread of its own (`storage/sqlite`).
            let (dir, stop) = (shared.config.data_dir.clone(), Arc::clone(&checkpoint_stop));
            let wal_max = shared.config.wal_max_bytes;
            spawn(&mut threads, "ruyi-checkpoint".into(), move || {
                storage::checkpointer(dir, wal_max, stop)
            })?;
        }
        for (i, rx) in channel_rxs.into_iter().enumerate() {
            let (s, reader) = (Arc::clone(&shared), store.open_reader()?);
            spawn(&mut threads, format!("ruyi-channel-{i}"), move || {
                crate::channel::run(s, rx, reader)
            })?;
        }
        for i in 0..shared.config.auth_workers.max(1) {
            let (s, rx, reader) = (Arc::clone(&shared), auth_rx.clone(), store.open_reader()?);
            spawn(&mut threads, format!("ruyi-auth-{i}"), move || {
                crate::auth::run(s, rx, reader)
            })?;
        }
        for i in 0..shared.config.http_workers.max(1) {
            let (s, rx, reader) = (Arc::clone(&shared), http_rx.clone(), store.open_reader()?);
            spawn(&mut threads, format!("ruyi-http-{i}"), move || {
                crate::http::run(s, rx, reader)
            })?;
        }
        if let Some(lease) = lease.as_ref().filter(|_| !shared.config.nats.is_empty()) {
            join_cluster(&shared, &store, lease, &mut threads)?;
        }
        let tcp_addr = engine.local_addr(tcp);
        let http_addr = engine.local_addr(http);
        let ws_addr = engine.local_addr(ws);
        let wss_addr = wss.map(|id| engine.local_addr(id));
        let tls_addr = tls_tcp.map(|id| engine.local_addr(id));
        log::info!(
            "ruyi: binary protocol on {tcp_addr}, WebSocket on {ws_addr}, HTTP API on {http_addr}, data in {}",
            shared.config.data_dir.display()
        );
        if let Some(wss_addr) = wss_addr {
            let tcp = tls_addr.map_or(String::new(), |a| {
                format!(", binary protocol over TLS on {a}")
            });
            log::info!("ruyi: WebSocket over TLS on {wss_addr}{tcp}");
        }
        log::info!(
            "ruyi {}: store {} | {}",
            crate::metrics::VERSION_LINE,
            store.name(),
            shared.config.summary()
        );
        if !shared.config.token_auth {
            log::warn!(
                "ruyi: token auth is OFF: anyone can log in as anyone (tests and benchmarks only)"
            );
        }
        if !shared.config.encryption {
            log::warn!(
                "ruyi: encryption is OFF: the official SDKs need it, and messages travel in clear"
            );
        }
        Ok(Server {
            engine,
            shared,
            tcp_addr,
            http_addr,
            ws_addr,
            wss_addr,
            tls_addr,
            cert,
            threads,
            checkpoint_stop,
            lease,
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.shared.config.data_dir
    }

    /// The binary-protocol address (the real port when configured with port 0).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// The HTTP API address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The WebSocket address.
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// The WebSocket-over-TLS address, when a certificate is set.
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.wss_addr
    }

    /// The binary-protocol-over-TLS address, when `tls_addr` is set.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Reads the TLS certificate and key files again (SIGHUP): new handshakes use them,
    /// open connections stay. Nothing to do without TLS.
    ///
    /// # Errors
    /// The files cannot be used (the message says why); the certificate in use stays.
    pub fn reload_tls(&self) -> Result<bool, String> {
        match &self.cert {
            Some(cert) => cert.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Connections logged in now.
    pub fn online(&self) -> usize {
        self.shared.registry.len()
    }

    /// The server's counters.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Stops accepting, flushes what the loops hold, lets the pools drain, and joins them.
    /// Messages already acknowledged are durable whatever happens here.
    pub fn stop(mut self) {
        self.drain();
        self.engine.stop(StopMode::Soft);
        self.shared.stopping.store(true, Ordering::Release);
        self.checkpoint_stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(cluster) = self.shared.cluster.get() {
            cluster.stop();
        }
        drop(self.lease.take()); // after the writer's last commit
    }
}

/// Joins the cluster as the node `lease` holds, announcing the advertised addresses,
/// and starts the relay's thread (`cluster/relay.rs`).
fn join_cluster(
    shared: &Arc<Shared>,
    store: &storage::Store,
    lease: &storage::postgres::NodeLease,
    threads: &mut Vec<JoinHandle<()>>,
) -> Result<(), StartError> {
    let a = &shared.advertised;
    let me = crate::cluster::members::NodeInfo {
        node: shared.config.node_id,
        incarnation: lease.incarnation(),
        tcp_addr: a.tcp.clone(),
        ws_addr: a.ws.clone(),
        wss_addr: a.wss.clone(),
        connections: 0,
        batches: 0,
        seen: None,
    };
    let leader = lease
        .watch_leader()
        .map_err(|e| StartError::Spawn("ruyi-leader".into(), e))?;
    let (cluster, inbound) =
        crate::cluster::Cluster::start(shared, me, leader).map_err(StartError::Config)?;
    shared.cluster.set(cluster).expect("set once, here");
    // Renewed only while this node is on the bus, or leads a cluster whose bus is down
    // for everyone (`storage/postgres/lease.rs`, CLUSTER.md invariant 7).
    let weak = Arc::downgrade(shared);
    lease.gate(Box::new(move || {
        use storage::postgres::Renewal;
        let Some(shared) = weak.upgrade() else {
            return Renewal::Renew;
        };
        let Some(cluster) = shared.cluster.get() else {
            return Renewal::Renew;
        };
        if cluster.bus.connected() {
            Renewal::Renew
        } else if cluster.leads() {
            Renewal::UnlessOthersRenew
        } else {
            Renewal::Skip
        }
    }));
    // A second reader for the thread that writes inherited pledges, should this node come
    // to lead (`cluster/inherit.rs`): a node takes the lead once in its life at most.
    let (s, reader, spare) = (
        Arc::clone(shared),
        store.open_reader()?,
        store.open_reader()?,
    );
    spawn(threads, "ruyi-relay".into(), move || {
        crate::cluster::inbound::run(s, inbound, reader, spare)
    })?;
    Ok(())
}

impl Server {
    /// Closes client connections spread over `shutdown_drain` (`drain.rs`) and waits
    /// until they are gone or the window (and a second) has passed.
    fn drain(&self) {
        let window = self.shared.config.shutdown_drain;
        self.shared.draining.store(true, Ordering::Release);
        for handle in self.shared.loops().loops() {
            // Blocking: every loop must hear it, and each takes it within a turn.
            let _ = handle.post(ToLoop::Drain { window });
        }
        let deadline =
            std::time::Instant::now() + window + crate::drain::ACK_GRACE + Duration::from_secs(1);
        while !self.shared.registry.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    /// A server dropped without `stop` (a test, a panic) still ends its pool threads: they
    /// see the flag within their poll period and exit; nothing is joined here.
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.checkpoint_stop.store(true, Ordering::Release);
        if let Some(cluster) = self.shared.cluster.get() {
            cluster.stop(); // the others see this node go
        }
    }
}

/// `wanted`, lowered to what the open-file limit can hold: accepting past it fails with
/// `EMFILE` anyway, and storage, listeners and webhooks need descriptors of their own
/// (kept back: 5% of the limit, at least 64).
fn connection_budget(wanted: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return wanted;
    }
    let files = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    let budget = files.saturating_sub((files / 20).max(64)).max(1);
    if budget < wanted {
        log::info!(
            "max_connections {budget}: the open-file limit is {files} (raise `ulimit -n` for more)"
        );
    }
    wanted.min(budget)
}

/// Raises this process's open-file soft limit to its hard limit, as Go's runtime does for
/// WuKongIM: the soft default (often 1,024) is far below what a server needs, and the hard
/// limit is what the administrator allowed. For the binary; a library user owns its limits.
pub fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                log::warn!(
                    "cannot raise the open-file limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}
