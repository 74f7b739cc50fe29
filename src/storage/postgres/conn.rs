//! Connections to PostgreSQL: where the server is and how to reach it ([`ConnInfo`], with
//! optional TLS), and the bounded pool the read paths share ([`Pool`]).
//!
//! # Connections
//! The writer holds one connection of its own, and the node lease's renewer one
//! (`lease.rs`); the pool threads (auth, channel workers, HTTP) borrow from one [`Pool`] of
//! at most `store_pool_size` connections for the length of one statement. So a server
//! holds at most `store_pool_size + 2` connections, whatever its thread counts. None is ever used on a loop thread (R1).
//!
//! # When PostgreSQL is away
//! A lost connection is dropped when it is next borrowed or returned, and a new one is
//! opened on demand; after a failed attempt, borrowers fail at once (HTTP 503, SENDACK 15)
//! for [`RETRY_AFTER`] instead of each waiting out a connect timeout.
//!
//! # TLS
//! `sslmode=require` (or libpq's `verify-ca` / `verify-full`, which mean the same here)
//! encrypts the link with rustls and **verifies** the server's certificate against the
//! Mozilla roots and `store_ca_file` (`crate::tls`). Unlike libpq's `require`, which
//! encrypts without checking whom it talks to, there is no unverified mode. Without
//! `sslmode`, or with `disable` / `prefer`, the link is plain.

use super::super::{DbError, StorageError};
use postgres::config::SslMode;
use postgres::{Client, NoTls};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connection attempts still waiting for a server that stopped answering, at most: past
/// this, new attempts fail at once instead of adding threads.
const MAX_HANGING: usize = 4;

/// After a failed connection attempt, how long borrowers fail at once.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The PostgreSQL settings besides the URL (`Config::store_*`).
#[derive(Clone, Debug)]
pub struct PgSettings {
    /// Read connections the pool threads share (`store_pool_size`, default 16).
    pub pool_size: usize,
    /// How long one statement may run before PostgreSQL cancels it
    /// (`store_statement_timeout_ms`, default 10 s); also how long a borrower waits for a
    /// free pooled connection.
    pub statement_timeout: Duration,
    /// Extra trusted certificates (PEM) for `sslmode=require` (`store_ca_file`).
    pub ca_file: Option<PathBuf>,
}

impl Default for PgSettings {
    fn default() -> Self {
        PgSettings {
            pool_size: 16,
            statement_timeout: Duration::from_secs(10),
            ca_file: None,
        }
    }
}

/// Where the store is, how to reach it, and its name for logs (no password).
#[derive(Clone)]
pub struct ConnInfo {
    config: postgres::Config,
    /// Set when the URL asks for TLS.
    tls: Option<MakeRustlsConnect>,
    /// Connection attempts under way (see [`ConnInfo::connect`]).
    connecting: Arc<AtomicUsize>,
    /// `host:port/database`, as logs and errors name the store.
    pub name: String,
    pub settings: PgSettings,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl ConnInfo {
    /// Parses `url` (`postgres://user:password@host:port/db`, or key=value pairs).
    ///
    /// # Errors
    /// A URL the client cannot parse, or a CA file that cannot be used; the message never
    /// repeats the password.
    pub fn parse(url: &str, settings: PgSettings) -> Result<ConnInfo, StorageError> {
        let setting = |what: String| StorageError::Database {
            path: PathBuf::from("(the --store URL)"),
            source: DbError::Unavailable(what),
        };
        // libpq's verifying modes: the client crate knows only `require`, and ours always
        // verifies (module docs).
        let url = verifying_sslmode_as_require(url);
        let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| {
            setting(format!("cannot parse the PostgreSQL URL: {e}"))
        })?;
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let name = format!(
            "postgres {}:{port}/{}",
            if hosts.is_empty() {
                "localhost".to_owned()
            } else {
                hosts.join(",")
            },
            config.get_dbname().unwrap_or("(default)")
        );
        let tls = if config.get_ssl_mode() == SslMode::Require {
            let client = crate::tls::client_config(settings.ca_file.as_deref())
                .map_err(|e| setting(format!("store_ca_file: {e}")))?;
            Some(MakeRustlsConnect::new((*client).clone()))
        } else {
            // `prefer` would try TLS first and, with a certificate we cannot verify (a
            // packaged server's self-signed one), fail where libpq connects in plain.
            config.ssl_mode(SslMode::Disable);
            None
        };
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .application_name("ruyi")
            // A link that goes silent (a partition, a moved failover address) is noticed
            // by TCP keepalives rather than after the kernel's retransmissions give up.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            // A request the server's kernel never acknowledges fails after this, rather
            // than after the kernel's retransmissions give up (~15 minutes).
            .tcp_user_timeout(Duration::from_secs(20))
            // SENDACK after a durable commit, whatever the role's or database's default.
            .options(&format!(
                "-c statement_timeout={} -c synchronous_commit=on",
                settings.statement_timeout.as_millis()
            ));
        Ok(ConnInfo {
            config,
            tls,
            connecting: Arc::default(),
            name,
            settings,
        })
    }

    /// A new connection.
    ///
    /// # Errors
    /// The server cannot be reached, refuses the login, or (TLS) fails the certificate check.
    ///
    /// # Bounded
    /// The client's `connect_timeout` covers the TCP connect only; a server (or a proxy, or
    /// a black hole) that accepts and then never answers would hold the caller through
    /// the TLS and login exchange for ever. So the attempt runs on a contained thread
    /// (`fault::CONTAINED`: the client also panics when file descriptors run out) and the
    /// caller waits [`CONNECT_TIMEOUT`] at most; an abandoned attempt ends on its own
    /// (keepalives) and at most [`MAX_HANGING`] may hang at once.
    pub fn connect(&self) -> Result<Client, DbError> {
        if self.connecting.fetch_add(1, Relaxed) >= MAX_HANGING {
            self.connecting.fetch_sub(1, Relaxed);
            return Err(DbError::Unavailable(format!(
                "{}: earlier connection attempts still hang",
                self.name
            )));
        }
        let (done, result) = std::sync::mpsc::sync_channel(1);
        let (config, tls, connecting) = (
            self.config.clone(),
            self.tls.clone(),
            Arc::clone(&self.connecting),
        );
        let attempt = move || {
            let _count = Attempt(connecting);
            let _ = done.send(match tls {
                Some(tls) => config.connect(tls),
                None => config.connect(NoTls),
            });
        };
        let spawned = std::thread::Builder::new()
            .name(format!("{}pg-connect", crate::fault::CONTAINED))
            .spawn(attempt);
        if let Err(e) = spawned {
            // The closure, and with it the count, was dropped.
            return Err(DbError::Unavailable(format!(
                "{}: cannot start a connection attempt: {e}",
                self.name
            )));
        }
        match result.recv_timeout(CONNECT_TIMEOUT) {
            Ok(connected) => Ok(connected?),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(DbError::Unavailable(format!(
                "{}: no answer within {CONNECT_TIMEOUT:?}",
                self.name
            ))),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(DbError::Unavailable(
                format!("{}: the connection attempt failed (see the log)", self.name),
            )),
        }
    }

    pub(super) fn fail(&self) -> impl Fn(DbError) -> StorageError + '_ {
        move |source| StorageError::Database {
            path: PathBuf::from(&self.name),
            source,
        }
    }
}

/// Counts one connection attempt until it ends, however it ends (a panic included).
struct Attempt(Arc<AtomicUsize>);

impl Drop for Attempt {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// `url` with libpq's verifying `sslmode` values (`verify-ca`, `verify-full`), which the
/// client crate does not know, written as `require` (which verifies here: module docs).
/// Only a whole `sslmode=` parameter changes (a URL's query, or a key=value string's
/// words), never the same text inside a password or another value.
fn verifying_sslmode_as_require(url: &str) -> String {
    let rewrite = |param: &str| match param {
        "sslmode=verify-ca" | "sslmode=verify-full" => "sslmode=require".to_owned(),
        other => other.to_owned(),
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return url.to_owned();
        };
        let query: Vec<String> = query.split('&').map(rewrite).collect();
        format!("{base}?{}", query.join("&"))
    } else {
        url.split(' ').map(rewrite).collect::<Vec<_>>().join(" ")
    }
}

/// At most `pool_size` connections, lent for one statement at a time.
pub struct Pool {
    info: ConnInfo,
    state: Mutex<PoolState>,
    /// Signalled when a connection comes back or a slot frees up.
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Client>,
    /// Connections lent, idle, or being opened. Invariant: `open <= pool_size`.
    open: usize,
    last_failure: Option<Instant>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("store", &self.info.name)
            .finish()
    }
}

impl Pool {
    /// A pool for `info`, with one connection opened now so a wrong URL fails the start.
    ///
    /// # Errors
    /// The server cannot be reached.
    pub fn open(info: &ConnInfo) -> Result<Pool, StorageError> {
        let first = info.connect().map_err(info.fail())?;
        Ok(Pool {
            info: info.clone(),
            state: Mutex::new(PoolState {
                idle: vec![first],
                open: 1,
                last_failure: None,
            }),
            returned: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding the lock leaves only counts behind; they stay usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A connection for one statement, waiting at most the statement timeout for one to be
    /// free.
    ///
    /// # Errors
    /// `Unavailable` when none frees up in time or PostgreSQL failed to answer within the
    /// last [`RETRY_AFTER`]; the connect error when a new connection fails.
    pub fn get(&self) -> Result<Lease<'_>, DbError> {
        let deadline = Instant::now() + self.info.settings.statement_timeout;
        // Closing a client talks to its server: never under the lock.
        let mut dead = Vec::new();
        let mut state = self.lock();
        loop {
            while let Some(client) = state.idle.pop() {
                if client.is_closed() {
                    state.open -= 1;
                    dead.push(client);
                    continue;
                }
                return Ok(Lease {
                    pool: self,
                    client: Some(client),
                });
            }
            if state.open < self.info.settings.pool_size.max(1) {
                if state
                    .last_failure
                    .is_some_and(|at| at.elapsed() < RETRY_AFTER)
                {
                    return Err(DbError::Unavailable(format!(
                        "{} is unreachable",
                        self.info.name
                    )));
                }
                state.open += 1;
                drop(state); // never connect under the lock
                let connected = self.info.connect();
                let mut state = self.lock();
                return match connected {
                    Ok(client) => {
                        state.last_failure = None;
                        Ok(Lease {
                            pool: self,
                            client: Some(client),
                        })
                    }
                    Err(e) => {
                        state.open -= 1;
                        state.last_failure = Some(Instant::now());
                        self.returned.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(DbError::Unavailable(format!(
                    "all {} connections to {} are busy",
                    self.info.settings.pool_size, self.info.name
                )));
            }
            state = self
                .returned
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

impl Pool {
    /// Closes every idle connection: after one was found dead, the rest that idled
    /// through the same outage are too, and each would fail one request to find out.
    pub fn discard_idle(&self) {
        let idle = {
            let mut state = self.lock();
            state.open -= state.idle.len();
            std::mem::take(&mut state.idle)
        };
        self.returned.notify_all();
        drop(idle); // closing talks to the server: after the lock
    }
}

/// A borrowed connection; back to the pool on drop (or closed, when it was lost).
pub struct Lease<'a> {
    pool: &'a Pool,
    client: Option<Client>,
}

impl std::fmt::Debug for Lease<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("pool", self.pool).finish()
    }
}

impl std::ops::Deref for Lease<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Invariant: `client` is Some until drop.
        self.client
            .as_ref()
            .expect("a lease holds its client until dropped")
    }
}

impl std::ops::DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a lease holds its client until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let client = self.client.take();
        let dead = {
            let mut state = self.pool.lock();
            match client {
                Some(client) if !client.is_closed() => {
                    state.idle.push(client);
                    None
                }
                dead => {
                    state.open -= 1;
                    dead
                }
            }
        };
        self.pool.returned.notify_one();
        drop(dead); // closing talks to the server: after the lock
    }
}

#[cfg(test)]
mod tests {
    use super::verifying_sslmode_as_require as rewrite;

    #[test]
    fn only_a_whole_sslmode_parameter_is_rewritten() {
        assert_eq!(
            rewrite("postgres://u:p@h/db?sslmode=verify-full&application_name=x"),
            "postgres://u:p@h/db?sslmode=require&application_name=x"
        );
        assert_eq!(
            rewrite("host=h sslmode=verify-ca dbname=d"),
            "host=h sslmode=require dbname=d"
        );
        // The same text inside a password or another value stays as it is.
        let inside = "postgres://u:sslmode=verify-ca@h/db?options=sslmode=verify-full";
        assert_eq!(rewrite(inside), inside);
        assert_eq!(rewrite("postgres://u@h/db"), "postgres://u@h/db");
    }
}
