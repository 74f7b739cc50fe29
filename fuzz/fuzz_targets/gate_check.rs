//! A target that crashes on its first input, for one purpose: proving that
//! `scripts/fuzz.sh` fails when a target crashes (`.ci/run` runs it and expects failure).
//! Never part of a real fuzzing run.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|_data: &[u8]| {
    panic!("gate_check: a crash the fuzz script must report");
});
