//! Replays the fuzz corpus (`fuzz/corpus/decode`, seeded with valid frames, plus every
//! crash the fuzzer found) through the decoder on every `cargo test`, with the fuzz
//! target's own checks. The fuzzer itself needs cargo-fuzz; this keeps its findings as tests.

#![allow(clippy::unwrap_used)]

use ruyi_proto::{decode_packet, MAX_BODY_BYTES};

#[test]
fn the_fuzz_corpus_decodes_without_panics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        files += 1;
        let Some((&version, mut rest)) = data.split_first() else {
            continue;
        };
        let version = version % 8;
        while let Ok(Some((packet, used))) = decode_packet(rest, version, MAX_BODY_BYTES) {
            assert!(used > 0 && used <= rest.len());
            let mut buf = bytes::BytesMut::new();
            packet.encode(version, &mut buf).unwrap();
            rest = &rest[used..];
        }
    }
    assert!(files >= 10, "the corpus is seeded");
}
