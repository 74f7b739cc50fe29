//! What a JSON-RPC request costs the server when it arrives a few bytes at a time (issue
//! 19): alone in its test binary, since it reads the process's CPU time.

#![allow(clippy::unwrap_used)]

mod util;

use ruyi::ws::{self, client_frame};
use serde_json::json;
use std::io::Write;
use std::time::Duration;
use util::rpc::RpcClient;
use util::*;

#[test]
fn a_request_trickled_in_tiny_frames_is_parsed_once_not_once_per_frame() {
    let server = start("jsonrpc-trickle", |_| {});
    let mut ann = RpcClient::login(&server, "ann");
    let cpu = || {
        let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage fills the struct it is given.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) };
        // SAFETY: initialised by the call above (zeroed before, in any case).
        let u = unsafe { u.assume_init() };
        Duration::new(u.ru_utime.tv_sec as u64, u.ru_utime.tv_usec as u32 * 1000)
            + Duration::new(u.ru_stime.tv_sec as u64, u.ru_stime.tv_usec as u32 * 1000)
    };
    let before = cpu();
    // A ping padded with 512 KiB of an array's elements, then the rest two bytes at a time,
    // each piece a whole text message (the stream runs across messages).
    let mut head = br#"{"id":"t","method":"ping","params":{"pad":["#.to_vec();
    head.extend(std::iter::repeat_n(b"0,".as_slice(), 256 << 10).flatten());
    ann.s
        .write_all(&client_frame(ws::OP_TEXT, true, &head, [1, 2, 3, 4]))
        .unwrap();
    let trickle = std::time::Instant::now();
    for _ in 0..1500 {
        ann.s
            .write_all(&client_frame(ws::OP_TEXT, true, b"0,", [1, 2, 3, 4]))
            .unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let trickle = trickle.elapsed();
    ann.s
        .write_all(&client_frame(ws::OP_TEXT, true, b"0]}}", [1, 2, 3, 4]))
        .unwrap();
    assert_eq!(ann.next(), json!({"id": "t", "result": null}));
    let spent = cpu() - before;
    // Parsing the buffer again per read kept the loop busy the whole trickle long.
    assert!(
        spent < trickle / 3,
        "{spent:?} of CPU for one request trickled over {trickle:?}"
    );
    ann.write(&json!({"id": "p", "method": "ping"}));
    assert_eq!(ann.next()["id"], "p");
}
