//! Issue 14 item 6: results describe themselves, and failures say so.

use std::net::{SocketAddr, TcpListener};
use std::process::Command;

/// A loopback address with nothing listening (bound, then closed).
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

#[test]
fn a_storm_where_nothing_connects_fails() {
    let addr = closed_port();
    let out = Command::new(env!("CARGO_BIN_EXE_ruyi-load"))
        .args([
            "connect",
            "--conns",
            "3",
            "--hold",
            "0",
            "--connect-timeout",
            "5",
        ])
        .args(["--tcp", &addr.to_string()])
        .output()
        .expect("runs");
    assert!(!out.status.success(), "a storm with no login exited 0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0 of 3 logged in"), "{stderr}");
}

#[test]
fn a_refused_connection_names_the_address() {
    let addr = closed_port();
    let out = Command::new(env!("CARGO_BIN_EXE_ruyi-load"))
        .args(["person", "--pairs", "1", "--warmup", "0", "--seconds", "1"])
        .args(["--tcp", &addr.to_string()])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&addr.to_string()), "{stderr}");
}

#[test]
fn size_help_matches_the_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_ruyi-load"))
        .args(["person", "--help"])
        .output()
        .expect("runs");
    assert!(String::from_utf8_lossy(&out.stdout).contains("at least 24"));
    let small = Command::new(env!("CARGO_BIN_EXE_ruyi-load"))
        .args([
            "person",
            "--size",
            "23",
            "--tcp",
            &closed_port().to_string(),
        ])
        .output()
        .expect("runs");
    assert!(String::from_utf8_lossy(&small.stderr).contains("size >= 24"));
}
