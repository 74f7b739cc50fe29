//! The channel pool: one worker owns each channel (sharded by [`ChannelKey::shard`]), so a
//! channel's messages are checked, planned and handed to storage in arrival order.
//!
//! For each send: the sender checks (PROTOCOL.md §9.1–9.2: send ban, channel ban and
//! disband, blacklist, subscriber, whitelist), then the fan-out plan: every connection of
//! every recipient except the sending one. Storage assigns the seq and the recipients'
//! queue slots at commit; the pusher delivers.
//!
//! Channel metadata is cached per worker and dropped on [`ChannelJob::Invalidate`], which
//! the HTTP API sends to every worker after it changes a channel.

use crate::mailbox::Mailbox;
use crate::message::{ChannelKey, Message, Planned, Reply, SendOutcome, Target};
use crate::shared::SharedRef;
use crate::storage::writer::Job;
use crate::storage::{ChannelInfo, Reader};
use bytes::Bytes;
use crossbeam_channel::RecvTimeoutError;
use ruyi_proto::types::{channel_type, reason};
use ruyi_proto::Flags;
use ruyi_reactor::ConnId;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A send that reached the channel pool.
#[derive(Debug)]
pub struct SendRequest {
    /// The sender.
    pub from_uid: String,
    /// The sending connection (excluded from delivery), if a client sent it.
    pub from_conn: Option<ConnId>,
    /// Storage key (combined id for person chats).
    pub key: ChannelKey,
    /// The channel id as the sender addressed it.
    pub addressed_to: String,
    /// The client's message number.
    pub client_msg_no: String,
    /// Header flags (DUP cleared).
    pub flags: Flags,
    /// Setting byte.
    pub setting: u8,
    /// Seconds until expiry.
    pub expire: u32,
    /// Topic.
    pub topic: String,
    /// The plain payload.
    pub payload: Bytes,
    /// An API send: the sender checks are skipped (ban and disband still apply).
    pub system: bool,
    /// Explicit recipients (API sends to a subscriber list, a Temp channel); `None` means
    /// the channel's own members.
    pub recipients: Option<Arc<[String]>>,
    /// Store under this channel instead of `key` (command messages: `X____cmd`); `key`
    /// still decides permissions and recipients.
    pub store_as: Option<ChannelKey>,
    /// Who waits for the outcome.
    pub reply: Reply,
}

/// Work for a channel worker.
#[derive(Debug)]
pub enum ChannelJob {
    /// A message to check and plan.
    Send(Box<SendRequest>),
    /// Channel metadata changed: drop the cached copy (or all, with `None`).
    Invalidate(Option<ChannelKey>),
}

/// Polling period for the stop flag while idle.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Channel metadata entries cached per worker before the cache is cleared. Bounds memory
/// with many person channels; a reload is one indexed query.
const CACHE_LIMIT: usize = 100_000;

struct Worker {
    shared: SharedRef,
    reader: Reader,
    cache: HashMap<ChannelKey, Option<Arc<ChannelInfo>>>,
}

/// Runs one channel worker until the server stops.
pub fn run(shared: SharedRef, rx: Mailbox<ChannelJob>, reader: Reader) {
    let mut w = Worker {
        shared,
        reader,
        cache: HashMap::new(),
    };
    loop {
        let job = match rx.recv_timeout(IDLE_POLL) {
            Ok(j) => j,
            Err(RecvTimeoutError::Timeout) if !w.shared.is_stopping() => continue,
            Err(_) => return,
        };
        match job {
            ChannelJob::Send(req) => w.send(*req),
            ChannelJob::Invalidate(Some(key)) => {
                w.cache.remove(&key);
            }
            ChannelJob::Invalidate(None) => w.cache.clear(),
        }
    }
}

impl Worker {
    fn info(&mut self, key: &ChannelKey) -> Result<Option<Arc<ChannelInfo>>, u8> {
        if let Some(hit) = self.cache.get(key) {
            return Ok(hit.clone());
        }
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        match self.reader.channel(key) {
            Ok(info) => {
                let info = info.map(Arc::new);
                self.cache.insert(key.clone(), info.clone());
                Ok(info)
            }
            Err(e) => {
                log::error!("channel lookup {key:?}: {e}");
                Err(reason::SYSTEM_ERROR)
            }
        }
    }

    fn person_info(&mut self, uid: &str) -> Result<Option<Arc<ChannelInfo>>, u8> {
        self.info(&ChannelKey::new(uid, channel_type::PERSON))
    }

    /// The sender checks; `Ok(recipients)` or the refusal's reason code.
    fn check(&mut self, req: &SendRequest) -> Result<Arc<[String]>, u8> {
        if let Some(list) = &req.recipients {
            return Ok(Arc::clone(list)); // An API send to a subscriber list.
        }
        // The API's own sends, and system uids' (HTTP_API.md §4.4), skip the checks.
        let system = req.system || self.shared.system_uids.contains(&req.from_uid);
        if !system {
            if let Some(me) = self.person_info(&req.from_uid)? {
                if me.ban {
                    return Err(reason::BAN); // Its sessions are being closed too.
                }
                if me.send_ban {
                    return Err(reason::SEND_BAN);
                }
            }
        }
        if req.key.channel_type == channel_type::PERSON {
            let peer = req.addressed_to.as_str();
            // A system uid as the recipient always accepts (PROTOCOL.md §9.2).
            if !system && !self.shared.system_uids.contains(peer) {
                if let Some(peer_info) = self.person_info(peer)? {
                    if contains(&peer_info.denylist, &req.from_uid) {
                        return Err(reason::IN_BLACKLIST);
                    }
                }
            }
            let mut recipients = vec![req.from_uid.clone()];
            if peer != req.from_uid {
                recipients.push(peer.to_owned());
            }
            return Ok(recipients.into());
        }
        let Some(info) = self.info(&req.key)? else {
            // A group nobody created has no subscribers (WuKongIM answers the same).
            return Err(if system {
                reason::CHANNEL_NOT_EXIST
            } else {
                reason::SUBSCRIBER_NOT_EXIST
            });
        };
        if info.ban {
            return Err(reason::BAN);
        }
        if info.disband {
            return Err(reason::DISBAND);
        }
        if !system && req.key.channel_type != channel_type::INFO {
            if contains(&info.denylist, &req.from_uid) {
                return Err(reason::IN_BLACKLIST);
            }
            if !contains(&info.subscribers, &req.from_uid) {
                return Err(reason::SUBSCRIBER_NOT_EXIST);
            }
            if !info.allowlist.is_empty() && !contains(&info.allowlist, &req.from_uid) {
                return Err(reason::NOT_IN_WHITELIST);
            }
        }
        Ok(Arc::clone(&info.subscribers))
    }

    fn send(&mut self, req: SendRequest) {
        let message_id = self.shared.ids.next();
        let recipients = match self.check(&req) {
            // Messages are never pushed to system uids (HTTP_API.md §4.4).
            Ok(r) => self.shared.system_uids.without(&r).map_or(r, Into::into),
            Err(code) => {
                log::debug!(
                    "uid={} send to {:?} refused: reason {code}",
                    req.from_uid,
                    req.key
                );
                let outcome = SendOutcome {
                    message_id,
                    message_seq: 0,
                    reason: code,
                };
                self.shared.reply(req.reply, outcome);
                return;
            }
        };
        // Who gets a RECV and who a queue entry is the storage writer's decision, made at
        // commit against the registry as it is then (`storage::plan`).
        let config = &self.shared.config;
        let queued = req.key.channel_type == channel_type::PERSON
            || recipients.len() <= config.offline_queue_max_group;
        // Tick before the lookup: a device this lookup misses has `login_no >= push_no`
        // (registry invariants).
        let push_no = self.shared.registry.clock.tick();
        let mut targets = Vec::new();
        let mut conns = Vec::new();
        for (index, uid) in recipients.iter().enumerate() {
            conns.clear();
            self.shared.registry.conns_of(uid, &mut conns);
            targets.extend(
                conns
                    .iter()
                    .filter(|&&c| Some(c) != req.from_conn)
                    .map(|&conn| Target {
                        conn,
                        recipient: index as u32,
                    }),
            );
        }
        if let Some(cluster) = self.shared.cluster.get() {
            cluster.plan_remote(&recipients, &mut targets);
        }
        // msg.offline: recipients other than the sender with no master-level device online
        // (PROTOCOL.md §9.5); only computed when someone listens.
        let webhook_offline = if self.shared.webhooks.is_some() {
            recipients
                .iter()
                .filter(|uid| **uid != req.from_uid)
                .filter(|uid| {
                    !self
                        .shared
                        .registry
                        .devices(uid)
                        .iter()
                        .any(|d| d.level == 1)
                })
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let planned = Planned {
            message: Message {
                message_id,
                message_seq: 0,
                client_msg_no: req.client_msg_no,
                from_uid: req.from_uid,
                channel: req.store_as.unwrap_or(req.key),
                addressed_to: req.addressed_to,
                timestamp: 0,
                setting: req.setting,
                flags: req.flags,
                expire: req.expire,
                topic: req.topic,
                payload: req.payload,
            },
            targets,
            push_no,
            recipients,
            queued,
            command: req.system && req.flags.sync_once(),
            webhook_offline,
            reply: req.reply,
        };
        // Blocking here is the backpressure from storage to the channel pool; this is not
        // a loop thread.
        if let Err(e) = self.shared.writer.send(Job::Message(Box::new(planned))) {
            let Job::Message(p) = e.0 else { return };
            let outcome = SendOutcome {
                message_id,
                message_seq: 0,
                reason: reason::SYSTEM_ERROR,
            };
            self.shared.reply(p.reply, outcome);
        }
    }
}

fn contains(sorted: &[String], uid: &str) -> bool {
    sorted.binary_search_by(|s| s.as_str().cmp(uid)).is_ok()
}
