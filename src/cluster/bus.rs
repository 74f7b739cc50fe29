//! The bus: this node's one NATS connection, on a thread of its own that runs a small
//! tokio runtime (the NATS client is async; the reactor loops stay mio and never touch it).
//!
//! # Threads and queues
//! Other threads hand publications over with [`Publisher::try_publish`], which never blocks: a
//! bounded queue ([`OUTBOX`] entries) sits between them and the bus thread. Subscriptions
//! run their handler on the bus thread, which must not block either (handlers pass work on
//! with `try_` forms). Core NATS is at-most-once, so nothing that matters may rely on one
//! publication arriving: membership repeats itself every heartbeat, and the streams that
//! will carry messages are sequenced and repaired (CLUSTER.md invariant 4).
//!
//! # NATS away
//! The client reconnects by itself, at most a second apart. While it is disconnected,
//! publications are not buffered (a heartbeat from the past means nothing, and a buffer
//! that grows while NATS is away is an unbounded queue): `try_publish` refuses them and
//! counts them in `dropped`.

use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Publications waiting for the bus thread, at most. Full: refused and counted.
pub const OUTBOX: usize = 8192;

/// Runs on the bus thread for each message on its subject; must not block.
pub type Handler = Box<dyn Fn(Bytes) + Send + Sync>;

/// Runs on the bus thread every `Bus::start`'s period; what it returns is published.
pub type Ticker = Box<dyn Fn() -> Vec<(String, Bytes)> + Send>;

/// Counters an operator sees in `/varz`.
#[derive(Debug, Default)]
pub struct BusStats {
    /// True while the NATS connection is up.
    pub connected: AtomicBool,
    pub published: AtomicU64,
    pub received: AtomicU64,
    /// Refused by `try_publish`: the outbox full or NATS away.
    pub dropped: AtomicU64,
}

/// The sending side of the bus: any thread may hold one; it never blocks.
#[derive(Clone, Debug)]
pub struct Publisher {
    out: tokio::sync::mpsc::Sender<(String, Bytes)>,
    /// The counters, shared with the bus thread.
    pub stats: Arc<BusStats>,
}

impl Publisher {
    /// Hands a publication to the bus thread; never blocks. False (and counted) when the
    /// outbox is full or NATS is away.
    pub fn try_publish(&self, subject: String, payload: Bytes) -> bool {
        let sent =
            self.stats.connected.load(Relaxed) && self.out.try_send((subject, payload)).is_ok();
        if !sent {
            self.stats.dropped.fetch_add(1, Relaxed);
        }
        sent
    }

    /// True while the NATS connection is up.
    pub fn connected(&self) -> bool {
        self.stats.connected.load(Relaxed)
    }
}

/// The outbox the bus thread will read: its publisher, and the receiving end to give
/// [`Bus::start`].
pub fn outbox() -> (Publisher, Outbox) {
    let (out, rx) = tokio::sync::mpsc::channel(OUTBOX);
    let stats = Arc::new(BusStats::default());
    (Publisher { out, stats }, Outbox(rx))
}

/// The bus thread's end of the outbox.
#[derive(Debug)]
pub struct Outbox(tokio::sync::mpsc::Receiver<(String, Bytes)>);

/// This node's NATS connection (module docs).
#[derive(Debug)]
pub struct Bus {
    publisher: Publisher,
    stop: Arc<tokio::sync::Notify>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Parses `nats://host:port,…` into the client's addresses.
///
/// # Errors
/// An address the client cannot parse, named.
pub fn parse_urls(urls: &[String]) -> Result<Vec<async_nats::ServerAddr>, String> {
    if urls.is_empty() {
        return Err("nats: no server address".into());
    }
    urls.iter()
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("nats: {u:?} is not a NATS address: {e}"))
        })
        .collect()
}

impl Bus {
    /// Connects to `urls` in the background (the start does not wait for NATS: a node
    /// serves what it can alone until NATS is there), subscribes `subs`, and calls
    /// `ticker` every `period`.
    ///
    /// # Errors
    /// An address that does not parse, or the thread cannot be spawned.
    pub fn start(
        urls: &[String],
        name: String,
        subs: Vec<(String, Handler)>,
        period: Duration,
        ticker: Ticker,
        (publisher, Outbox(rx)): (Publisher, Outbox),
    ) -> Result<Bus, String> {
        let addrs = parse_urls(urls)?;
        let stop = Arc::new(tokio::sync::Notify::new());
        let stats = Arc::clone(&publisher.stats);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("nats: cannot build the bus runtime: {e}"))?;
        let (stop2, stats2) = (Arc::clone(&stop), Arc::clone(&stats));
        let thread = std::thread::Builder::new()
            .name("ruyi-bus".into())
            .spawn(move || {
                runtime.block_on(run(addrs, name, subs, period, ticker, rx, stop2, stats2));
            })
            .map_err(|e| format!("nats: cannot spawn the bus thread: {e}"))?;
        Ok(Bus {
            publisher,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The sending side.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// True while the NATS connection is up.
    pub fn connected(&self) -> bool {
        self.publisher.connected()
    }

    /// Flushes what is queued (for a moment at most) and closes the connection.
    pub fn stop(&self) {
        self.stop.notify_one();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The bus thread's work.
#[allow(clippy::too_many_arguments)] // one call site, each argument a different thing
async fn run(
    addrs: Vec<async_nats::ServerAddr>,
    name: String,
    subs: Vec<(String, Handler)>,
    period: Duration,
    ticker: Ticker,
    mut rx: tokio::sync::mpsc::Receiver<(String, Bytes)>,
    stop: Arc<tokio::sync::Notify>,
    stats: Arc<BusStats>,
) {
    let events = Arc::clone(&stats);
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .no_echo()
        .retry_on_initial_connect()
        // A NATS server that stops answering is noticed within a few seconds (the
        // default, a minute, would let forwarded sends time out meanwhile).
        .ping_interval(Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| Duration::from_millis(100 * attempts.min(10) as u64))
        .event_callback(move |event| {
            let stats = Arc::clone(&events);
            async move {
                match event {
                    async_nats::Event::Connected => {
                        if !stats.connected.swap(true, Relaxed) {
                            log::info!("cluster: connected to NATS");
                        }
                    }
                    async_nats::Event::Disconnected => {
                        if stats.connected.swap(false, Relaxed) {
                            log::warn!("cluster: NATS connection lost; reconnecting");
                        }
                    }
                    other => log::warn!("cluster: NATS: {other}"),
                }
            }
        });
    let client = match options.connect(addrs).await {
        Ok(c) => c,
        Err(e) => {
            log::error!("cluster: cannot use NATS: {e}");
            return;
        }
    };
    for (subject, handler) in subs {
        match client.subscribe(subject.clone()).await {
            Ok(mut sub) => {
                let stats = Arc::clone(&stats);
                tokio::spawn(async move {
                    use futures_util::StreamExt;
                    while let Some(m) = sub.next().await {
                        stats.received.fetch_add(1, Relaxed);
                        handler(m.payload);
                    }
                });
            }
            Err(e) => log::error!("cluster: cannot subscribe to {subject}: {e}"),
        }
    }
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.notified() => break,
            _ = tick.tick() => {
                let up = client.connection_state() == async_nats::connection::State::Connected;
                stats.connected.store(up, Relaxed);
                if up {
                    for (subject, payload) in ticker() {
                        publish(&client, &stats, subject, payload).await;
                    }
                }
            }
            next = rx.recv() => match next {
                Some((subject, payload)) => publish(&client, &stats, subject, payload).await,
                None => break,
            },
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), client.flush()).await;
}

async fn publish(client: &async_nats::Client, stats: &BusStats, subject: String, payload: Bytes) {
    match client.publish(subject, payload).await {
        Ok(()) => {
            stats.published.fetch_add(1, Relaxed);
        }
        Err(e) => {
            stats.dropped.fetch_add(1, Relaxed);
            log::debug!("cluster: publish failed: {e}");
        }
    }
}
