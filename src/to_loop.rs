//! What the pools (auth, channel, HTTP, pusher, cluster) send to an event loop: the
//! [`ToLoop`] messages and the login result they carry. Below the gateway and the pools
//! alike, so neither imports the other to talk.

use crate::message::{deliver_weight, Delivery, Target};
use bytes::Bytes;
use ruyi_proto::types::reason;
use ruyi_proto::SessionCipher;
use ruyi_reactor::ConnId;
use std::sync::Arc;
use std::time::Duration;

/// How long a kicked connection lives after its DISCONNECT, so the notice reaches the
/// client before the socket closes (PROTOCOL.md §6.4).
pub const KICK_GRACE: Duration = Duration::from_secs(2);

/// Messages from the pools to a loop.
#[derive(Debug)]
pub enum ToLoop {
    /// A login finished (either way).
    Authed(Box<AuthOutcome>),
    /// A ready-made protocol frame for one connection (SENDACK).
    Frame(ConnId, Bytes),
    /// One message for some connections of this loop.
    Deliver(Arc<Delivery>, Vec<Target>),
    /// A newer login or an API call replaced this connection.
    Kick {
        /// Which connection.
        conn: ConnId,
        /// Send DISCONNECT with `code` first.
        notify: bool,
        /// The DISCONNECT's reason code: 12 (kicked) or 19 (banned).
        code: u8,
        /// Reason text of the DISCONNECT.
        reason: String,
        /// Close this long after the notice.
        after: Duration,
    },
    /// The server is stopping: close this loop's client connections over `window`
    /// (`drain.rs`).
    Drain {
        /// The drain window.
        window: Duration,
    },
    /// `/connz`: describe this loop's logged-in connections (only these, when given) on
    /// the sender.
    Connz {
        /// Where the rows go (one slot per loop asked: never blocks).
        reply: crossbeam_channel::Sender<Vec<crate::connz::ConnRow>>,
        /// Only these connections (a `uid` filter), or every one.
        only: Option<Vec<ConnId>>,
    },
    /// An HTTP response; `close` ends the connection after it.
    Http {
        /// Which connection.
        conn: ConnId,
        /// The whole response.
        response: Bytes,
        /// `Connection: close` semantics.
        close: bool,
    },
}

impl ToLoop {
    /// The kick of a connection a newer login of the same device replaced (PROTOCOL.md
    /// §6.4), on this node or another (`cluster/presence.rs`).
    pub fn replaced_by_login(conn: ConnId, notify: bool) -> ToLoop {
        ToLoop::Kick {
            conn,
            notify,
            code: reason::CONNECT_KICK,
            reason: "login in other device".into(),
            after: KICK_GRACE,
        }
    }
}

/// The result of a login, from an auth worker.
#[derive(Debug)]
pub struct AuthOutcome {
    /// The connection that sent CONNECT.
    pub conn: ConnId,
    /// The CONNACK to send (success or refusal).
    pub connack: Bytes,
    /// On success, what the session needs.
    pub session: Option<LoginInfo>,
}

/// What a successful login gives the session.
#[derive(Debug)]
pub struct LoginInfo {
    /// The user.
    pub uid: String,
    /// The client's device flag.
    pub device_flag: u8,
    /// 0 slave, 1 master.
    pub level: u8,
    /// The client's device id.
    pub device_id: String,
    /// Orders logins across a cluster's nodes (0 on a single node).
    pub epoch: i64,
    /// min(client version, 5).
    pub version: u8,
    /// The connection's cipher (None without encryption).
    pub cipher: Option<SessionCipher>,
}

impl ToLoop {
    /// The work this message is for a loop (`Handler::message_weight`).
    pub fn weight(&self) -> usize {
        match self {
            ToLoop::Deliver(d, targets) => deliver_weight(targets.len(), d.message.payload.len()),
            // A walk over the loop's connections: the rest of the turn is for sockets.
            ToLoop::Connz { .. } => CONNZ_WEIGHT,
            _ => 1,
        }
    }
}

/// The weight of a `/connz` walk in a loop's per-turn budget: most of one turn.
const CONNZ_WEIGHT: usize = 512;
