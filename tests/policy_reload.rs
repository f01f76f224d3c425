//! Hot reload: in-place edits, a Kubernetes ConfigMap symlink swap, and a broken
//! policy that must be rejected while the last good one stays in force.
#![allow(clippy::disallowed_methods)] // waits on real processes and sockets in real time

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use ciba_gate::policy::{Effect, PolicyEngine};
use serde_json::json;

fn rego(allow: bool) -> String {
    format!("package ciba_gate\nimport rego.v1\nallow := {allow}\n")
}

fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, path).unwrap();
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_in_place_edits_and_rejects_broken_policy() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("p.rego"), rego(false)).unwrap();
    fs::write(dir.path().join("data.yaml"), "x: 1\n").unwrap();
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let rev0 = engine.revision();
    assert_eq!(engine.decide(&json!({})).effect, Effect::Deny);
    let handle = engine.spawn_reloader(Duration::from_millis(50));

    // In-place edit.
    fs::write(dir.path().join("p.rego"), rego(true)).unwrap();
    wait_for("reload", || engine.reloads() == 1).await;
    assert_eq!(engine.decide(&json!({})).effect, Effect::Allow);
    let rev1 = engine.revision();
    assert_ne!(rev0, rev1);

    // Broken policy: rejected, counted once, the good policy stays.
    // Written whole (rename), so no poll can see a torn, half-written file.
    replace_file(&dir.path().join("p.rego"), "package ciba_gate\nallow if {");
    wait_for("reload failure", || engine.reload_failures() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        engine.reload_failures(),
        1,
        "a broken policy is reported once"
    );
    assert_eq!(engine.revision(), rev1);
    assert_eq!(engine.decide(&json!({})).effect, Effect::Allow);

    // Broken data: rejected as well.
    fs::write(dir.path().join("p.rego"), rego(true)).unwrap();
    fs::write(dir.path().join("data.yaml"), "x: [unclosed\n").unwrap();
    wait_for("second failure", || engine.reload_failures() == 2).await;
    assert_eq!(engine.revision(), rev1);

    // Fixed: picked up again.
    fs::write(dir.path().join("data.yaml"), "x: 2\n").unwrap();
    wait_for("reload after fix", || engine.reloads() == 2).await;
    assert_ne!(engine.revision(), rev1);
    assert_eq!(engine.decide(&json!({})).effect, Effect::Allow);

    // A new file counts as a change; a test file does not.
    let rev2 = engine.revision();
    fs::write(
        dir.path().join("p_test.rego"),
        "package t\nimport rego.v1\ntest_x := true\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(engine.revision(), rev2);
    assert_eq!(engine.reloads(), 2);
    handle.abort();
}

/// Lays out a ConfigMap volume like the kubelet: `..<ts>/` holds the files,
/// `..data -> ..<ts>`, and each visible name is a symlink into `..data/`.
fn configmap_version(root: &Path, ts: &str, files: &[(&str, String)]) {
    let real = root.join(ts);
    fs::create_dir(&real).unwrap();
    for (name, content) in files {
        fs::write(real.join(name), content).unwrap();
    }
}

fn configmap_swap(root: &Path, ts: &str) {
    // Atomic: make `..data_tmp -> ts`, then rename it over `..data`.
    let tmp = root.join("..data_tmp");
    symlink(ts, &tmp).unwrap();
    fs::rename(&tmp, root.join("..data")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_configmap_symlink_swap() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let v1 = [
        ("policy.rego".to_string(), rego(false)),
        ("data.yaml".to_string(), "envs: [dev]\n".to_string()),
    ];
    let v1: Vec<(&str, String)> = v1.iter().map(|(n, c)| (n.as_str(), c.clone())).collect();
    configmap_version(root, "..2026_01_01_00_00_00.000000001", &v1);
    symlink("..2026_01_01_00_00_00.000000001", root.join("..data")).unwrap();
    for name in ["policy.rego", "data.yaml"] {
        symlink(format!("..data/{name}"), root.join(name)).unwrap();
    }

    let engine = PolicyEngine::load(root).unwrap();
    let rev1 = engine.revision();
    assert_eq!(engine.decide(&json!({})).effect, Effect::Deny);

    // Loaded once: the same files under `..data` and `..2026…` are not loaded again
    // (that would make data.yaml conflict with itself).
    let direct = tempfile::tempdir().unwrap();
    fs::write(direct.path().join("policy.rego"), rego(false)).unwrap();
    fs::write(direct.path().join("data.yaml"), "envs: [dev]\n").unwrap();
    assert_eq!(PolicyEngine::load(direct.path()).unwrap().revision(), rev1);

    let handle = engine.spawn_reloader(Duration::from_millis(50));

    // A broken version first: rejected.
    configmap_version(
        root,
        "..2026_01_01_00_01_00.000000002",
        &[
            ("policy.rego", "package ciba_gate\nallow if {".to_string()),
            ("data.yaml", "envs: [dev]\n".to_string()),
        ],
    );
    configmap_swap(root, "..2026_01_01_00_01_00.000000002");
    wait_for("rejected swap", || engine.reload_failures() == 1).await;
    assert_eq!(engine.revision(), rev1);
    assert_eq!(engine.decide(&json!({})).effect, Effect::Deny);

    // A good version: picked up.
    configmap_version(
        root,
        "..2026_01_01_00_02_00.000000003",
        &[
            ("policy.rego", rego(true)),
            ("data.yaml", "envs: [dev, prod]\n".to_string()),
        ],
    );
    configmap_swap(root, "..2026_01_01_00_02_00.000000003");
    fs::remove_dir_all(root.join("..2026_01_01_00_01_00.000000002")).unwrap();
    wait_for("swap reload", || engine.reloads() == 1).await;
    assert_ne!(engine.revision(), rev1);
    assert_eq!(engine.decide(&json!({})).effect, Effect::Allow);
    handle.abort();
}

#[test]
fn readers_never_see_a_half_loaded_policy() {
    // Reload repeatedly while other threads decide: every decision comes from one
    // complete policy set (revision and effect always match).
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("p.rego"), rego(false)).unwrap();
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let deny_rev = engine.revision();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let d = engine.decide(&json!({}));
                    assert_eq!(d.effect == Effect::Deny, d.revision == deny_rev);
                }
            });
        }
        for i in 0..20 {
            fs::write(dir.path().join("p.rego"), rego(i % 2 == 0)).unwrap();
            assert!(engine.reload_now().unwrap());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(engine.reloads(), 20);
}

/// A policy OPA's compiler refuses (each kind of compile error) is refused by hot
/// reload too: the last good policy stays in force and keeps deciding.
#[test]
fn a_reload_opa_would_refuse_keeps_the_last_good_policy() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("p.rego"), rego(true)).unwrap();
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let good = engine.revision();
    for (what, body) in [
        ("unsafe variable", "deny contains x if input.y == 1"),
        ("undefined function", "deny contains \"x\" if nope(1)"),
        ("built-in arity", "allow if startswith(\"a\")"),
        ("function arity", "f(a) := a\nallow if f(1, 2, 3)"),
        (
            "conflicting rule kinds",
            "deny contains \"a\" if input.x\ndeny := {\"b\"} if input.y",
        ),
        ("literal type error", "allow if \"prod\" + 1 > 0"),
    ] {
        fs::write(
            dir.path().join("p.rego"),
            format!("package ciba_gate\nimport rego.v1\n{body}\n"),
        )
        .unwrap();
        let err = engine.reload_now().expect_err(what);
        assert!(!err.to_string().is_empty(), "{what}");
        assert_eq!(engine.revision(), good, "{what}");
        assert_eq!(engine.decide(&json!({})).effect, Effect::Allow, "{what}");
    }
}
