//! The user pool: logins. Auth workers take CONNECTs from the loops, check the token
//! against storage, do the key exchange (an X25519 multiplication: CPU the loops should not
//! spend), and post the CONNACK back to the connection's loop, which registers the
//! connection (PROTOCOL.md §6.2).

use crate::message::ChannelKey;
use crate::shared::SharedRef;
use crate::storage::Reader;
use crate::to_loop::{AuthOutcome, LoginInfo, ToLoop};
use bytes::BytesMut;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use ruyi_proto::crypto::server_handshake;
use ruyi_proto::types::{channel_type, reason};
use ruyi_proto::{ConnackPacket, CryptoError, LATEST_VERSION};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod queue;

pub use queue::{AuthQueue, AuthRequest, NotQueued};

/// Polling period for the stop flag while idle.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Runs one auth worker until the server stops.
pub fn run(shared: SharedRef, rx: Receiver<AuthRequest>, reader: Reader) {
    loop {
        let req = match rx.recv_timeout(IDLE_POLL) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) if !shared.is_stopping() => continue,
            Err(_) => return,
        };
        shared.auth.taken(&req);
        if shared.is_stopping() {
            // Its loop closes every client connection as it stops; a storm's queue
            // must not hold the stop up by a login deadline.
            return;
        }
        if Instant::now() >= req.deadline {
            // Its loop has closed the connection, or is about to (the login deadline):
            // a key exchange now would be CPU spent on nobody while later logins wait.
            shed_login(&shared, "waited past the login deadline for an auth worker");
            continue;
        }
        let delay = crate::fault::login_delay();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let outcome = login(&shared, &reader, &req);
        let _ = shared
            .loops()
            .for_conn(req.conn)
            .post(ToLoop::Authed(Box::new(outcome)));
    }
}

/// Counts a login closed unanswered (`ruyi_logins_shed_total`) and says so in the log, at
/// most one line per 10 s: a storm sheds thousands, and a line each would drown the log.
pub fn shed_login(shared: &SharedRef, why: &str) {
    let shed = shared.counters.logins_shed.fetch_add(1, Relaxed) + 1;
    if let Some(held) = shared.shed_warnings.allow() {
        log::warn!(
            "login storm: a login {why}, its connection closed for the client to retry \
             ({held} more since the last such line, {shed} in all)"
        );
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Checks one CONNECT, in the order of PROTOCOL.md §6.2, and builds the CONNACK.
fn login(shared: &SharedRef, reader: &Reader, req: &AuthRequest) -> AuthOutcome {
    let c = &req.connect;
    // The client reads CONNACK with the version it sent; the session speaks min(that, 5).
    let version = c.version.min(LATEST_VERSION);
    let refuse = |code: u8| -> AuthOutcome {
        if matches!(code, reason::AUTH_FAIL | reason::BAN) {
            // What an operator must see (a password-guessing run, a banned user's
            // client retrying), at most one line per 10 s with the count held back.
            let failed = shared.counters.logins_failed.fetch_add(1, Relaxed) + 1;
            if let Some(held) = shared.login_warnings.allow() {
                let from = req.peer.map_or_else(|| "?".to_owned(), |p| p.to_string());
                log::warn!(
                    "login refused for uid {:?} from {from}: reason {code} ({held} more not logged since the last line; {failed} in all)",
                    c.uid
                );
            }
        }
        log::debug!(
            "conn={} uid={} login refused: reason {code}",
            req.conn,
            c.uid
        );
        AuthOutcome {
            conn: req.conn,
            connack: connack(
                version,
                0,
                code,
                String::new(),
                String::new(),
                shared.config.node_id,
            ),
            session: None,
        }
    };
    // The per-address rate (off by default: behind a proxy every user shares one
    // address) comes before any lookup. The per-uid rate comes after the token matched,
    // so nobody can spend another user's allowance with wrong tokens, and before the key
    // exchange, the cost it protects.
    let clock_ms = u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let address = req.peer.map(crate::rate::address_key);
    if address.is_some_and(|a| !shared.logins_by_ip.take(a, clock_ms)) {
        shared.counters.logins_limited.fetch_add(1, Relaxed);
        return refuse(reason::RATE_LIMIT);
    }
    let level = if shared.config.token_auth {
        match reader.device(&c.uid, c.device_flag) {
            Ok(Some(d)) if !d.token.is_empty() && shared.tokens.matches(&d.token, &c.token) => {
                d.level
            }
            Ok(_) => return refuse(reason::AUTH_FAIL),
            Err(e) => {
                log::error!("token lookup for {}: {e}", c.uid);
                return refuse(reason::SYSTEM_ERROR);
            }
        }
    } else {
        0 // Without token auth every device is a slave, as in WuKongIM.
    };
    match reader.channel(&ChannelKey::new(c.uid.clone(), channel_type::PERSON)) {
        Ok(Some(info)) if info.ban => return refuse(reason::BAN),
        Ok(_) => {}
        Err(e) => {
            log::error!("ban lookup for {}: {e}", c.uid);
            return refuse(reason::SYSTEM_ERROR);
        }
    }
    if !shared.logins_by_uid.take(&c.uid, clock_ms) {
        shared.counters.logins_limited.fetch_add(1, Relaxed);
        return refuse(reason::RATE_LIMIT);
    }
    let others = shared
        .registry
        .count_other_devices(&c.uid, c.device_flag, &c.device_id);
    if others >= shared.config.max_conns_per_uid {
        shared.counters.logins_limited.fetch_add(1, Relaxed);
        log::debug!("uid={} refused: {others} connections already", c.uid);
        return refuse(reason::RATE_LIMIT);
    }
    let (cipher, server_key, salt) = if shared.config.encryption && !req.plain {
        match server_handshake(&c.client_key) {
            Ok(hs) => (Some(hs.cipher), hs.server_key, hs.salt),
            Err(CryptoError::EmptyClientKey) => return refuse(reason::CLIENT_KEY_IS_EMPTY),
            Err(CryptoError::Random(e)) => {
                log::error!("no randomness for a key exchange: {e}");
                return refuse(reason::SYSTEM_ERROR);
            }
            Err(_) => return refuse(reason::AUTH_FAIL),
        }
    } else {
        (None, String::new(), String::new())
    };
    // In a cluster, logins on different nodes are ordered by a number from the store, so
    // a login kicks the same device on another node only when it is the newer one.
    let epoch = match shared.cluster.get() {
        Some(cluster) => match reader.next_login_epoch() {
            Ok(e) => {
                cluster.devices.saw_epoch(e);
                e
            }
            Err(e) => {
                log::error!("login epoch for {}: {e}", c.uid);
                return refuse(reason::SYSTEM_ERROR);
            }
        },
        None => 0,
    };
    AuthOutcome {
        conn: req.conn,
        connack: connack(
            version,
            now_ms().saturating_sub(c.client_timestamp),
            reason::SUCCESS,
            server_key,
            salt,
            shared.config.node_id,
        ),
        session: Some(LoginInfo {
            uid: c.uid.clone(),
            device_flag: c.device_flag,
            level,
            device_id: c.device_id.clone(),
            version,
            cipher,
            epoch,
        }),
    }
}

fn connack(
    version: u8,
    time_diff: i64,
    reason_code: u8,
    server_key: String,
    salt: String,
    node_id: u16,
) -> bytes::Bytes {
    let mut buf = BytesMut::with_capacity(128);
    let packet = ConnackPacket {
        server_version: version,
        time_diff,
        reason_code,
        server_key,
        salt,
        node_id: u64::from(node_id),
    };
    // Keys and salts are 44 and 16 bytes: always encodable.
    if let Err(e) = packet.encode(version, &mut buf) {
        log::error!("cannot encode CONNACK: {e}");
    }
    buf.freeze()
}
