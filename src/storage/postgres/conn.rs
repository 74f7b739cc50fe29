//! Connections to PostgreSQL: where the server is and how to reach it ([`ConnInfo`], with
//! optional TLS), and the bounded pool the read paths share ([`Pool`]).
//!
//! # Connections
//! The writer holds one connection of its own; the pool threads (auth, channel workers,
//! HTTP) borrow from one [`Pool`] of at most `store_pool_size` connections for the length
//! of one statement. So a server holds at most `store_pool_size + 1` connections, whatever
//! its thread counts. None is ever used on a loop thread (R1).
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
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
        let url = url
            .replace("sslmode=verify-full", "sslmode=require")
            .replace("sslmode=verify-ca", "sslmode=require");
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
            // SENDACK after a durable commit, whatever the role's or database's default.
            .options(&format!(
                "-c statement_timeout={} -c synchronous_commit=on",
                settings.statement_timeout.as_millis()
            ));
        Ok(ConnInfo {
            config,
            tls,
            name,
            settings,
        })
    }

    /// True when connections are encrypted.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A new connection.
    ///
    /// # Errors
    /// The server cannot be reached, refuses the login, or (TLS) fails the certificate check.
    pub fn connect(&self) -> Result<Client, DbError> {
        Ok(match &self.tls {
            Some(tls) => self.config.connect(tls.clone())?,
            None => self.config.connect(NoTls)?,
        })
    }

    pub(super) fn fail(&self) -> impl Fn(DbError) -> StorageError + '_ {
        move |source| StorageError::Database {
            path: PathBuf::from(&self.name),
            source,
        }
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
        let mut state = self.lock();
        loop {
            while let Some(client) = state.idle.pop() {
                if client.is_closed() {
                    state.open -= 1;
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
        let mut state = self.lock();
        state.open -= state.idle.len();
        state.idle.clear();
        self.returned.notify_all();
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
        let mut state = self.pool.lock();
        match self.client.take() {
            Some(client) if !client.is_closed() => state.idle.push(client),
            _ => state.open -= 1,
        }
        self.pool.returned.notify_one();
    }
}
