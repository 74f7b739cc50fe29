//! Fuzz the packet decoder: any bytes, any version, must never panic, never claim to use
//! more bytes than it was given, and every packet it returns must encode again.
//!
//! ```text
//! cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run decode -- -max_total_time=60
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;
use ruyi_proto::{decode_packet, MAX_BODY_BYTES};

fuzz_target!(|data: &[u8]| {
    let Some((&version, mut rest)) = data.split_first() else {
        return;
    };
    let version = version % 8;
    while let Ok(Some((packet, used))) = decode_packet(rest, version, MAX_BODY_BYTES) {
        assert!(used > 0 && used <= rest.len());
        let mut buf = bytes::BytesMut::new();
        packet.encode(version, &mut buf).expect("a decoded packet encodes");
        rest = &rest[used..];
    }
});
