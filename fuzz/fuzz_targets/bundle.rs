//! The properties are in `ciba_gate::fuzzing::bundle` (also replayed by tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ciba_gate::fuzzing::bundle::bundle(data));
