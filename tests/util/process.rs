//! The real `ruyi` binary as a child process, for tests that kill or restart it.

use super::*;

/// A loopback address on a port that was free a moment ago (for the spawned binary,
/// which cannot report a port it picked itself).
pub fn free_addr() -> SocketAddr {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The real `ruyi` binary on a data directory, killed when dropped so a failing test never
/// leaves a server behind (or holding the test's output pipe).
pub struct RuyiProcess {
    pub child: std::process::Child,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
}

impl RuyiProcess {
    /// Starts the binary (token auth off) and waits until both ports answer.
    pub fn spawn(data: &std::path::Path, tcp: SocketAddr, http: SocketAddr) -> RuyiProcess {
        Self::spawn_with(data, tcp, http, &[])
    }

    /// [`RuyiProcess::spawn`] with extra environment variables.
    pub fn spawn_with(
        data: &std::path::Path,
        tcp: SocketAddr,
        http: SocketAddr,
        env: &[(&str, &str)],
    ) -> RuyiProcess {
        Self::spawn_with_args(data, tcp, http, env, &[])
    }

    /// [`RuyiProcess::spawn_with`] with extra command-line arguments.
    pub fn spawn_with_args(
        data: &std::path::Path,
        tcp: SocketAddr,
        http: SocketAddr,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> RuyiProcess {
        let store = std::fs::read_to_string(data.join("test-store")).unwrap_or_else(|_| {
            // Kept next to the data, so a restart of this "machine" finds its database.
            let store = test_store("proc");
            std::fs::create_dir_all(data).unwrap();
            std::fs::write(data.join("test-store"), &store).unwrap();
            store
        });
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_ruyi"))
            .arg("--data-dir")
            .arg(data)
            .args(["--store", &store])
            .args([
                "--tcp-addr",
                &tcp.to_string(),
                "--http-addr",
                &http.to_string(),
            ])
            .args(["--ws-addr", &free_addr().to_string(), "--no-token-auth"])
            // The crash and disk tests send as fast as SENDACKs come back: the per-connection
            // rate limit would refuse some, which is not what they test.
            .args(["--max-sends-per-sec", "0"])
            .args(args)
            .env("RUST_LOG", "error")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let process = RuyiProcess { child, tcp, http };
        // Up means answering: the listeners are bound (and accept connections into their
        // backlog) before storage is open, so a connect alone proves nothing.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !Self::answers_health(http) || TcpStream::connect(tcp).is_err() {
            assert!(Instant::now() < deadline, "ruyi did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        process
    }

    /// True when `GET /health` on `http` answers 200 within a moment.
    fn answers_health(http: SocketAddr) -> bool {
        let Ok(mut s) = TcpStream::connect(http) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut head = [0u8; 12];
        s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
    }

    /// The exit status once the process has ended, polled every 20 ms; `None` if it still
    /// runs after `within`.
    pub fn exit_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RuyiProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
