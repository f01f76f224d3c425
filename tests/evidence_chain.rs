//! Tamper-evident evidence: a real gateway writes a hash-chained, checkpoint-signed
//! log; `ciba-gate evidence verify` accepts it as written and names the first record
//! that was edited, deleted, inserted or reordered, and a forged checkpoint.
#![allow(clippy::disallowed_methods)] // waits on a real writer thread in real time

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use base64::Engine as _;
use ciba_gate::audit::chain::{self, At, Chain, Signer, Tamper, VerifyingKey};
use serde_json::{Value, json};

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
}

/// A fresh Ed25519 key as `openssl genpkey -algorithm ed25519` would write it.
fn signing_key_pem() -> String {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    pem("PRIVATE KEY", doc.as_ref())
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ciba-gate"))
}

/// `evidence verify` of `files` with the key in `key`: (exit code, stdout).
fn verify(files: &[&Path], key: Option<&Path>) -> (i32, String) {
    let mut cmd = bin();
    cmd.args(["evidence", "verify"]).args(files);
    if let Some(k) = key {
        cmd.arg("--key").arg(k);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Runs a real gateway (config file, evidence file, signing key) in front of the demo
/// tools, makes `calls` MCP calls, waits until the writer signed a checkpoint after
/// the last one, and returns the directory, the log and the public key file.
async fn real_log(calls: usize) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("evidence-key.pem"), signing_key_pem()).unwrap();
    let running = support::gateway::with_configured_evidence(
        dir.path(),
        "{sink: file, path: evidence.jsonl, signing_key: {file: evidence-key.pem}, checkpoint_every: 4}",
    )
    .await;
    for i in 0..calls {
        let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                          "params": {"name": "list_deployments", "arguments": {"page": i}}});
        support::post_mcp(running.addr, &body).await;
    }
    let log = dir.path().join("evidence.jsonl");
    let mut last_is_checkpoint = false;
    for _ in 0..100 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let records = text
            .lines()
            .filter(|l| !l.contains("\"checkpoint\""))
            .count();
        last_is_checkpoint = text
            .lines()
            .last()
            .is_some_and(|l| l.contains("\"checkpoint\""));
        if records >= calls && last_is_checkpoint {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last_is_checkpoint, "a checkpoint after the last record");
    let out = bin()
        .args(["evidence", "public-key"])
        .arg(dir.path().join("evidence-key.pem"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let key = dir.path().join("evidence-pub.pem");
    std::fs::write(&key, &out.stdout).unwrap();
    drop(running);
    (dir, log, key)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_log_verifies_and_every_kind_of_tampering_is_named_at_its_record() {
    let (dir, log, key) = real_log(10).await;
    let original = lines(&log);
    let records: Vec<&String> = original
        .iter()
        .filter(|l| !l.contains("\"checkpoint\""))
        .collect();
    assert_eq!(records.len(), 10, "one record per call: {original:#?}");
    let first: Value = serde_json::from_str(&original[0]).unwrap();
    assert_eq!(first["chain"]["seq"], 0);
    assert!(
        original
            .iter()
            .filter(|l| l.contains("\"checkpoint\""))
            .count()
            >= 3
    );

    let (code, out) = verify(&[&log], Some(&key));
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: "), "{out}");
    assert!(
        !out.contains("not covered"),
        "the whole log is covered: {out}"
    );

    let tampered = dir.path().join("tampered.jsonl");
    let check = |lines: &[String], want: &str| {
        write_lines(&tampered, lines);
        let (code, out) = verify(&[&tampered], Some(&key));
        assert_eq!(code, 1, "{want}: {out}");
        assert!(out.contains(want), "expected {want:?} in: {out}");
    };
    let name = tampered.display().to_string();

    // Edited: a forwarded call rewritten as blocked on line 3.
    let mut edited = original.clone();
    edited[2] = edited[2].replace("\"outcome\":\"forwarded\"", "\"outcome\":\"blocked\"");
    assert_ne!(edited[2], original[2]);
    check(&edited, &format!("{name}:3: this record was edited"));

    // Deleted: line 4 removed; noticed at the record that followed it.
    let mut deleted = original.clone();
    deleted.remove(3);
    check(&deleted, &format!("{name}:4: records 3..4"));

    // Reordered: lines 5 and 6 swapped.
    let mut reordered = original.clone();
    reordered.swap(4, 5);
    check(&reordered, &format!("{name}:5: record 4 of chain"));
    check(&reordered, &format!("is at {name}:6 (reordered)"));
    let mut reordered = original.clone();
    reordered.swap(4, 5);
    reordered.swap(5, 6);
    write_lines(&tampered, &reordered);
    assert_eq!(verify(&[&tampered], Some(&key)).0, 1);

    // Inserted: a record of another chain, or no chain at all.
    let mut inserted = original.clone();
    inserted.insert(
        2,
        r#"{"decision":"allow","tool":"delete_repository"}"#.to_string(),
    );
    check(
        &inserted,
        &format!("{name}:3: not a chained evidence record"),
    );
    let mut duplicated = original.clone();
    duplicated.insert(3, original[1].clone());
    check(&duplicated, &format!("{name}:4: record 1 of chain"));

    // A checkpoint re-signed with another key.
    let cp = original
        .iter()
        .position(|l| l.contains("\"checkpoint\""))
        .unwrap();
    let mut forged = original.clone();
    let mut v: Value = serde_json::from_str(&forged[cp]).unwrap();
    v["checkpoint"]["signature"] =
        json!(base64::engine::general_purpose::STANDARD.encode([7u8; 64]));
    forged[cp] = serde_json::to_string(&v).unwrap();
    write_lines(&tampered, &forged);
    let (code, out) = verify(&[&tampered], Some(&key));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("checkpoint's signature does not verify") || out.contains("was edited"),
        "{out}"
    );
    let other_key = dir.path().join("other-pub.pem");
    let other = Signer::from_pem(signing_key_pem().as_bytes()).unwrap();
    std::fs::write(&other_key, other.public_key_pem()).unwrap();
    let (code, out) = verify(&[&log], Some(&other_key));
    assert_eq!(code, 1, "a checkpoint of another key: {out}");
    assert!(out.contains("signature does not verify"), "{out}");

    // A cut-off tail after the last checkpoint is not detectable by the chain: verify
    // says how much is not covered instead of claiming the log is whole.
    let mut cut = original.clone();
    while cut.last().is_some_and(|l| l.contains("\"checkpoint\"")) {
        cut.pop();
    }
    write_lines(&tampered, &cut);
    let (code, out) = verify(&[&tampered], Some(&key));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("not covered"), "{out}");

    // Split across two files (rotation): the chain continues.
    let split = original.len() / 2;
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    write_lines(&a, &original[..split]);
    write_lines(&b, &original[split..]);
    let (code, out) = verify(&[&a, &b], Some(&key));
    assert_eq!(code, 0, "{out}");
    let (code, _) = verify(&[&b, &a], Some(&key));
    assert_eq!(code, 1, "files out of order");
}

/// The library check, line by line: the same verdicts without the binary.
#[test]
fn the_chain_names_the_first_broken_record() {
    let pem = signing_key_pem();
    let signer = Signer::from_pem(pem.as_bytes()).unwrap();
    let key = VerifyingKey::from_pem(signer.public_key_pem().as_bytes()).unwrap();
    let mut chain = Chain::new(Some(signer), 3);
    let mut lines = Vec::new();
    for i in 0..7 {
        let mut line = serde_json::to_vec(&json!({"n": i})).unwrap();
        chain.seal(&mut line);
        lines.push(String::from_utf8(line).unwrap());
        if chain.checkpoint_due() {
            lines.push(
                String::from_utf8(chain.checkpoint("2026-12-02T00:00:00Z").unwrap()).unwrap(),
            );
        }
    }
    lines.push(String::from_utf8(chain.checkpoint("2026-12-02T00:00:01Z").unwrap()).unwrap());
    let at = |i: usize| At {
        file: "log".into(),
        line: i + 1,
    };
    let run = |ls: &[String]| {
        let lines: Vec<(At, &str)> = ls
            .iter()
            .enumerate()
            .map(|(i, l)| (at(i), l.as_str()))
            .collect();
        chain::verify(&lines, Some(&key))
    };
    let v = run(&lines);
    assert_eq!(v.tamper, None);
    assert_eq!((v.records, v.checkpoints, v.chains), (10, 3, 1));
    assert!(v.uncovered.is_empty());

    let mut edited = lines.clone();
    edited[1] = edited[1].replace("\"n\":1", "\"n\":9");
    assert!(matches!(run(&edited).tamper, Some(Tamper::Edited { edited, .. }) if edited == at(1)));

    // A file that begins mid-chain (rotation) is accepted and said to; a chain that
    // appears mid-file at record > 0 is not.
    let mut gone = lines.clone();
    gone.remove(0);
    let v = run(&gone);
    assert_eq!(v.tamper, None);
    assert_eq!(
        v.starts_later.values().copied().collect::<Vec<_>>(),
        vec![1]
    );
    let mut other = Chain::new(None, 3);
    let mut late = Vec::new();
    for i in 0..3 {
        let mut line = serde_json::to_vec(&json!({"m": i})).unwrap();
        other.seal(&mut line);
        late.push(String::from_utf8(line).unwrap());
    }
    let mut mixed = lines.clone();
    mixed.insert(2, late[2].clone());
    assert!(matches!(
        run(&mixed).tamper,
        Some(Tamper::MissingStart { seq: 2, .. })
    ));

    // The checkpoint's time is signed too.
    let last = lines.len() - 1;
    let mut retimed = lines.clone();
    retimed[last] = retimed[last].replace("00:00:01Z", "23:59:59Z");
    assert!(matches!(run(&retimed).tamper, Some(Tamper::BadCheckpoint(a)) if a == at(last)));
}
