//! Server configuration with the embedded defaults: TCP 5100, HTTP 5001, data in `./data`,
//! token auth and encryption on. Every field is documented where it is declared; the CLI
//! (`main.rs`) maps flags onto it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A value that must never reach a log line: its `Debug` prints `"<redacted>"`, so a
/// `{:?}` of a struct holding it (the whole `Config`, say) is safe to log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for the one place that compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Everything the server needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Binary protocol over TCP (WuKongIM's `addr`, default `0.0.0.0:5100`).
    pub tcp_addr: SocketAddr,
    /// The binary protocol over WebSocket (WuKongIM's `wsAddr`, default `0.0.0.0:5200`).
    pub ws_addr: SocketAddr,
    /// The certificate chain (PEM) of the TLS listeners; with `tls_key`, turns on
    /// WebSocket over TLS on `wss_addr` (`tls/server.rs`). Unset (the default): no TLS.
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// WebSocket over TLS, when a certificate is set (WuKongIM's `wssAddr`, default
    /// `0.0.0.0:5210`).
    pub wss_addr: SocketAddr,
    /// The binary protocol over TLS on TCP, when set (and a certificate is). Default: off.
    pub tls_addr: Option<SocketAddr>,
    /// HTTP API. Default `127.0.0.1:5001`: loopback only, because the API can register
    /// tokens and send as anyone (HTTP_API.md §1.2; the manager token arrives with the
    /// full API).
    pub http_addr: SocketAddr,
    /// The address clients are told to connect to (`/route`): WuKongIM's `external.ip`.
    /// Unset: the listener's own address, or this machine's first non-loopback address
    /// when the listener is on a wildcard address (`advertise.rs`).
    pub external_ip: Option<String>,
    /// The whole TCP address to advertise (`host:port`), when a proxy or NAT publishes
    /// another: WuKongIM's `external.tcpAddr`.
    pub external_tcp_addr: Option<String>,
    /// The whole WebSocket address to advertise (`ws://host:port`): `external.wsAddr`.
    pub external_ws_addr: Option<String>,
    /// A TLS WebSocket address to advertise (`wss://host:port`, served by a proxy in
    /// front): `external.wssAddr`. Unset: none.
    pub external_wss_addr: Option<String>,
    /// Data directory (created if missing): the SQLite database when the store is SQLite,
    /// the token key (`tokens.rs`) and the directory lock in any case.
    pub data_dir: PathBuf,
    /// Where messages and state live: `sqlite` (`<data_dir>/ruyi.db`, the default) or a
    /// `postgres://user:password@host:port/db` URL (`storage/postgres/`).
    pub store: String,
    /// Cluster mode (`cluster/`): the NATS servers (`nats://host:port`) the nodes share a
    /// bus on. Empty (the default): a single node. Needs a PostgreSQL store.
    pub nats: Vec<String>,
    /// The cluster's name, the first token of its NATS subjects, so clusters can share a
    /// NATS. Default `ruyi`.
    pub cluster_name: String,
    /// PostgreSQL only: read connections the pool threads share (the writer holds one
    /// more). Default 16.
    pub store_pool_size: usize,
    /// PostgreSQL only: how long one statement may run before PostgreSQL cancels it, and
    /// how long a read waits for a free pooled connection. Default 10 s.
    pub store_statement_timeout: Duration,
    /// PostgreSQL only: extra trusted certificates (PEM) for `sslmode=require`, beside the
    /// Mozilla roots (the database's own CA).
    pub store_ca_file: Option<PathBuf>,
    /// Check the token registered with `POST /user/token` at CONNECT. On by default (a
    /// secure default; WuKongIM's is off). Turn off only for local tests and benchmarks.
    pub token_auth: bool,
    /// X25519 + AES on binary-protocol connections. On by default; the official SDKs
    /// cannot work without it.
    pub encryption: bool,
    /// Event loops (default: cores).
    pub loops: usize,
    /// Channel workers: permission checks and fan-out planning, one channel per worker.
    pub channel_workers: usize,
    /// Threads answering CONNECT (token check and key exchange). Default: cores. A login
    /// costs two X25519 operations (the fresh server key pair PROTOCOL.md §7 requires, and
    /// the shared secret), 68% of the server's CPU in a connect storm with one worker.
    pub auth_workers: usize,
    /// Threads serving HTTP requests that touch storage.
    pub http_workers: usize,
    /// Idle limit for an authenticated connection. WuKongIM's `connIdleTime` is 3 minutes;
    /// the JS SDK pings every 60 s, so this must stay well above a minute.
    pub idle_timeout: Duration,
    /// Time a new connection has to send CONNECT (WuKongIM: 2 s before data, 4 s in login).
    pub connect_timeout: Duration,
    /// On a graceful stop, client connections are closed spread over this window, so their
    /// reconnects do not arrive elsewhere as one herd (`drain.rs`); `/ready` says 503
    /// meanwhile. 0 closes them all at once. Default 5 s: inside Docker's 10 s stop grace.
    pub shutdown_drain: Duration,
    /// Connections open at most, over every listener. The server lowers it to what the
    /// process's open-file limit can hold (the limit minus 5% for storage, listeners and
    /// webhooks); at the limit new connections wait in the kernel's backlog until some
    /// close (the engine's accept gate). Default 1,000,000: in practice the file limit.
    pub max_connections: usize,
    /// Connections open at most from one source address (an IPv4 address or an IPv6 /64),
    /// over every listener; past it a new connection is reset at accept. 0 = no limit.
    /// Default 1,000: far above any one person's devices, far below the whole server.
    /// Behind a reverse proxy or a carrier NAT many users share an address: raise it there.
    pub max_connections_per_ip: usize,
    /// SENDs per second one connection may make, after a burst of twice that; a SEND over
    /// it gets SENDACK reason 22 (RateLimit) and is not stored. 0 = no limit. Default 200:
    /// no person types that fast, and a bot that does is slowed to it (see `rate.rs`).
    pub max_sends_per_sec: u32,
    /// Time an HTTP request has from its first byte to its last. Past it the connection
    /// gets 408 and is closed, so a client trickling header bytes (slowloris) cannot hold
    /// a connection: the idle timeout alone restarts with every byte. Default 10 s.
    pub http_request_timeout: Duration,
    /// Largest frame body accepted (WuKongIM: 1 MiB).
    pub max_frame_bytes: usize,
    /// Offline queue policy: groups with at most this many subscribers get per-user offline
    /// entries for members with no device online; larger groups rely on channel history, as
    /// in WuKongIM (HTTP_API.md §7).
    pub offline_queue_max_group: usize,
    /// SEND payload bytes per second per connection, after a burst of twice that; over it
    /// the SEND is answered with reason 22 (RateLimit). Counted with the SEND count limit:
    /// 200 sends/s of 700 KB each would otherwise be allowed. Default 2 MiB/s (a photo or
    /// two a second). 0 = no limit.
    pub max_send_bytes_per_sec: u32,
    /// Logins per second from one peer address (IPv4, or IPv6 /64; after a burst of twice
    /// that), refused with CONNACK 22 before any lookup. Default 0 (off): behind a reverse
    /// proxy or carrier NAT every user shares an address, and a limit there would let one
    /// client lock everyone out. Turn it on when clients connect directly.
    pub max_logins_per_sec_per_ip: u32,
    /// Logins per second for one uid (after a burst of twice that), counted once the token
    /// matched and refused with CONNACK 22 before the key exchange. Default 20: an SDK
    /// reconnects every few seconds at most, while a replayed valid token would otherwise
    /// cost two X25519 operations per try without end. Wrong tokens do not count, so
    /// nobody can spend another user's allowance. 0 = no limit.
    pub max_logins_per_sec_per_uid: u32,
    /// Connections one uid may hold at once over all its devices (a new login of the same
    /// device does not count the one it replaces); past it a login gets CONNACK 22.
    /// Default 16: slave devices never replace each other, so without a cap one account
    /// could hold thousands of connections that each cost an encryption per message.
    pub max_conns_per_uid: usize,
    /// Input bytes that connections which have not logged in may hold, over all of them;
    /// past it such connections are closed. Default 64 MiB: 4,096 half-sent logins of the
    /// largest size accepted before login (16 KiB). The decoded CONNECTs waiting for an
    /// auth worker are held to a budget of the same size apart (`auth/queue.rs`).
    pub prelogin_budget_bytes: usize,
    /// Browser origins allowed to call the HTTP API (`origin.rs`), e.g.
    /// `https://admin.example.com`; `*` allows any. Default: none, so a request with an
    /// `Origin` header that is not the API's own is refused with 403 (WuKongIM allows all).
    pub cors_origins: Vec<String>,
    /// Host names, beyond loopback ones, that a loopback-bound HTTP API answers (against
    /// DNS rebinding: `origin.rs`). Default: none.
    pub allowed_hosts: Vec<String>,
    /// Sources (CIDR ranges or addresses) trusted as proxies in front of the TCP and
    /// WebSocket listeners: their PROXY protocol headers (v1, v2) and, on WebSocket
    /// upgrades, `X-Forwarded-For` / `X-Real-Ip` name the client, whose address then
    /// counts for the per-IP limits, logs and `/connz` (`ruyi_reactor::ProxyTrust`,
    /// `forwarded.rs`). Default: none, and a PROXY header from any source closes its
    /// connection: no client can forge its address.
    pub proxy_from: Vec<String>,
    /// The header a trusted WebSocket proxy names the client in: `X-Forwarded-For` (the
    /// default; walked from the right past trusted hops) or `X-Real-Ip`. Only this one is
    /// read: a proxy passes the others through as the client wrote them (`forwarded.rs`).
    pub proxy_client_header: String,
    /// Write JSON-RPC `recv` payloads as base64 always, as WuKongIM v2 and v3 do, instead
    /// of as a JSON value when the bytes are JSON (`jsonrpc.rs`). Default false.
    pub jsonrpc_base64_payloads: bool,
    /// Serve JSON-RPC clients on the WebSocket port (`jsonrpc.rs`). Default true; off, a
    /// connection that opens with `{` is closed as any that does not open with CONNECT.
    pub jsonrpc: bool,
    /// The WAL size past which the checkpointer forces it to start over
    /// (`storage/sqlite/wal.rs`); past twice this the writer waits for a checkpoint before
    /// its next commit, so a checkpointer held back cannot let the WAL grow. Default
    /// 64 MiB: a few seconds of writes at full speed, so restarts are rare, and disk use
    /// stays near the database's own size.
    pub wal_max_bytes: u64,
    /// Entries one user's offline queue holds at most; past it the oldest go (counted in
    /// `ruyi_offline_trimmed_total`) and those messages are found in channel history
    /// instead (`storage/queue.rs`). Default 10,000: a month of a busy user's commands
    /// and messages while away, at about 40 bytes of storage per entry.
    pub offline_queue_max_per_user: u32,
    /// Unacknowledged RECVs kept per connection for retry; past it the oldest leaves the
    /// retry list for the user's offline queue.
    pub max_pending_acks: usize,
    /// Resend an unacknowledged RECV after this long (WuKongIM: 60 s, scan every 30 s).
    pub recv_retry_interval: Duration,
    /// Resends per RECV before giving up (WuKongIM: 5).
    pub recv_retry_limit: u32,
    /// Snowflake node id for message ids (≤ 1023; WuKongIM default 1001).
    pub node_id: u16,
    /// Messages per storage transaction at most (group commit). Large, because a batch that
    /// holds several messages per channel dirties fewer pages per message.
    pub max_commit_batch: usize,
    /// A storage commit starts at least this long after the previous one began, so at
    /// moderate load one fsync serves many messages (see `storage/writer.rs`). Zero commits
    /// as soon as a message arrives.
    pub commit_interval: Duration,
    /// The manager token: when set, every HTTP request must carry it in a `token` header
    /// (HTTP_API.md §1.2). Required when `http_addr` is not a loopback address: the API
    /// can register tokens and send as anyone, so it is never exposed without one.
    pub manager_token: Option<Secret>,
    /// Webhook endpoint (`http://host:port/path`), or `None` for no webhooks. Events are
    /// POSTed to `<url>?event=<name>` (HTTP_API.md §9).
    pub webhook_url: Option<String>,
    /// Extra trusted certificates (PEM) for an `https://` webhook endpoint, beside the
    /// Mozilla roots: an internal CA, or a self-signed endpoint.
    pub webhook_ca_file: Option<PathBuf>,
    /// SQLite `synchronous`: `FULL` (default) survives power loss; `NORMAL` survives a
    /// process crash (`kill -9`) but may lose the last commits on power loss.
    pub sync_full: bool,
}

impl Default for Config {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Config {
            tcp_addr: "0.0.0.0:5100".parse().expect("static address"),
            http_addr: "127.0.0.1:5001".parse().expect("static address"),
            ws_addr: "0.0.0.0:5200".parse().expect("static address"),
            tls_cert: None,
            tls_key: None,
            wss_addr: "0.0.0.0:5210".parse().expect("static address"),
            tls_addr: None,
            data_dir: PathBuf::from("data"),
            external_ip: None,
            external_tcp_addr: None,
            external_ws_addr: None,
            external_wss_addr: None,
            store: "sqlite".to_owned(),
            store_pool_size: 16,
            store_statement_timeout: Duration::from_secs(10),
            store_ca_file: None,
            token_auth: true,
            encryption: true,
            loops: cores,
            channel_workers: cores,
            auth_workers: cores,
            http_workers: 2,
            idle_timeout: Duration::from_secs(180),
            connect_timeout: Duration::from_secs(4),
            shutdown_drain: Duration::from_secs(5),
            max_frame_bytes: ruyi_proto::MAX_BODY_BYTES,
            max_connections: 1_000_000,
            max_connections_per_ip: 1000,
            max_sends_per_sec: 200,
            http_request_timeout: Duration::from_secs(10),
            offline_queue_max_group: 1000,
            offline_queue_max_per_user: 10_000,
            wal_max_bytes: 64 << 20,
            nats: Vec::new(),
            cluster_name: "ruyi".into(),
            cors_origins: Vec::new(),
            prelogin_budget_bytes: 64 << 20,
            max_send_bytes_per_sec: 2 << 20,
            max_logins_per_sec_per_ip: 0,
            max_logins_per_sec_per_uid: 20,
            max_conns_per_uid: 16,
            allowed_hosts: Vec::new(),
            proxy_from: Vec::new(),
            proxy_client_header: "X-Forwarded-For".into(),
            jsonrpc_base64_payloads: false,
            jsonrpc: true,
            max_pending_acks: 256,
            recv_retry_interval: Duration::from_secs(60),
            recv_retry_limit: 5,
            node_id: 1001,
            max_commit_batch: 8192,
            commit_interval: Duration::from_millis(1),
            sync_full: true,
            webhook_url: None,
            webhook_ca_file: None,
            manager_token: None,
        }
    }
}

impl Config {
    /// Checks the settings that can only be wrong together.
    ///
    /// # Errors
    /// A message naming what to change.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.tls_cert, &self.tls_key, self.tls_addr) {
            (Some(_), None, _) => return Err("tls_cert is set without tls_key".into()),
            (None, Some(_), _) => return Err("tls_key is set without tls_cert".into()),
            (None, None, Some(addr)) => {
                return Err(format!(
                    "tls_addr ({addr}) needs a certificate: set tls_cert and tls_key"
                ))
            }
            _ => {}
        }
        if self.shutdown_drain > MAX_SHUTDOWN_DRAIN {
            return Err(format!(
                "shutdown_drain_secs must be at most {} (a stop that long outlives every supervisor's patience)",
                MAX_SHUTDOWN_DRAIN.as_secs()
            ));
        }
        if !self.http_addr.ip().is_loopback()
            && self
                .manager_token
                .as_ref()
                .is_none_or(|t| t.expose().is_empty())
        {
            return Err(format!(
                "the HTTP API on {} would be reachable beyond this machine without a manager token; \
                 set --manager-token or bind it to 127.0.0.1",
                self.http_addr
            ));
        }
        for (name, value, scheme) in [
            ("external_ip", &self.external_ip, ""),
            ("external_tcp_addr", &self.external_tcp_addr, ""),
            ("external_ws_addr", &self.external_ws_addr, "ws://"),
            ("external_wss_addr", &self.external_wss_addr, "wss://"),
        ] {
            let Some(value) = value else { continue };
            let rest = value.strip_prefix(scheme).unwrap_or("");
            // Never advertise a wildcard: no client can dial it.
            let host = match rest.rsplit_once(':') {
                Some((host, _)) if name != "external_ip" => host,
                _ => rest,
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_unspecified())
            {
                return Err(format!("{name} names a wildcard address ({value})"));
            }
            if rest.is_empty() || rest.contains(char::is_whitespace) {
                return Err(format!(
                    "{name} must be a {}host{}",
                    scheme,
                    if name == "external_ip" { "" } else { ":port" }
                ));
            }
        }
        if !(1..=1000).contains(&self.store_pool_size) {
            return Err("store_pool_size must be between 1 and 1000".into());
        }
        if self.store_statement_timeout < Duration::from_millis(100)
            || self.store_statement_timeout > Duration::from_secs(3600)
        {
            return Err("store_statement_timeout_ms must be between 100 and 3600000".into());
        }
        if self.max_sends_per_sec > 1_000_000 {
            // The send bucket counts thousandths of a message in a u32 (src/rate.rs).
            return Err("max_sends_per_sec must be at most 1000000 (0 turns it off)".into());
        }
        if let Some(url) = &self.webhook_url {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .ok_or("webhook_url must start with http:// or https://")?;
            if rest.is_empty() || rest.starts_with('/') {
                return Err("webhook_url has no host".into());
            }
        }
        for (name, value) in [
            ("idle_timeout_secs", self.idle_timeout),
            ("connect_timeout_secs", self.connect_timeout),
            ("http_request_timeout_secs", self.http_request_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("{name} must be greater than zero"));
            }
        }
        if self.max_frame_bytes < 1024 || self.max_frame_bytes > ruyi_proto::MAX_BODY_BYTES {
            return Err(format!(
                "max_frame_bytes must be between 1024 and {} (the protocol's limit)",
                ruyi_proto::MAX_BODY_BYTES
            ));
        }
        if self.prelogin_budget_bytes < 16 << 10 {
            return Err("prelogin_budget_bytes must be at least 16384 (one login)".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections must be greater than zero".into());
        }
        if self.commit_interval > Duration::from_millis(100) {
            // Every SENDACK may wait this long; beyond 100 ms it is a typo, not a policy.
            return Err("commit_interval must be at most 100 ms (100000 us)".into());
        }
        if self.max_logins_per_sec_per_ip > 1_000_000 || self.max_logins_per_sec_per_uid > 1_000_000
        {
            return Err("login limits must be at most 1000000 per second (0 turns one off)".into());
        }
        if self.max_conns_per_uid == 0 {
            return Err("max_conns_per_uid must be greater than zero".into());
        }
        if self.wal_max_bytes < 1 << 20 {
            return Err("wal_max_bytes must be at least 1 MiB (1048576)".into());
        }
        ruyi_reactor::ProxyTrust::parse(&self.proxy_from)
            .map_err(|e| format!("proxy_from: {e}"))?;
        crate::forwarded::ClientHeader::parse(&self.proxy_client_header)?;
        if self.node_id > 1023 {
            return Err("node_id must be at most 1023 (10 bits of the message id)".into());
        }
        if !self.nats.is_empty() {
            if !(self.store.starts_with("postgres://") || self.store.starts_with("postgresql://")) {
                return Err("cluster mode (nats) needs a PostgreSQL store (--store \
                            postgres://...): the nodes share it, and SQLite is one machine's \
                            file"
                    .into());
            }
            crate::cluster::check_name(&self.cluster_name)?;
            crate::cluster::bus::parse_urls(&self.nats)?;
        }
        Ok(())
    }

    /// The settings an operator should see at start, in one line (no secrets: only
    /// whether a manager token and a webhook are set).
    pub fn summary(&self) -> String {
        format!(
            "token auth {} | encryption {} | sync {} | loops {} | \
             manager token {} | webhook {} | cors origins {} | max connections {} ({} per ip, {} per uid) | \
             sends {}/s and {} B/s per connection | logins {}/s per uid, {}/s per ip | \
             offline queue {} per user, groups up to {} | wal {} B",
            on(self.token_auth),
            on(self.encryption),
            if self.sync_full { "FULL" } else { "NORMAL" },
            self.loops,
            if self.manager_token.is_some() { "set" } else { "none" },
            if self.webhook_url.is_some() { "set" } else { "none" },
            self.cors_origins.len(),
            self.max_connections,
            self.max_connections_per_ip,
            self.max_conns_per_uid,
            self.max_sends_per_sec,
            self.max_send_bytes_per_sec,
            self.max_logins_per_sec_per_uid,
            self.max_logins_per_sec_per_ip,
            self.offline_queue_max_per_user,
            self.offline_queue_max_group,
            self.wal_max_bytes,
        )
    }

    /// The SEND rate limit as the token bucket takes it: a burst of two seconds' worth.
    pub fn send_limit(&self) -> crate::rate::SendLimit {
        crate::rate::SendLimit {
            rate: self.max_sends_per_sec,
            burst: self.max_sends_per_sec.saturating_mul(2),
        }
    }

    /// The SEND byte limit as the token bucket takes it: in KiB, a burst of two seconds.
    pub fn send_bytes_limit(&self) -> crate::rate::SendLimit {
        let kib = self.max_send_bytes_per_sec.div_ceil(1024);
        crate::rate::SendLimit {
            rate: kib,
            burst: kib.saturating_mul(2),
        }
    }

    /// A login limit (per address or per uid) as a token bucket: a burst of two seconds.
    pub fn login_limit(per_sec: u32) -> crate::rate::SendLimit {
        crate::rate::SendLimit {
            rate: per_sec,
            burst: per_sec.saturating_mul(2),
        }
    }

    /// A configuration for tests: ephemeral loopback ports, a given data directory.
    pub fn for_test(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            tcp_addr: "127.0.0.1:0".parse().expect("static address"),
            http_addr: "127.0.0.1:0".parse().expect("static address"),
            ws_addr: "127.0.0.1:0".parse().expect("static address"),
            wss_addr: "127.0.0.1:0".parse().expect("static address"),
            data_dir: data_dir.into(),
            loops: 2,
            channel_workers: 2,
            shutdown_drain: Duration::ZERO,
            ..Config::default()
        }
    }
}

/// The longest drain a stop may take (`Config::shutdown_drain`).
pub const MAX_SHUTDOWN_DRAIN: Duration = Duration::from_secs(60);

fn on(yes: bool) -> &'static str {
    if yes {
        "on"
    } else {
        "OFF"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_manager_token() {
        let c = Config {
            manager_token: Some("m-7c21".into()),
            ..Config::default()
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("m-7c21") && shown.contains("redacted"),
            "{shown}"
        );
        let summary = c.summary();
        assert!(
            !summary.contains("m-7c21") && summary.contains("manager token set"),
            "{summary}"
        );
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        for broken in [
            Config {
                idle_timeout: Duration::ZERO,
                ..Config::default()
            },
            Config {
                connect_timeout: Duration::ZERO,
                ..Config::default()
            },
            Config {
                max_frame_bytes: 0,
                ..Config::default()
            },
            Config {
                webhook_url: Some("example.com/hook".into()),
                ..Config::default()
            },
        ] {
            assert!(broken.validate().is_err(), "{broken:?}");
        }
        assert!(Config::default().validate().is_ok());
    }
}
