//! Policy bundles pulled from a bundle server in OPA's format: a signed bundle goes
//! into force (its manifest revision in every evidence record), `If-None-Match` turns
//! a repeat into a 304, and a tampered bundle, an unsigned one, a broken one or a
//! server that goes away leaves the last good bundle in force, says so in `/readyz`
//! and counts it. Until the first bundle is in, every call is denied.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::gateway::Gate;
use support::recording_upstream::RecordingUpstream;
use tokio::net::TcpListener;

const POLICY: &str = r#"package ciba_gate

import rego.v1

allow if input.mcp.method in {"initialize", "tools/list"}

allow if {
	input.mcp.method == "tools/call"
	input.tool.name in data.tools.allowed
}
"#;

/// What the bundle server serves, and what it was asked.
#[derive(Default)]
struct Served {
    bundle: Option<(Vec<u8>, String)>,
    /// Answer this status instead (a failing server).
    status: Option<u16>,
    /// The `If-None-Match` of each request.
    asked_with: Vec<Option<String>>,
}

/// The server's tasks: stopping it closes its listener and every open connection.
struct Server(Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>);

impl Server {
    async fn stop(&self) {
        let tasks: Vec<_> = self.0.lock().unwrap().drain(..).collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

async fn bundle_server(state: Arc<Mutex<Served>>) -> (SocketAddr, Server) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tasks = Arc::new(Mutex::new(Vec::new()));
    let connections = tasks.clone();
    let accept = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            let conn = tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let inm = req
                            .headers()
                            .get("if-none-match")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let mut s = state.lock().unwrap();
                        s.asked_with.push(inm.clone());
                        let resp = match (&s.status, &s.bundle) {
                            (Some(code), _) => Response::builder()
                                .status(*code)
                                .body(Full::new(Bytes::new())),
                            (None, Some((_, etag))) if inm.as_deref() == Some(etag.as_str()) => {
                                Response::builder()
                                    .status(StatusCode::NOT_MODIFIED)
                                    .body(Full::new(Bytes::new()))
                            }
                            (None, Some((body, etag))) => Response::builder()
                                .header("etag", etag.as_str())
                                .header("content-type", "application/gzip")
                                .body(Full::new(Bytes::from(body.clone()))),
                            (None, None) => Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::new())),
                        };
                        Ok::<_, Infallible>(resp.unwrap())
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
            connections.lock().unwrap().push(conn);
        }
    });
    tasks.lock().unwrap().push(accept);
    (addr, Server(tasks))
}

fn tar_gz(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, content.as_slice())
            .unwrap();
    }
    let raw = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    gz.finish().unwrap()
}

/// An Ed25519 signing key and its public key as SPKI PEM.
fn signing_key(seed: u8) -> (EncodingKey, String) {
    ciba_gate::fuzzing::bundle::ed25519_test_key(seed)
}

/// `.signatures.json` for `files`, as `opa sign` writes it.
fn signatures(key: &EncodingKey, files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    use sha2::Digest;
    let listed: Vec<Value> = files
        .iter()
        .map(|(name, content)| {
            let input = if name.ends_with(".json") || *name == ".manifest" {
                ciba_gate::policy::bundle::opa_json_hash_input(
                    &serde_json::from_slice(content).unwrap(),
                )
            } else {
                content.clone()
            };
            json!({"name": name, "hash": hex::encode(sha2::Sha256::digest(&input)), "algorithm": "SHA-256"})
        })
        .collect();
    let claims = json!({"files": listed, "keyid": "global_key", "iat": 1_700_000_000});
    let jws = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, key).unwrap();
    serde_json::to_vec(&json!({"signatures": [jws]})).unwrap()
}

fn bundle_files(revision: &str, allowed: &[&str]) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("policy.rego", POLICY.as_bytes().to_vec()),
        (
            "tools/data.json",
            serde_json::to_vec(&json!({ "allowed": allowed })).unwrap(),
        ),
        (
            ".manifest",
            serde_json::to_vec(&json!({"revision": revision, "roots": [""]})).unwrap(),
        ),
    ]
}

fn signed(key: &EncodingKey, revision: &str, allowed: &[&str]) -> Vec<u8> {
    let mut files = bundle_files(revision, allowed);
    let sigs = signatures(key, &files);
    files.push((".signatures.json", sigs));
    tar_gz(&files)
}

fn call(tool: &str, id: i64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {}}})
}

async fn readyz(gate: &Gate) -> (u16, Value) {
    let r = reqwest::get(format!("http://{}/readyz", gate.admin_addr))
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn metrics(gate: &Gate) -> String {
    reqwest::get(format!("http://{}/metrics", gate.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits until `/readyz` shows `pred`.
async fn until_ready(gate: &Gate, what: &str, pred: impl Fn(u16, &Value) -> bool) -> Value {
    for _ in 0..200 {
        let (status, body) = readyz(gate).await;
        if pred(status, &body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("/readyz never showed {what}: {:?}", readyz(gate).await);
}

async fn gate_for(
    dir: &Path,
    bundle_addr: SocketAddr,
    public_pem: &str,
    upstream: SocketAddr,
) -> Gate {
    std::fs::write(dir.join("bundle-key.pem"), public_pem).unwrap();
    let yaml = format!(
        "agent: {{id: billing-agent}}\n\
         policy:\n  bundle:\n    url: \"http://{bundle_addr}/bundles/ciba.tar.gz\"\n    polling: {{min_delay: 50ms, max_delay: 100ms}}\n    signing: {{public_key_file: bundle-key.pem, algorithm: EdDSA, key_id: global_key}}\n\
         upstreams:\n  - {{name: tools, kind: mcp, mount: /mcp, url: \"http://{upstream}/mcp\"}}\n"
    );
    Gate::start(dir, &yaml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_bundle_goes_into_force_and_a_bad_one_never_replaces_it() {
    let (key, public) = signing_key(1);
    let state = Arc::new(Mutex::new(Served::default()));
    let (bundle_addr, server) = bundle_server(state.clone()).await;
    let (up_addr, upstream) = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = gate_for(dir.path(), bundle_addr, &public, up_addr).await;

    // No bundle yet (the server answers 404): not ready, and every call is denied.
    until_ready(&gate, "a source problem", |s, b| {
        s == 503 && b["checks"]["policy"]["source_problem"].is_string()
    })
    .await;
    let before = support::post_mcp(gate.addr, &call("list_deployments", 1)).await;
    assert_eq!(before["result"]["isError"], true, "{before}");
    assert_eq!(upstream.tool_calls().len(), 0);

    // A signed bundle: in force, its revision named by /readyz and the evidence.
    state.lock().unwrap().bundle =
        Some((signed(&key, "v1", &["list_deployments"]), "\"e1\"".into()));
    until_ready(&gate, "revision v1", |s, b| {
        s == 200 && b["checks"]["policy"]["revision"] == "v1"
    })
    .await;
    let ok = support::post_mcp(gate.addr, &call("list_deployments", 2)).await;
    assert_eq!(ok["result"]["content"][0]["text"], "done", "{ok}");
    let ev = gate.evidence(2).await;
    let rec = ev
        .iter()
        .find(|e| e["tool"] == "list_deployments" && e["outcome"] == "forwarded")
        .unwrap();
    assert_eq!(rec["policy_revision"], "v1", "{rec}");

    // Unchanged: the next polls carry the ETag and get 304.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        state
            .lock()
            .unwrap()
            .asked_with
            .iter()
            .any(|t| t.as_deref() == Some("\"e1\"")),
        "the poll sends If-None-Match"
    );

    // Tampered after signing (the data now allows a destructive tool).
    let mut files = bundle_files("v2", &["list_deployments"]);
    let sigs = signatures(&key, &files);
    files[1].1 =
        serde_json::to_vec(&json!({"allowed": ["list_deployments", "delete_repository"]})).unwrap();
    files.push((".signatures.json", sigs));
    state.lock().unwrap().bundle = Some((tar_gz(&files), "\"e2\"".into()));
    let body = until_ready(&gate, "the tampered bundle refused", |_, b| {
        b["checks"]["policy"]["source_problem"]
            .as_str()
            .is_some_and(|p| p.starts_with("verification_failed"))
    })
    .await;
    assert_eq!(
        body["checks"]["policy"]["revision"], "v1",
        "the last good bundle stays: {body}"
    );
    let denied = support::post_mcp(gate.addr, &call("delete_repository", 3)).await;
    assert_eq!(denied["result"]["isError"], true, "{denied}");

    // Unsigned, while a signature is required.
    let unsigned = tar_gz(&bundle_files(
        "v3",
        &["list_deployments", "delete_repository"],
    ));
    state.lock().unwrap().bundle = Some((unsigned, "\"e3\"".into()));
    let body = until_ready(&gate, "the unsigned bundle refused", |_, b| {
        b["checks"]["policy"]["source_problem"]
            .as_str()
            .is_some_and(|p| p.contains("not signed"))
    })
    .await;
    assert_eq!(body["checks"]["policy"]["revision"], "v1");

    // Signed by someone else's key.
    let (other, _) = signing_key(2);
    state.lock().unwrap().bundle = Some((
        signed(&other, "v4", &["delete_repository"]),
        "\"e4\"".into(),
    ));
    until_ready(&gate, "a foreign signature refused", |_, b| {
        b["checks"]["policy"]["source_problem"]
            .as_str()
            .is_some_and(|p| p.contains("signature is not valid"))
    })
    .await;

    // Signed but does not compile.
    let mut broken = bundle_files("v5", &[]);
    broken[0].1 = b"package ciba_gate\nallow if {\n".to_vec();
    let sigs = signatures(&key, &broken);
    broken.push((".signatures.json", sigs));
    state.lock().unwrap().bundle = Some((tar_gz(&broken), "\"e5\"".into()));
    until_ready(&gate, "a broken bundle refused", |_, b| {
        b["checks"]["policy"]["source_problem"]
            .as_str()
            .is_some_and(|p| p.starts_with("compile_failed"))
    })
    .await;

    // The server goes away.
    server.stop().await;
    let body = until_ready(&gate, "the server gone", |_, b| {
        b["checks"]["policy"]["source_problem"]
            .as_str()
            .is_some_and(|p| p.starts_with("download_failed"))
    })
    .await;
    assert_eq!(body["checks"]["policy"]["revision"], "v1");
    assert_eq!(
        readyz(&gate).await.0,
        200,
        "serving the last good bundle is ready"
    );
    let still = support::post_mcp(gate.addr, &call("list_deployments", 4)).await;
    assert_eq!(still["result"]["content"][0]["text"], "done", "{still}");
    assert_eq!(
        upstream.count("delete_repository"),
        0,
        "no refused bundle ever allowed anything"
    );

    let m = metrics(&gate).await;
    for result in [
        "ok",
        "verification_failed",
        "compile_failed",
        "download_failed",
    ] {
        assert!(
            m.contains(&format!(
                "ciba_gate_policy_bundle_polls_total{{set=\"enforcing\",result=\"{result}\"}}"
            )),
            "{result} counted:\n{m}"
        );
    }
    assert!(
        m.contains("ciba_gate_policy_revision_info{revision=\"v1\"} 1"),
        "{m}"
    );
}

#[test]
fn check_fetches_verifies_and_compiles_the_bundle() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (key, public) = signing_key(1);
    let state = Arc::new(Mutex::new(Served::default()));
    let (bundle_addr, _server) = rt.block_on(bundle_server(state.clone()));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bundle-key.pem"), &public).unwrap();
    let cfg = dir.path().join("gate.yaml");
    std::fs::write(
        &cfg,
        format!(
            "agent: {{id: a}}\n\
             policy:\n  bundle:\n    url: \"http://{bundle_addr}/b.tar.gz\"\n    signing: {{public_key_file: bundle-key.pem, algorithm: EdDSA}}\n\
             upstreams:\n  - {{name: tools, kind: mcp, mount: /mcp, url: \"http://127.0.0.1:9/mcp\"}}\n"
        ),
    )
    .unwrap();
    let check = |cfg: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ciba-gate"))
            .arg("check")
            .arg("--config")
            .arg(cfg)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    state.lock().unwrap().bundle = Some((signed(&key, "v7", &["x"]), "\"a\"".into()));
    let (ok, text) = check(&cfg);
    assert!(ok, "{text}");
    assert!(
        text.contains("verified and compiled (revision v7"),
        "{text}"
    );

    let unsigned = tar_gz(&bundle_files("v8", &["x"]));
    state.lock().unwrap().bundle = Some((unsigned, "\"b\"".into()));
    let (ok, text) = check(&cfg);
    assert!(!ok, "{text}");
    assert!(
        text.contains("policy.bundle") && text.contains("not signed"),
        "{text}"
    );
}

/// A bundle built and signed by an independent signer (Python: tarfile, json,
/// PyJWT with RS256 and a key id and scope), following OPA's documented format,
/// verifies and goes into force; the same bundle with a file edited does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_signed_by_an_independent_opa_signer_goes_into_force() {
    let python = support::python_sdk();
    let src = tempfile::tempdir().unwrap();
    for (name, content) in bundle_files("py-1", &["list_deployments"]) {
        let path = src.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/opa_sign.py"))
        .arg(src.path())
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let bundle = std::fs::read(out.path().join("bundle.tar.gz")).unwrap();
    let public = std::fs::read_to_string(out.path().join("public.pem")).unwrap();

    let state = Arc::new(Mutex::new(Served::default()));
    state.lock().unwrap().bundle = Some((bundle.clone(), "\"py\"".into()));
    let (bundle_addr, _server) = bundle_server(state.clone()).await;
    let (up_addr, _upstream) = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rsa.pem"), &public).unwrap();
    let yaml = format!(
        "agent: {{id: billing-agent}}\n\
         policy:\n  bundle:\n    url: \"http://{bundle_addr}/b.tar.gz\"\n    polling: {{min_delay: 50ms, max_delay: 100ms}}\n    signing: {{public_key_file: rsa.pem, algorithm: RS256, key_id: python_key, scope: write}}\n\
         upstreams:\n  - {{name: tools, kind: mcp, mount: /mcp, url: \"http://{up_addr}/mcp\"}}\n"
    );
    let gate = Gate::start(dir.path(), &yaml).await;
    until_ready(&gate, "the Python-signed bundle", |s, b| {
        s == 200 && b["checks"]["policy"]["revision"] == "py-1"
    })
    .await;
    let ok = support::post_mcp(gate.addr, &call("list_deployments", 1)).await;
    assert_eq!(ok["result"]["content"][0]["text"], "done", "{ok}");

    // The same archive with one byte of the module changed (re-packed, same signature).
    let mut files = Vec::new();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bundle.as_slice()));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
        if name.ends_with("policy.rego") {
            content = String::from_utf8(content)
                .unwrap()
                .replace("tools/call", "tools/cal1")
                .into_bytes();
        }
        files.push((name.trim_start_matches('/').to_string(), content));
    }
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, c)| (n.as_str(), c.clone())).collect();
    state.lock().unwrap().bundle = Some((tar_gz(&files), "\"py2\"".into()));
    let body = until_ready(&gate, "the edited bundle refused", |_, b| {
        b["checks"]["policy"]["source_problem"]
            .as_str()
            .is_some_and(|p| p.contains("policy.rego does not match its signed hash"))
    })
    .await;
    assert_eq!(body["checks"]["policy"]["revision"], "py-1");
}

/// A shadow policy set from a bundle server: decided beside the enforcing directory
/// once its first bundle is in force (nothing is compared before), never enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_bundle_is_decided_beside_the_enforcing_policy_once_it_arrives() {
    let (key, public) = signing_key(3);
    let state = Arc::new(Mutex::new(Served::default()));
    let (bundle_addr, _server) = bundle_server(state.clone()).await;
    let (up_addr, upstream) = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let enforcing = dir.path().join("enforcing");
    std::fs::create_dir_all(enforcing.join("tools")).unwrap();
    std::fs::write(enforcing.join("policy.rego"), POLICY).unwrap();
    std::fs::write(
        enforcing.join("tools/data.json"),
        r#"{"tools": {"allowed": ["list_deployments"]}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("shadow-key.pem"), &public).unwrap();
    let yaml = format!(
        "agent: {{id: billing-agent}}\n\
         policy:\n  dir: enforcing\n  reload_interval: 0s\n  shadow:\n    bundle:\n      url: \"http://{bundle_addr}/shadow.tar.gz\"\n      polling: {{min_delay: 50ms, max_delay: 100ms}}\n      signing: {{public_key_file: shadow-key.pem, algorithm: EdDSA}}\n\
         upstreams:\n  - {{name: tools, kind: mcp, mount: /mcp, url: \"http://{up_addr}/mcp\"}}\n"
    );
    let gate = Gate::start(dir.path(), &yaml).await;
    // No shadow bundle yet: nothing to compare, and the gateway is ready.
    let first = support::post_mcp(gate.addr, &call("list_deployments", 1)).await;
    assert_eq!(first["result"]["content"][0]["text"], "done", "{first}");
    let ev = gate.evidence(1).await;
    assert!(ev[0].get("shadow").is_none(), "{}", ev[0]);
    assert_eq!(readyz(&gate).await.0, 200);

    // The shadow bundle arrives: it would deny what the enforcing policy allows.
    state.lock().unwrap().bundle = Some((signed(&key, "shadow-1", &[]), "\"s1\"".into()));
    let mut recorded = None;
    for i in 0..100 {
        let a = support::post_mcp(gate.addr, &call("list_deployments", 10 + i)).await;
        assert_eq!(
            a["result"]["content"][0]["text"], "done",
            "never enforced: {a}"
        );
        let ev = gate.evidence(2 + i as usize).await;
        if let Some(s) = ev.last().and_then(|e| e.get("shadow")) {
            recorded = Some(s.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let shadow = recorded.expect("the shadow bundle was never decided");
    assert_eq!(shadow["decision"], "deny", "{shadow}");
    assert_eq!(shadow["revision"], "shadow-1", "{shadow}");
    assert!(
        upstream.count("list_deployments") >= 2,
        "every call forwarded"
    );
    let m = metrics(&gate).await;
    assert!(
        m.contains("ciba_gate_policy_bundle_polls_total{set=\"shadow\",result=\"ok\"}"),
        "{m}"
    );
}

/// A bundle rebuilt under the same manifest revision is still a new bundle: what
/// decides is its content, as in OPA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_rebuilt_under_the_same_revision_goes_into_force() {
    let (key, public) = signing_key(4);
    let state = Arc::new(Mutex::new(Served::default()));
    state.lock().unwrap().bundle =
        Some((signed(&key, "same", &["list_deployments"]), "\"a\"".into()));
    let (bundle_addr, _server) = bundle_server(state.clone()).await;
    let (up_addr, upstream) = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = gate_for(dir.path(), bundle_addr, &public, up_addr).await;
    until_ready(&gate, "the first bundle", |s, _| s == 200).await;
    let no = support::post_mcp(gate.addr, &call("get_logs", 1)).await;
    assert_eq!(no["result"]["isError"], true, "{no}");

    state.lock().unwrap().bundle = Some((signed(&key, "same", &["get_logs"]), "\"b\"".into()));
    for i in 0..100 {
        let a = support::post_mcp(gate.addr, &call("get_logs", 2 + i)).await;
        if a["result"]["content"][0]["text"] == "done" {
            assert_eq!(upstream.count("get_logs"), 1);
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the rebuilt bundle never went into force");
}
