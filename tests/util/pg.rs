//! A private PostgreSQL server for the tests that need one of their own
//! (`scripts/pg-test-server.sh`): crash it, restart it, serve TLS.

use super::skip;
use std::process::Command;

/// A private PostgreSQL, stopped and removed when dropped.
pub struct Pg {
    pub dir: String,
    pub admin: String,
}

impl Pg {
    pub fn start() -> Option<Pg> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-test-server.sh");
        let out = Command::new("bash").args([script, "start"]).output().ok()?;
        if !out.status.success() {
            skip(&format!(
                "no PostgreSQL to start here ({}); install Debian's postgresql",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}='")))
                .map(|v| v.trim_end_matches('\'').to_owned())
        };
        Some(Pg {
            admin: value("RUYI_TEST_PG")?,
            dir: value("RUYI_TEST_PG_DIR")?,
        })
    }

    pub fn ctl(&self, what: &str) {
        self.ctl_with(what, &[]);
    }

    pub fn ctl_with(&self, what: &str, args: &[&str]) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-test-server.sh");
        let status = Command::new("bash")
            .args([script, what, &self.dir])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "pg-test-server.sh {what}");
    }

    /// How many connections the servers hold to database `name`.
    pub fn ruyi_connections(&self, name: &str) -> i64 {
        let mut c = postgres::Client::connect(&self.admin, postgres::NoTls).unwrap();
        c.query_one(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'ruyi'",
            &[&name],
        )
        .unwrap()
        .get(0)
    }

    /// A new empty database: its URL.
    pub fn database(&self, name: &str) -> String {
        let mut c = postgres::Client::connect(&self.admin, postgres::NoTls).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        self.admin.replacen("/postgres?", &format!("/{name}?"), 1)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.ctl("stop");
    }
}
