//! Decision latency for the bundled policies (`policies/`) over varied inputs:
//! allowed, denied, approval, housekeeping, list phase, varied argument values.
//! Each iteration is one decision (including turning the serde_json input into a
//! regorus value), on the bytecode VM (fast path) and on the interpreter.
//!
//!   cargo bench --bench policy -- --warm-up-time 1 --measurement-time 3
//!
//! Before criterion runs, a plain timing loop prints p50/p99 per path.
#![allow(clippy::disallowed_methods)] // waits on real processes and sockets in real time

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use ciba_gate::policy::testing::{Example, bundled_examples};
use ciba_gate::policy::{Effect, EvalPath, PolicyEngine};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

fn engine() -> PolicyEngine {
    PolicyEngine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
        .expect("bundled policies load")
}

/// The bundled examples plus deploys over every service/environment pair and
/// list-phase lookups, so argument values vary from call to call.
fn inputs() -> Vec<Example> {
    let mut all = bundled_examples().expect("tests/fixtures/bundled_examples.json");
    let base = all
        .iter()
        .find(|e| e.name == "deploy payments prod")
        .expect("deploy example")
        .input
        .clone();
    for service in ["payments", "billing", "checkout", "search", "ledger"] {
        for env in ["dev", "staging", "prod", "qa"] {
            let mut input = base.clone();
            input["tool"]["arguments"] =
                json!({"service": service, "env": env, "ref": format!("{service}-{env}-1")});
            all.push(Example {
                name: format!("deploy {service} {env}"),
                input,
                effect: Effect::Deny, // not checked here
                code: None,
            });
        }
    }
    all
}

fn category(ex: &Example) -> &'static str {
    let phase = ex.input["phase"].as_str().unwrap_or("");
    if phase == "list" {
        "list"
    } else if ex.input["mcp"]["method"].is_string() && ex.input["mcp"]["method"] != "tools/call"
        || ex.input["mcp"]["kind"] == "response"
        || ex.input["request"]["method"] == "GET"
    {
        "housekeeping"
    } else {
        match ex.effect {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::Approve => "approve",
        }
    }
}

fn percentiles(engine: &PolicyEngine, inputs: &[Example], path: EvalPath) {
    let rounds = if path == EvalPath::Rvm { 400 } else { 60 };
    let mut samples = Vec::with_capacity(rounds * inputs.len());
    for _ in 0..rounds {
        for ex in inputs {
            let t = Instant::now();
            black_box(engine.decide_on(black_box(&ex.input), path));
            samples.push(t.elapsed().as_nanos() as u64);
        }
    }
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    println!(
        "{path:?}: {} decisions over {} inputs: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        samples.len(),
        inputs.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
}

fn bench(c: &mut Criterion) {
    let engine = engine();
    // The serving path is the VM only for VM-exact policy sets; asking for the VM on
    // another set measures the interpreter.
    match engine.not_vm_exact() {
        None => println!("serving path: {:?} (VM-exact)", engine.eval_path()),
        Some(why) => println!(
            "serving path: {:?} (not VM-exact: {why})",
            engine.eval_path()
        ),
    }
    let inputs = inputs();
    for path in [EvalPath::Rvm, EvalPath::Interpreter] {
        percentiles(&engine, &inputs, path);
    }

    let mut group = c.benchmark_group("decide");
    for (label, path) in [
        ("rvm", EvalPath::Rvm),
        ("interpreter", EvalPath::Interpreter),
    ] {
        group.bench_function(format!("{label}/varied"), |b| {
            let mut i = 0usize;
            b.iter(|| {
                let ex = &inputs[i % inputs.len()];
                i = i.wrapping_add(1);
                black_box(engine.decide_on(black_box(&ex.input), path))
            })
        });
    }
    for cat in ["allow", "deny", "approve", "housekeeping", "list"] {
        let subset: Vec<&Example> = bundled_examples_cached(&inputs)
            .into_iter()
            .filter(|e| category(e) == cat)
            .collect();
        if subset.is_empty() {
            continue;
        }
        group.bench_function(format!("rvm/{cat}"), |b| {
            let mut i = 0usize;
            b.iter(|| {
                let ex = subset[i % subset.len()];
                i = i.wrapping_add(1);
                black_box(engine.decide_on(black_box(&ex.input), EvalPath::Rvm))
            })
        });
    }
    group.finish();

    c.bench_function("input_to_regorus_value", |b| {
        let input = &inputs[18].input;
        b.iter(|| {
            black_box(regorus::Value::from(black_box(input).clone()));
        })
    });
}

/// The examples with known expected effects (the generated deploys are excluded).
fn bundled_examples_cached(inputs: &[Example]) -> Vec<&Example> {
    let n = bundled_examples()
        .expect("tests/fixtures/bundled_examples.json")
        .len();
    inputs.iter().take(n).collect()
}

criterion_group!(benches, bench);
criterion_main!(benches);
