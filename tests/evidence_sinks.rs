//! The evidence file as operations meet it: size-based rotation that keeps the hash
//! chain across files, reopening after an external rotation, write failures that are
//! counted and, with `evidence.required`, refuse calls instead of losing the trail.
#![allow(clippy::disallowed_methods)] // waits on a real writer thread in real time

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ciba_gate::app::Running;
use serde_json::{Value, json};

async fn gateway(dir: &Path, evidence: &str) -> Running {
    support::gateway::with_configured_evidence(dir, evidence).await
}

async fn list_deployments(running: &Running, id: i64) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                      "params": {"name": "list_deployments", "arguments": {"page": id}}});
    support::post_mcp(running.addr, &body).await
}

fn records(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"decision\""))
        .count()
}

fn numbered(path: &Path, i: usize) -> PathBuf {
    PathBuf::from(format!("{}.{i}", path.display()))
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The value of an unlabelled metric on the admin listener's `/metrics`.
async fn metric(running: &Running, name: &str) -> f64 {
    let metrics = reqwest::get(format!("http://{}/metrics", running.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

fn verify(files: &[PathBuf]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ciba-gate"))
        .args(["evidence", "verify"])
        .args(files)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_size_keeps_n_files_and_the_chain_runs_through_them() {
    let dir = tempfile::tempdir().unwrap();
    let running = gateway(
        dir.path(),
        "{sink: file, path: evidence.jsonl, max_bytes: 4096, keep: 2}",
    )
    .await;
    let log = dir.path().join("evidence.jsonl");
    for i in 0..60 {
        list_deployments(&running, i).await;
    }
    wait_for("a rotated file", || numbered(&log, 2).exists()).await;
    // Until the writer is done: the current file stops growing.
    let mut last = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        if now == last {
            break;
        }
        last = now;
    }
    assert!(!numbered(&log, 3).exists(), "keep: 2");
    for f in [numbered(&log, 2), numbered(&log, 1)] {
        let size = std::fs::metadata(&f).unwrap().len();
        assert!(size <= 4096, "{} is {size} bytes", f.display());
    }
    // Oldest first, the chain holds across the files; the first kept file starts
    // mid-chain (its predecessors rotated away), which verify says.
    let (code, out) = verify(&[numbered(&log, 2), numbered(&log, 1), log.clone()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("starts at record"), "{out}");
    let (code, out) = verify(&[numbered(&log, 1), numbered(&log, 2), log.clone()]);
    assert_eq!(code, 1, "out of order: {out}");
    drop(running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_rotation_and_a_reopen_continue_the_chain_in_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let running = gateway(dir.path(), "{sink: file, path: evidence.jsonl}").await;
    let log = dir.path().join("evidence.jsonl");
    for i in 0..3 {
        list_deployments(&running, i).await;
    }
    wait_for("3 records", || records(&log) == 3).await;
    let old = dir.path().join("evidence.jsonl.old");
    std::fs::rename(&log, &old).unwrap();
    // What SIGHUP does.
    running.gateway.evidence.request_reopen();
    for i in 3..5 {
        list_deployments(&running, i).await;
    }
    wait_for("2 records in the new file", || records(&log) == 2).await;
    assert_eq!(records(&old), 3);
    let (code, out) = verify(&[old.clone(), log.clone()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: 5 records in 1 chain"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_cannot_write_is_counted_and_required_evidence_refuses_calls() {
    let dir = tempfile::tempdir().unwrap();
    // /dev/full: every write fails with ENOSPC.
    let running = gateway(dir.path(), "{sink: file, path: /dev/full, required: all}").await;
    let first = list_deployments(&running, 1).await;
    assert!(first["result"].is_object(), "nothing failed yet: {first}");
    let gw = running.gateway.clone();
    wait_for("the sink to report failure", || gw.evidence.failing()).await;
    let second = list_deployments(&running, 2).await;
    assert_eq!(
        second["result"]["_meta"]["ciba-gate/reason"], "evidence_unavailable",
        "{second}"
    );
    assert_ne!(
        metric(&running, "ciba_gate_evidence_write_failed_total").await,
        0.0
    );
    drop(Arc::clone(&gw));

    // Not required (the default): calls keep flowing, and the loss is counted.
    let dir = tempfile::tempdir().unwrap();
    let running = gateway(dir.path(), "{sink: file, path: /dev/full}").await;
    list_deployments(&running, 1).await;
    let gw = running.gateway.clone();
    wait_for("the sink to report failure", || gw.evidence.failing()).await;
    let again = list_deployments(&running, 2).await;
    assert!(again["result"]["content"].is_array(), "{again}");
}

// --- sink: http -----------------------------------------------------------------------

/// One upload: its `Content-Encoding` and each record's JSON text.
type Batch = (Option<String>, Vec<String>);

/// A decision-log collector: keeps each batch (gunzipped, parsed) with its
/// `Content-Encoding`; answers 503 to the first `refuse` requests.
#[derive(Clone, Default)]
struct Collector {
    /// Each batch: its encoding and its records, as the exact JSON text of each.
    batches: Arc<std::sync::Mutex<Vec<Batch>>>,
    refuse: Arc<std::sync::atomic::AtomicUsize>,
    tries: Arc<std::sync::atomic::AtomicUsize>,
}

impl Collector {
    async fn start(refuse: usize) -> (String, Collector) {
        use http_body_util::BodyExt;
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/logs", listener.local_addr().unwrap());
        let c = Collector::default();
        c.refuse.store(refuse, Ordering::SeqCst);
        let seen = c.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            async move {
                                seen.tries.fetch_add(1, Ordering::SeqCst);
                                let encoding = req
                                    .headers()
                                    .get("content-encoding")
                                    .map(|v| v.to_str().unwrap().to_string());
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let refuse = seen.refuse.load(Ordering::SeqCst);
                                let status = if refuse > 0 {
                                    seen.refuse.store(refuse - 1, Ordering::SeqCst);
                                    503
                                } else {
                                    let mut json = String::new();
                                    std::io::Read::read_to_string(
                                        &mut flate2::read::GzDecoder::new(&body[..]),
                                        &mut json,
                                    )
                                    .unwrap();
                                    let raw: Vec<Box<serde_json::value::RawValue>> =
                                        serde_json::from_str(&json).unwrap();
                                    let texts = raw.iter().map(|r| r.get().to_string()).collect();
                                    seen.batches.lock().unwrap().push((encoding, texts));
                                    200
                                };
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
        (url, c)
    }

    /// Every record received, in order (checkpoints included), as sent.
    fn texts(&self) -> Vec<String> {
        self.batches
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, b)| b.clone())
            .collect()
    }

    fn lines(&self) -> Vec<Value> {
        self.texts()
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect()
    }
}

/// Records go to the collector in gzip-compressed JSON-array batches (OPA's
/// decision-log upload format), hash-chained: the received lines, written to a file,
/// pass `ciba-gate evidence verify`. A collector that refuses at first gets the batch
/// again (retry with backoff), and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_posted_to_a_collector_in_gzip_batches_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (url, collector) = Collector::start(2).await;
    let running = gateway(
        dir.path(),
        &format!("{{sink: http, http: {{url: \"{url}\"}}}}"),
    )
    .await;
    for id in 1..=3 {
        let a = list_deployments(&running, id).await;
        assert!(a["result"].is_object(), "{a}");
    }
    let c = collector.clone();
    wait_for("three records at the collector", || {
        c.lines()
            .iter()
            .filter(|l| l.get("decision").is_some())
            .count()
            == 3
    })
    .await;
    assert!(
        collector.tries.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "the refused batch was sent again"
    );
    let batches = collector.batches.lock().unwrap().clone();
    assert!(
        batches
            .iter()
            .all(|(enc, _)| enc.as_deref() == Some("gzip"))
    );
    let records: Vec<Value> = collector
        .lines()
        .into_iter()
        .filter(|l| l.get("decision").is_some())
        .collect();
    assert!(records.iter().all(|r| r["tool"] == "list_deployments"));

    // The chain as received verifies.
    let file = dir.path().join("received.jsonl");
    let text: String = collector.texts().iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, text).unwrap();
    let (code, out) = verify(&[file]);
    assert_eq!(code, 0, "{out}");
}

/// A collector that is gone: batches are lost and counted, the sink reports failing,
/// and with `evidence.required: all` calls are refused until it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_gone_makes_required_evidence_refuse_calls() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let running = gateway(
        dir.path(),
        &format!(
            "{{sink: http, required: all, http: {{url: \"http://127.0.0.1:{port}/logs\", timeout: 1s, retries: 0}}}}"
        ),
    )
    .await;
    list_deployments(&running, 1).await;
    let gw = running.gateway.clone();
    wait_for("the sink to report failure", || gw.evidence.failing()).await;
    let refused = list_deployments(&running, 2).await;
    assert_eq!(
        refused["result"]["_meta"]["ciba-gate/reason"], "evidence_unavailable",
        "{refused}"
    );
    assert_ne!(
        metric(&running, "ciba_gate_evidence_write_failed_total").await,
        0.0
    );
}

// --- sink: otlp -----------------------------------------------------------------------

/// An OpenTelemetry collector's OTLP/HTTP logs receiver: decodes each export request
/// (protobuf) and keeps its log records.
async fn otlp_collector() -> (
    String,
    Arc<std::sync::Mutex<Vec<opentelemetry_proto::tonic::logs::v1::LogRecord>>>,
    Arc<std::sync::Mutex<Vec<String>>>,
) {
    use http_body_util::BodyExt;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use prost::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/logs", listener.local_addr().unwrap());
    let records = Arc::new(std::sync::Mutex::new(Vec::new()));
    let resources = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (seen, seen_res) = (records.clone(), resources.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, seen_res) = (seen.clone(), seen_res.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (seen, seen_res) = (seen.clone(), seen_res.clone());
                        async move {
                            assert_eq!(req.uri().path(), "/v1/logs");
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let export = ExportLogsServiceRequest::decode(body).unwrap();
                            for rl in export.resource_logs {
                                for a in rl.resource.unwrap_or_default().attributes {
                                    seen_res.lock().unwrap().push(format!("{a:?}"));
                                }
                                for sl in rl.scope_logs {
                                    seen.lock().unwrap().extend(sl.log_records);
                                }
                            }
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(200)
                                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    (url, records, resources)
}

/// `evidence.sink: otlp`: every record reaches an OpenTelemetry collector as one OTLP
/// log record whose body is the record's JSON line, with the decision fields as
/// attributes; the bodies, in order, pass `ciba-gate evidence verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_exported_to_an_otlp_collector_as_log_records() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
    let dir = tempfile::tempdir().unwrap();
    let (url, records, resources) = otlp_collector().await;
    let running = gateway(
        dir.path(),
        &format!("{{sink: otlp, otlp: {{url: \"{url}\", service_name: gate-test}}}}"),
    )
    .await;
    for id in 1..=3 {
        let a = list_deployments(&running, id).await;
        assert!(a["result"].is_object(), "{a}");
    }
    let body = |r: &opentelemetry_proto::tonic::logs::v1::LogRecord| match r
        .body
        .as_ref()
        .and_then(|b| b.value.clone())
    {
        Some(AnyValue::StringValue(s)) => s,
        other => panic!("a body that is not the record's line: {other:?}"),
    };
    let seen = records.clone();
    wait_for("three decisions at the collector", || {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|r| body(r).contains("\"decision\""))
            .count()
            == 3
    })
    .await;
    let got = records.lock().unwrap().clone();
    let decision = got
        .iter()
        .find(|r| body(r).contains("\"decision\""))
        .unwrap();
    let attr = |key: &str| {
        decision
            .attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.clone()?.value)
    };
    assert_eq!(
        attr("ciba_gate.tool"),
        Some(AnyValue::StringValue("list_deployments".into()))
    );
    assert_eq!(
        attr("event.name"),
        Some(AnyValue::StringValue("ciba_gate.evidence".into()))
    );
    assert!(decision.time_unix_nano > 0 && decision.severity_text == "INFO");
    assert!(
        resources
            .lock()
            .unwrap()
            .iter()
            .any(|a| a.contains("service.name") && a.contains("gate-test"))
    );

    let file = dir.path().join("from-otlp.jsonl");
    let text: String = got.iter().map(|r| format!("{}\n", body(r))).collect();
    std::fs::write(&file, text).unwrap();
    let (code, out) = verify(&[file]);
    assert_eq!(code, 0, "{out}");
}
