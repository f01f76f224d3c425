//! Replays every committed fuzz corpus file (fuzz/corpus/<target>/) through the same
//! property checks the fuzz targets run (`ciba_gate::fuzzing`), on stable Rust, so a
//! regression seed for a fixed finding fails here before any fuzzer runs.

use std::path::Path;

use ciba_gate::fuzzing::TARGETS;

fn replay(target: &str) {
    let (_, check) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a listed target");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds for {target}");
    for file in files {
        let data = std::fs::read(&file).expect("a readable seed");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "{target}: property failed on {}",
            file.display()
        );
    }
}

#[test]
fn every_target_has_a_seed_directory_and_a_fuzz_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, _) in TARGETS {
        assert!(
            root.join("corpus").join(name).is_dir(),
            "fuzz/corpus/{name}"
        );
        assert!(
            root.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{name}.rs"
        );
    }
}

#[test]
fn json_strict_seeds_hold_their_properties() {
    replay("json_strict");
}

#[test]
fn mcp_body_seeds_hold_their_properties() {
    replay("mcp_body");
}

#[test]
fn policy_input_seeds_hold_their_properties() {
    replay("policy_input");
}

#[test]
fn http_route_seeds_hold_their_properties() {
    replay("http_route");
}

#[test]
fn callback_seeds_hold_their_properties() {
    replay("callback");
}

#[test]
fn id_token_seeds_hold_their_properties() {
    replay("id_token");
}

#[test]
fn request_state_seeds_hold_their_properties() {
    replay("request_state");
}

#[test]
fn config_seeds_hold_their_properties() {
    replay("config");
}

#[test]
fn bundle_seeds_hold_their_properties() {
    replay("bundle");
}
