//! What every pool shares: configuration, the registry, the id generator, the queues into
//! each pool, and the handles to the event loops. Built once in `server.rs`.

use crate::channel::{ChannelJob, SendRequest};
use crate::config::Config;
use crate::http::HttpRequest;
use crate::ids::IdGenerator;
use crate::mailbox::MailSender;
use crate::message::{ChannelKey, Reply, SendOutcome};
use crate::registry::Registry;
use crate::storage::writer::{Job, LaneJob};
use crate::to_loop::ToLoop;
use bytes::{Bytes, BytesMut};
use crossbeam_channel::Sender;
use ruyi_proto::SendackPacket;
use ruyi_reactor::{ConnId, Handles};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Server-wide counters (relaxed atomics; read by metrics).
#[derive(Debug, Default)]
pub struct Counters {
    /// SEND packets accepted from clients.
    pub sends_in: AtomicU64,
    /// Messages committed to storage.
    pub stored: AtomicU64,
    /// RECVs queued to connections.
    pub deliveries: AtomicU64,
    /// RECVs re-sent for lack of a RECVACK.
    pub retries: AtomicU64,
    /// Commands a loop could not post to another loop's full inbox (dropped; recovered by
    /// sync).
    pub dropped_posts: AtomicU64,
    /// SENDs answered with reason 22 (over `max_sends_per_sec`).
    pub rate_limited: AtomicU64,
    /// Unacknowledged RECVs that left a full retry list for the offline queue.
    pub evicted_recvs: AtomicU64,
    /// Connections closed because unauthenticated input passed its server-wide budget.
    pub prelogin_shed: AtomicU64,
    /// Logins refused by a login rate or the connections-per-uid cap.
    pub logins_limited: AtomicU64,
    /// Logins refused for a wrong token, a ban or a failed key exchange.
    pub logins_failed: AtomicU64,
    /// Logins closed unanswered in a storm: the auth queue was full, or the login waited
    /// past `connect_timeout` for a worker (`auth/`).
    pub logins_shed: AtomicU64,
    /// HTTP `/message/send` calls answered with a status other than success.
    pub http_sends_failed: AtomicU64,
    /// HTTP requests refused for a missing or wrong manager token (401).
    pub http_unauthorized: AtomicU64,
}

/// The queues into the pools and everything else the pools share.
#[derive(Debug)]
pub struct Shared {
    /// Configuration.
    pub config: Config,
    /// System uids (HTTP_API.md §4.4), as stored.
    pub system_uids: crate::system_uids::SystemUids,
    /// Where clients are told to connect (`/route`).
    pub advertised: crate::advertise::Advertised,
    /// This node's part of the cluster; unset on a single node (`cluster/`).
    pub cluster: OnceLock<crate::cluster::Cluster>,
    /// uid → connections.
    pub registry: Registry,
    /// Message ids.
    pub ids: IdGenerator,
    /// Channel workers, by [`ChannelKey::shard`].
    pub channels: Vec<MailSender<ChannelJob>>,
    /// Auth workers (`auth/queue.rs`).
    pub auth: crate::auth::AuthQueue,
    /// HTTP workers.
    pub http: Sender<HttpRequest>,
    /// The storage writer.
    pub writer: MailSender<Job>,
    /// Handles to the loops; set once the engine has started.
    pub loops: OnceLock<Handles<ToLoop>>,
    /// Set when the server is stopping; pool threads exit when they see it.
    pub stopping: Arc<AtomicBool>,
    /// Set when a graceful stop begins its drain (`drain.rs`): `/ready` says 503.
    pub draining: AtomicBool,
    /// Counters.
    pub counters: Counters,
    /// Hashes device tokens (`tokens.rs`).
    pub tokens: crate::tokens::TokenHasher,
    /// Login rate per peer address (`Config::max_logins_per_sec_per_ip`).
    pub logins_by_ip: crate::rate::KeyedBuckets,
    /// Login rate per uid (`Config::max_logins_per_sec_per_uid`).
    pub logins_by_uid: crate::rate::KeyedBuckets,
    /// Input bytes held by connections that have not logged in (`gateway/session.rs`).
    pub prelogin_bytes: std::sync::atomic::AtomicUsize,
    /// Whether storage commits (`/ready`).
    pub storage_health: Arc<crate::storage::writer::StorageHealth>,
    /// The offline queue's counters and sync exposure, kept with the storage writer.
    pub queue: Arc<crate::storage::queue::QueueShared>,
    /// Latency histograms (`metrics.rs`).
    pub latency: Arc<crate::metrics::Latencies>,
    /// Rate of the failed-login warning (`auth/`).
    pub login_warnings: crate::logging::LogEvery,
    /// Rate of the warning for logins shed in a storm (`auth/`).
    pub shed_warnings: crate::logging::LogEvery,
    /// Rate of the warning for HTTP requests without the manager token (`http.rs`).
    pub http_auth_warnings: crate::logging::LogEvery,
    /// When the server started (uptime in `/varz`).
    pub started: std::time::Instant,
    /// Webhook producers, when a webhook URL is configured.
    pub webhooks: Option<crate::webhook::Webhooks>,
    /// Set while a `/connz` walks the loops: one at a time (`http/console.rs`).
    pub connz_running: AtomicBool,
}

impl Shared {
    /// The loops' handles.
    ///
    /// # Panics
    /// Before the engine started: the server sets them before any pool thread runs.
    pub fn loops(&self) -> &Handles<ToLoop> {
        self.loops
            .get()
            .expect("loop handles are set before pools start")
    }

    /// Hands a send to the channel worker that owns its channel, or, on a node of a
    /// cluster that does not lead, to the leader (`cluster/relay.rs`). Never blocks (loop
    /// threads call it).
    ///
    /// # Errors
    /// [`Submit::Full`]: the worker's queue is full (try again later); `Closed`: the server
    /// stops; `Unroutable`: no leader can be reached now (answer 15).
    pub fn try_submit_send(&self, request: SendRequest) -> Result<(), Submit> {
        if let Some(relay) = self.relay() {
            return relay.forward_send(request).map_err(|_| Submit::Unroutable);
        }
        match self
            .channel_queue(&request.key)
            .try_send(ChannelJob::Send(Box::new(request)))
        {
            Ok(()) => Ok(()),
            Err(crossbeam_channel::TrySendError::Full(_)) => Err(Submit::Full),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Err(Submit::Closed),
        }
    }

    /// [`Shared::try_submit_send`] that waits while the worker's queue is full (pool
    /// threads only).
    ///
    /// # Errors
    /// `Closed` or `Unroutable`, as there.
    pub fn submit_send(&self, request: SendRequest) -> Result<(), Submit> {
        if let Some(relay) = self.relay() {
            return relay.forward_send(request).map_err(|_| Submit::Unroutable);
        }
        self.channel_queue(&request.key)
            .send(ChannelJob::Send(Box::new(request)))
            .map_err(|_| Submit::Closed)
    }

    /// The relay to the leader, on a cluster node that does not lead now.
    fn relay(&self) -> Option<&crate::cluster::relay::Relay> {
        self.cluster.get().filter(|c| !c.leads()).map(|c| &c.relay)
    }

    /// Hands a requeue or delivered mark to the storage writer, or to the cluster's
    /// leader when another node leads. Never blocks and never refuses (the writer's
    /// lane; the relay's spool); false only while the server stops.
    pub fn send_lane(&self, job: LaneJob) -> bool {
        match self.relay() {
            Some(relay) => {
                relay.forward_lane(&job);
                true
            }
            None => self.writer.send_lane(Job::Lane(job)).is_ok(),
        }
    }

    /// Kicks `uid`'s devices with `device_flag` (-1: all) on this node, with DISCONNECT
    /// (`/user/device_quit`). Pool threads only: it may wait for a loop's inbox.
    pub fn kick_devices(&self, uid: &str, device_flag: i32) {
        for d in self.registry.devices(uid) {
            if device_flag == -1 || i32::from(d.device_flag) == device_flag {
                let kick = ToLoop::Kick {
                    conn: d.conn,
                    notify: true,
                    code: ruyi_proto::types::reason::CONNECT_KICK,
                    reason: String::new(),
                    after: std::time::Duration::from_secs(2),
                };
                let _ = self.loops().for_conn(d.conn).post(kick);
            }
        }
    }

    /// The channel worker owning `key`.
    pub fn channel_queue(&self, key: &ChannelKey) -> &MailSender<ChannelJob> {
        &self.channels[key.shard(self.channels.len())]
    }

    /// True once stop began.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Reports a send's outcome to whoever waits: a SENDACK frame to the sending
    /// connection's loop, or the HTTP caller's channel. Called from pool threads (may block
    /// on a full inbox, which is the intended backpressure).
    pub fn reply(&self, reply: Reply, outcome: SendOutcome) {
        if let Some((conn, frame)) = self.reply_frame(reply, outcome) {
            let _ = self.loops().for_conn(conn).post(ToLoop::Frame(conn, frame));
        }
    }

    /// Answers an HTTP caller at once; for a connection, returns the SENDACK frame and
    /// where it goes, so the caller can batch it with other commands for that loop.
    pub fn reply_frame(&self, reply: Reply, outcome: SendOutcome) -> Option<(ConnId, Bytes)> {
        match reply {
            Reply::Conn {
                conn,
                client_seq,
                flags,
                received,
            } => {
                self.latency.sendack.observe(received.elapsed());
                let mut buf = BytesMut::with_capacity(24);
                SendackPacket {
                    flags,
                    message_id: outcome.message_id,
                    client_seq,
                    message_seq: outcome.message_seq,
                    reason_code: outcome.reason,
                }
                .encode(&mut buf);
                Some((conn, buf.freeze()))
            }
            Reply::Http(tx) => {
                let _ = tx.send(outcome);
                None
            }
            Reply::Remote { node, token, .. } => {
                if let Some(cluster) = self.cluster.get() {
                    cluster.lead.answer(node, token, outcome);
                }
                None
            }
            Reply::None => None,
        }
    }
}

/// Shorthand used by pool constructors.
pub type SharedRef = Arc<Shared>;

/// Why a send was not handed over ([`Shared::try_submit_send`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submit {
    /// The channel worker's queue is full.
    Full,
    /// The server stops.
    Closed,
    /// A cluster node that cannot reach the leader now.
    Unroutable,
}
