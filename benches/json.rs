//! Cost of the strict parser on the hot path: `json_strict::parse` against plain
//! `serde_json::from_slice::<Value>` on a typical MCP tools/call body (~300 bytes) and
//! on a 64 KiB body (an arguments object with many strings, integers and floats).
//!
//!   cargo bench --bench json -- --warm-up-time 1 --measurement-time 3

use std::hint::black_box;

use ciba_gate::json_strict::{self, Limits};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;

fn tools_call() -> Vec<u8> {
    br##"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"deploy_service","arguments":{"service":"payments","env":"prod","ref":"release-2024.11.3","replicas":3,"canary":0.25,"dry_run":false,"notify":["#deploys","oncall@example.com"],"reason":"roll out the fix for the checkout timeout"},"_meta":{"progressToken":"a1b2c3d4"}}}"##.to_vec()
}

/// A tools/call whose arguments grow to about 64 KiB of mixed records.
fn large_body() -> Vec<u8> {
    let mut records = Vec::new();
    let mut i = 0u64;
    loop {
        let record = serde_json::json!({
            "id": i,
            "name": format!("item-{i}"),
            "path": format!("/srv/data/{i}/file \"{i}\".txt"),
            "score": (i as f64) * 0.125 + 0.5,
            "tags": ["alpha", "beta", format!("t{}", i % 7)],
            "active": i % 2 == 0,
        });
        records.push(record);
        i += 1;
        let body = serde_json::json!({
            "jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "bulk_import", "arguments": {"records": records}},
        });
        let bytes = serde_json::to_vec(&body).expect("serialize");
        if bytes.len() >= 64 * 1024 {
            return bytes;
        }
    }
}

fn bench(c: &mut Criterion) {
    for (label, body) in [("tools_call", tools_call()), ("64KiB", large_body())] {
        assert!(json_strict::parse(&body, Limits::default()).is_ok());
        let mut group = c.benchmark_group(format!("json/{label}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("serde_json", |b| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(&body)).expect("valid"))
        });
        group.bench_function("json_strict", |b| {
            b.iter(|| json_strict::parse(black_box(&body), Limits::default()).expect("valid"))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
