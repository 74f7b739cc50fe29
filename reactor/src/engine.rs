//! `Engine`: builds the listeners, starts the acceptor and the event loops, stops them.
//!
//! Runs on the caller's thread. `EngineBuilder::listen` binds at once (so a busy port is
//! an error at start-up, not a log line later); `EngineBuilder::start` creates every
//! `Poll`, `Waker` and inbox before spawning any thread, so a failure leaves nothing running.
//!
//! # Stopping (R10)
//! 1. The acceptor stops and closes the listeners.
//! 2. Each loop is told to stop: a *soft* stop stops reading, keeps flushing until every
//!    output queue is empty or `shutdown_grace` passes; a *hard* stop closes at once.
//! 3. `stop` waits for the threads with a deadline and reports whether they all exited.
//!    Dropping a running engine does a hard stop; it never hangs.

use crate::acceptor::{Acceptor, ACCEPTOR_WAKER};
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::event_loop::{EventLoop, WAKER};
use crate::global::Global;
use crate::handler::Handler;
use crate::inbox::{Handles, LoopHandle};
use crate::loop_shared::{LoopShared, HARD_STOP, SOFT_STOP};
use crate::per_ip::PerIp;
use crate::stats::LoopStatsSnapshot;
use crate::ListenerId;
use crossbeam_channel::{Receiver, Sender};
use mio::Poll;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Extra time `stop` waits beyond the grace period for threads to notice and exit.
const STOP_SLACK: Duration = Duration::from_secs(2);

/// How to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Stop reading, flush queued output (up to `shutdown_grace`), then close.
    Soft,
    /// Close every connection now, dropping queued output.
    Hard,
}

/// Collects listeners and configuration; [`EngineBuilder::start`] starts the engine.
pub struct EngineBuilder {
    config: EngineConfig,
    listeners: Vec<std::net::TcpListener>,
    balancer: Option<Box<dyn crate::Balancer>>,
    /// Per listener, the sources PROXY headers are honoured from.
    proxies: Vec<Option<(Arc<crate::ProxyTrust>, crate::HeaderRule)>>,
    /// Per listener, its TLS configuration.
    tls: Vec<Option<Arc<rustls::ServerConfig>>>,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("config", &self.config)
            .field("listeners", &self.listeners.len())
            .field("custom_balancer", &self.balancer.is_some())
            .finish()
    }
}

impl EngineBuilder {
    /// Binds a TCP listener now (reuse-address, the configured backlog, non-blocking) and
    /// returns the tag connections from it will carry. Port 0 picks a free port; read it
    /// back with [`Engine::local_addr`].
    ///
    /// # Errors
    /// [`Error::Bind`] when the address cannot be bound.
    pub fn listen(&mut self, addr: SocketAddr) -> Result<ListenerId> {
        let bind = |addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into())?;
            socket.listen(self.config.listen_backlog)?;
            Ok(socket.into())
        };
        let listener = bind(addr).map_err(|source| Error::Bind { addr, source })?;
        let id = ListenerId(
            u16::try_from(self.listeners.len())
                .map_err(|_| Error::Config("too many listeners".into()))?,
        );
        self.listeners.push(listener);
        self.proxies.push(None);
        self.tls.push(None);
        Ok(id)
    }

    /// Reads a PROXY protocol header (v1 or v2) at the start of each connection on
    /// `listener` (see `proxy.rs`): honoured from a source `trust` names (and, by `rule`,
    /// required of it), refused (the connection closed) from any other. With an empty
    /// `trust` every header is refused.
    pub fn proxy_protocol(
        &mut self,
        listener: ListenerId,
        trust: crate::ProxyTrust,
        rule: crate::HeaderRule,
    ) -> &mut Self {
        self.proxies[listener.index()] = Some((Arc::new(trust), rule));
        self
    }

    /// Speaks TLS on `listener` with `config` (`event_loop/tls.rs`): its connections'
    /// handlers see plaintext. After a PROXY header, if the listener takes one. A
    /// certificate that changes while the engine runs is the config's business (a
    /// `rustls::server::ResolvesServerCert` that can be updated); each handshake asks it.
    pub fn tls(&mut self, listener: ListenerId, config: Arc<rustls::ServerConfig>) -> &mut Self {
        self.tls[listener.index()] = Some(config);
        self
    }

    /// The address `listener` is bound to (its real port when it was asked for port 0),
    /// known before the engine starts.
    ///
    /// # Errors
    /// The socket cannot say (it was closed).
    pub fn local_addr(&self, listener: ListenerId) -> Result<SocketAddr> {
        self.listeners[listener.index()]
            .local_addr()
            .map_err(|source| Error::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })
    }

    /// Uses `balancer` to pick the loop of each new connection, instead of the one
    /// `EngineConfig::balancing` names. It runs on the acceptor thread (module docs of
    /// [`crate::balancer`]).
    pub fn balancer(&mut self, balancer: Box<dyn crate::Balancer>) -> &mut Self {
        self.balancer = Some(balancer);
        self
    }

    /// Starts the acceptor and `config.loops` event loops. `factory(loop_index, handles)`
    /// runs once on each loop's thread to make that loop's handler.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid configuration, [`Error::Poll`] or [`Error::Spawn`]
    /// when the OS refuses a poller or a thread. Nothing is left running on error.
    pub fn start<H, F>(self, factory: F) -> Result<Engine<H::Message>>
    where
        H: Handler,
        F: Fn(usize, &Handles<H::Message>) -> H + Send + Sync + 'static,
    {
        let config = Arc::new(self.config);
        config.validate().map_err(Error::Config)?;
        let local_addrs = self
            .listeners
            .iter()
            .map(|l| l.local_addr().map_err(Error::Poll))
            .collect::<Result<Vec<_>>>()?;

        let acceptor_poll = Poll::new().map_err(Error::Poll)?;
        let acceptor_waker = Arc::new(
            mio::Waker::new(acceptor_poll.registry(), ACCEPTOR_WAKER).map_err(Error::Poll)?,
        );
        let global = Arc::new(Global {
            connections: AtomicUsize::new(0),
            gate_closed: AtomicBool::new(false),
            resume_below: config.max_connections - config.max_connections / 10,
            acceptor_waker: Arc::clone(&acceptor_waker),
            per_ip: (config.max_connections_per_ip > 0)
                .then(|| Arc::new(PerIp::new(config.max_connections_per_ip))),
            refused_per_ip: AtomicU64::new(0),
        });

        // Every poller, waker and inbox first, so a failure leaves no thread behind.
        let mut loop_parts = Vec::with_capacity(config.loops);
        let mut handles = Vec::with_capacity(config.loops);
        for index in 0..config.loops {
            let poll = Poll::new().map_err(Error::Poll)?;
            let waker = mio::Waker::new(poll.registry(), WAKER).map_err(Error::Poll)?;
            let shared = Arc::new(LoopShared::new(waker, config.max_inbox_bytes));
            let (tx, rx) = crossbeam_channel::bounded(config.inbox_capacity);
            handles.push(LoopHandle::new(index, tx, Arc::clone(&shared)));
            loop_parts.push((poll, rx, shared));
        }
        let handles = Handles::new(handles, Arc::clone(&global));
        let mut listeners: Vec<mio::net::TcpListener> = self
            .listeners
            .into_iter()
            .map(mio::net::TcpListener::from_std)
            .collect();
        Acceptor::<H::Message>::register(&acceptor_poll, &mut listeners).map_err(Error::Poll)?;

        let (exit_tx, exit_rx) = crossbeam_channel::unbounded();
        let mut engine = Engine {
            handles: handles.clone(),
            local_addrs,
            threads: Vec::new(),
            acceptor_stop: Arc::new(AtomicBool::new(false)),
            acceptor_waker,
            exits: exit_rx,
            acceptor_exit: None,
            global: Arc::clone(&global),
            grace: config.shutdown_grace,
            stopped: false,
        };

        let factory = Arc::new(factory);
        let tls: Arc<[_]> = self.tls.into();
        for (index, (poll, rx, shared)) in loop_parts.into_iter().enumerate() {
            let (factory, handles, config, tls) = (
                Arc::clone(&factory),
                handles.clone(),
                Arc::clone(&config),
                Arc::clone(&tls),
            );
            let exit_tx = exit_tx.clone();
            // On error, `engine` is dropped here and hard-stops whatever already started.
            engine.spawn(format!("ruyi-loop-{index}"), move || {
                // Made inside the thread: if the spawn fails, no exit is reported for it.
                let _exit = ExitSignal(exit_tx);
                let handler = factory(index, &handles);
                EventLoop::new(index, poll, handler, rx, shared, config, tls).run();
            })?;
        }
        let acceptor = Acceptor {
            poll: acceptor_poll,
            listeners,
            loops: handles.loops().to_vec(),
            balancer: self
                .balancer
                .unwrap_or_else(|| crate::balancer::from_config(config.balancing)),
            global,
            max_connections: config.max_connections,
            stop: Arc::clone(&engine.acceptor_stop),
            held: None,
            dead: vec![false; config.loops],
            last_refusal_warn: None,
            proxies: self.proxies,
        };
        let (acceptor_exit_tx, acceptor_exit) = crossbeam_channel::bounded(1);
        engine.acceptor_exit = Some(acceptor_exit);
        engine.spawn("ruyi-acceptor".into(), move || {
            let _exit = ExitSignal(acceptor_exit_tx);
            acceptor.run();
        })?;
        for addr in &engine.local_addrs {
            log::info!("listening on {addr}");
        }
        Ok(engine)
    }
}

/// Sent when an engine thread ends, however it ends (a panic included), so `stop` can wait
/// with a deadline instead of an unbounded `join`.
struct ExitSignal(Sender<()>);

impl Drop for ExitSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// A running engine: an acceptor thread and N event-loop threads.
///
/// `M` is the handler's message type (`Handler::Message`).
pub struct Engine<M> {
    handles: Handles<M>,
    local_addrs: Vec<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
    acceptor_stop: Arc<AtomicBool>,
    acceptor_waker: Arc<mio::Waker>,
    exits: Receiver<()>,
    /// The acceptor's own exit signal: `stop` waits for it before stopping the loops, so no
    /// socket is handed to a loop that is already shutting down (R10 step 1).
    acceptor_exit: Option<Receiver<()>>,
    global: Arc<Global>,
    grace: Duration,
    stopped: bool,
}

impl<M> std::fmt::Debug for Engine<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("local_addrs", &self.local_addrs)
            .field("threads", &self.threads.len())
            .field("stopped", &self.stopped)
            .finish()
    }
}

impl Engine<()> {
    /// Starts building an engine with `config`.
    pub fn builder(config: EngineConfig) -> EngineBuilder {
        EngineBuilder {
            config,
            listeners: Vec::new(),
            proxies: Vec::new(),
            tls: Vec::new(),
            balancer: None,
        }
    }
}

impl<M> Engine<M> {
    fn spawn(&mut self, name: String, body: impl FnOnce() + Send + 'static) -> Result<()> {
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(body)
            .map_err(|source| Error::Spawn { name, source })?;
        self.threads.push(handle);
        Ok(())
    }

    /// The address a listener is bound to (the real port when it was bound to port 0).
    ///
    /// # Panics
    /// If `listener` did not come from this engine's builder.
    pub fn local_addr(&self, listener: ListenerId) -> SocketAddr {
        self.local_addrs[listener.index()]
    }

    /// Handles to every loop, for sending to connections from any thread.
    pub fn handles(&self) -> Handles<M> {
        self.handles.clone()
    }

    /// Open connections over all loops (including sockets being handed to a loop).
    pub fn connections(&self) -> usize {
        self.global.connections.load(Ordering::Relaxed)
    }

    /// Connections reset at accept because their source address was at
    /// `max_connections_per_ip`.
    pub fn refused_per_ip(&self) -> u64 {
        self.global.refused_per_ip.load(Ordering::Relaxed)
    }

    /// A snapshot of every loop's counters, by loop index.
    pub fn stats(&self) -> Vec<LoopStatsSnapshot> {
        self.handles
            .loops()
            .iter()
            .map(|h| h.stats().snapshot())
            .collect()
    }

    /// Stops the engine (see the module docs) and waits for its threads. Returns `true`
    /// when every thread exited in time; threads that did not are detached and logged.
    pub fn stop(&mut self, mode: StopMode) -> bool {
        if self.stopped {
            return true;
        }
        self.stopped = true;
        self.acceptor_stop.store(true, Ordering::Release);
        if let Err(e) = self.acceptor_waker.wake() {
            log::error!("cannot wake the acceptor to stop it: {e}");
        }
        if let Some(acceptor_exit) = &self.acceptor_exit {
            if acceptor_exit.recv_timeout(STOP_SLACK).is_err() {
                log::error!("the acceptor did not stop within {STOP_SLACK:?}");
            }
        }
        let flag = match mode {
            StopMode::Soft => SOFT_STOP,
            StopMode::Hard => HARD_STOP,
        };
        for handle in self.handles.loops() {
            handle.shared().stop.store(flag, Ordering::Release);
            // Force the wake: the coalescing flag may be set by a sender that already woke
            // the loop for an earlier command.
            if let Err(e) = handle.shared().waker.wake() {
                log::error!("cannot wake loop {} to stop it: {e}", handle.index());
            }
        }
        let wait = match mode {
            StopMode::Soft => self.grace + STOP_SLACK,
            StopMode::Hard => STOP_SLACK,
        };
        let deadline = Instant::now() + wait;
        // The acceptor's thread is in `threads` but reports on its own channel.
        let acceptor = usize::from(self.acceptor_exit.is_some());
        let mut exited = acceptor;
        while exited < self.threads.len() {
            match self.exits.recv_deadline(deadline) {
                Ok(()) => exited += 1,
                Err(_) => break,
            }
        }
        if exited < self.threads.len() {
            log::error!(
                "{} engine thread(s) did not stop within {wait:?}; detaching them",
                self.threads.len() - exited,
            );
            self.threads.clear();
            return false;
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        log::info!("engine stopped ({mode:?})");
        true
    }
}

impl<M> Drop for Engine<M> {
    fn drop(&mut self) {
        self.stop(StopMode::Hard);
    }
}
