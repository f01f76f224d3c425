//! The properties are in `ciba_gate::fuzzing::json` (also replayed by tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ciba_gate::fuzzing::json::json_strict(data));
