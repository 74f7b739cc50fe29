//! A finished login on its loop: the CONNACK, the session's keys, the registry entry and
//! the kicks it causes (PROTOCOL.md §6.4), and the online-status webhook.

use super::session::{Phase, Session};
use super::Gateway;
use crate::registry::{Device, Kick};
use crate::to_loop::{AuthOutcome, ToLoop};
use ruyi_reactor::{ConnId, LoopCtx};

impl Gateway {
    pub(super) fn on_authed(&mut self, lp: &mut LoopCtx<'_, Session>, outcome: AuthOutcome) {
        let Some((mut conn, Session::Im(s))) = lp.conn(outcome.conn) else {
            return; // Closed while logging in: never registered, nothing to undo.
        };
        self.reply_frame(&mut conn, s, outcome.connack);
        let Some(info) = outcome.session else {
            conn.close();
            return;
        };
        s.phase = Phase::Ready;
        s.since = self.uptime_secs();
        self.release_prelogin(s);
        s.version = info.version;
        s.device_flag = info.device_flag;
        s.level = info.level;
        s.cipher = info.cipher;
        conn.set_idle_timeout(Some(self.shared.config.idle_timeout));
        conn.resume_reading();
        self.drain_ws_stream(&mut conn, s);
        let device = Device {
            conn: conn.id(),
            device_flag: info.device_flag,
            level: info.level,
            device_id: info.device_id,
            login_no: 0, // Set by the registry.
            epoch: info.epoch,
        };
        log::debug!(
            "conn={} uid={} logged in (v{}, flag {})",
            conn.id(),
            s.uid,
            s.version,
            s.device_flag
        );
        if let Some(cluster) = self.shared.cluster.get() {
            // The same device on other nodes goes too (`cluster/presence.rs`).
            cluster.presence.logged_in(&s.uid, &device);
        }
        let kicks = self.shared.registry.add(&s.uid, device);
        self.online_webhook(&s.uid, s.device_flag, conn.id(), true);
        for Kick { conn: old, notify } in kicks {
            self.try_kick(old, notify);
        }
    }

    /// Asks `old`'s loop to kick it for a newer login. Never blocks a loop on another
    /// loop's inbox: a refused kick is kept and retried next tick.
    pub(super) fn try_kick(&mut self, old: ConnId, notify: bool) {
        let kick = ToLoop::replaced_by_login(old, notify);
        if let Err(ruyi_reactor::TrySendFailure::Full) = self.loops.for_conn(old).try_post(kick) {
            self.kick_retries.push((old, notify));
        }
    }

    /// The `user.onlinestatus` webhook entry, with counts taken after the change
    /// (HTTP_API.md §9.2). The connection number is unique per server: loop and generation.
    pub(super) fn online_webhook(&self, uid: &str, device_flag: u8, id: ConnId, online: bool) {
        let Some(hooks) = &self.shared.webhooks else {
            return;
        };
        let devices = self.shared.registry.devices(uid);
        let same_flag = devices
            .iter()
            .filter(|d| d.device_flag == device_flag)
            .count();
        let conn_number = ((id.loop_index() as u64) << 32) | u64::from(id.generation());
        hooks.online_status(format!(
            "{uid}-{device_flag}-{}-{conn_number}-{same_flag}-{}",
            u8::from(online),
            devices.len()
        ));
    }
}
