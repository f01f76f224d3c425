//! Cost of tamper evidence in the writer thread: serialising a typical evidence
//! record, and the same plus sealing it into the hash chain (one SHA-256 over the
//! line). Signing a checkpoint (Ed25519) is measured too; it runs once per
//! `checkpoint_every` records.
//!
//!   cargo bench --bench evidence -- --warm-up-time 1 --measurement-time 3

use std::hint::black_box;

use ciba_gate::audit::EvidenceRecord;
use ciba_gate::audit::chain::{Chain, Signer};
use criterion::{Criterion, criterion_group, criterion_main};

fn record() -> EvidenceRecord {
    EvidenceRecord {
        time: "2026-12-02T19:40:00.123456Z".into(),
        request_id: "c9f3960884ea2f39".into(),
        agent: "billing-agent".into(),
        upstream: "tools".into(),
        http_method: "POST".into(),
        mcp_method: Some("tools/call".into()),
        tool: Some("list_deployments".into()),
        args_fingerprint: Some(
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a".into(),
        ),
        decision: "allow",
        reason: "allowed".into(),
        policy_revision: "9e41d09e920c".into(),
        outcome: "forwarded",
        upstream_status: Some(200),
        latency_ms: 0.319,
        ..EvidenceRecord::default()
    }
}

/// A fixed Ed25519 key (PKCS#8 v1, RFC 8410 example).
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";

fn bench(c: &mut Criterion) {
    let r = record();
    c.bench_function("evidence/serialize", |b| {
        b.iter(|| black_box(serde_json::to_vec(black_box(&r)).unwrap()))
    });
    let mut chain = Chain::new(None, u64::MAX);
    c.bench_function("evidence/serialize_and_chain", |b| {
        b.iter(|| {
            let mut line = serde_json::to_vec(black_box(&r)).unwrap();
            chain.seal(&mut line);
            black_box(line)
        })
    });
    let mut signed = Chain::new(Some(Signer::from_pem(KEY.as_bytes()).unwrap()), 1);
    c.bench_function("evidence/checkpoint", |b| {
        b.iter(|| {
            let mut line = serde_json::to_vec(black_box(&r)).unwrap();
            signed.seal(&mut line);
            black_box(signed.checkpoint("2026-12-02T19:40:00Z"))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
