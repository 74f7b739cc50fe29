//! A private `nats-server` for the cluster tests: on a free loopback port, stopped and
//! started again at will (the outage tests), killed when dropped.

use super::{free_addr, skip};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) private NATS server.
pub struct Nats {
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl Nats {
    /// Starts one, or says SKIPPED (fails under `CI=true`) when `nats-server` is missing.
    pub fn start() -> Option<Nats> {
        let found = Command::new("nats-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            skip("no nats-server here; install Debian's nats-server");
            return None;
        }
        let mut nats = Nats {
            addr: free_addr(),
            child: None,
        };
        nats.resume();
        Some(nats)
    }

    /// `nats://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Stops the server (kill -9: clients see the connection drop).
    pub fn pause(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and waits until it answers.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.addr.port().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.addr).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.pause();
    }
}
