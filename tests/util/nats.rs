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
    /// Arguments beyond the port (a cluster's routes).
    extra: Vec<String>,
}

impl Nats {
    /// Starts one, or says SKIPPED (fails under `CI=true`) when `nats-server` is missing.
    pub fn start() -> Option<Nats> {
        Nats::start_with(Vec::new())
    }

    /// Two servers routed to each other as one NATS cluster: a client of either reaches
    /// the clients of both, and stopping one cuts off only its own clients.
    pub fn start_pair() -> Option<(Nats, Nats)> {
        let routes = [free_addr(), free_addr()];
        let args = |me: usize| {
            vec![
                "--cluster_name".into(),
                "ruyi-test".into(),
                "--cluster".into(),
                format!("nats://{}", routes[me]),
                "--routes".into(),
                format!("nats://{}", routes[1 - me]),
                // Clients would otherwise learn the other server and move to it: the
                // cut would heal by itself.
                "--no_advertise".into(),
            ]
        };
        let a = Nats::start_with(args(0))?;
        let b = Nats::start_with(args(1))?;
        Some((a, b))
    }

    fn start_with(extra: Vec<String>) -> Option<Nats> {
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
            extra,
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
            .args(&self.extra)
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
