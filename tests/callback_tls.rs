//! The CIBA callback listener over HTTPS: it serves the configured certificate, follows
//! the certificate files when they change (a renewed Kubernetes TLS Secret), keeps the
//! last good one when the new files are broken, and refuses notifications it cannot
//! authenticate — over TLS like anywhere else.

mod support;

use std::sync::Arc;
use std::time::Duration;

use ciba_gate::approval::callback::{self, ReloadingCert, TlsFiles};
use ciba_gate::devop::op::{DeliveryMode, DevClient, DevOp, DevOpConfig};
use tokio::net::TcpListener;

fn write_cert(dir: &std::path::Path, name: &str) -> (TlsFiles, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let files = TlsFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&files.cert, cert.cert.pem()).unwrap();
    std::fs::write(&files.key, cert.signing_key.serialize_pem()).unwrap();
    (files, cert.cert.pem())
}

fn client_trusting(pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Approvals wired to a development OP, so the listener has something real behind it.
async fn approvals() -> Arc<ciba_gate::approval::Approvals> {
    let op = DevOp::spawn(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        DevOpConfig {
            clients: vec![DevClient {
                client_id: "gate".into(),
                secret: "s".into(),
                delivery: DeliveryMode::Push,
                notification_endpoint: Some("https://127.0.0.1:1/ciba/callback".into()),
            }],
            ..DevOpConfig::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(dir.join("secret"), "s").unwrap();
    let yaml = format!(
        r#"
agent: {{id: a}}
policy: {{dir: "{}", reload_interval: 0s}}
upstreams: [{{name: t, kind: mcp, mount: /mcp, url: "http://127.0.0.1:9/mcp"}}]
approvals:
  op: {{issuer: "{}", client_id: gate, delivery: push, allow_insecure_http: true,
        client_auth: {{method: client_secret_basic, secret: {{file: secret}}}}}}
  user: {{value: demo@example.com}}
  callback: {{listen: "127.0.0.1:0", insecure_http: true}}
"#,
        concat!(env!("CARGO_MANIFEST_DIR"), "/policies"),
        op.issuer()
    );
    // The gateway's own callback listener is plain HTTP on a free port; this test
    // serves a second one itself, with TLS, for the same approvals.
    let gate = support::gateway::Gate::start(&dir, &yaml).await;
    gate.approvals_ready().await;
    let approvals = gate.running.approvals().unwrap();
    std::mem::forget(op);
    std::mem::forget(gate);
    approvals
}

#[tokio::test]
async fn callbacks_are_served_over_tls_and_unauthenticated_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (files, pem) = write_cert(dir.path(), "cb");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(callback::serve(
        listener,
        approvals().await,
        "/ciba/callback".into(),
        Some(files),
    ));
    let url = format!("https://localhost:{}/ciba/callback", addr.port());
    let c = client_trusting(&pem);
    let r = c
        .post(&url)
        .json(&serde_json::json!({"auth_req_id": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no bearer token");
    let r = c
        .post(&url)
        .bearer_auth("not-a-token-we-issued")
        .json(&serde_json::json!({"auth_req_id": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "unknown token");
    // Plain HTTP on the TLS port gets nowhere.
    let plain = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/ciba/callback", addr.port()))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

#[test]
fn a_renewed_certificate_is_picked_up_and_a_broken_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = write_cert(dir.path(), "cb");
    let resolver = ReloadingCert::load(files.clone()).unwrap();
    assert!(!resolver.reload(), "unchanged files: nothing to do");
    // The Secret is renewed: new files in place.
    let (renewed, _) = write_cert(dir.path(), "renewed");
    std::fs::copy(&renewed.cert, &files.cert).unwrap();
    std::fs::copy(&renewed.key, &files.key).unwrap();
    assert!(resolver.reload(), "the renewed certificate is in use");
    // A half-written or broken file keeps the last good certificate.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    assert!(!resolver.reload());
    // And a missing key at start-up is an error naming the file.
    let missing = TlsFiles {
        cert: dir.path().join("nope.crt"),
        key: dir.path().join("nope.key"),
    };
    let err = ReloadingCert::load(missing).unwrap_err().to_string();
    assert!(err.contains("nope.crt"), "{err}");
}

#[tokio::test]
async fn the_listener_serves_the_renewed_certificate_after_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (files, old_pem) = write_cert(dir.path(), "cb");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(callback::serve(
        listener,
        approvals().await,
        "/ciba/callback".into(),
        Some(files.clone()),
    ));
    let url = format!("https://localhost:{}/ciba/callback", addr.port());
    assert_eq!(
        client_trusting(&old_pem)
            .post(&url)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let (renewed, new_pem) = write_cert(dir.path(), "renewed");
    std::fs::copy(&renewed.cert, &files.cert).unwrap();
    std::fs::copy(&renewed.key, &files.key).unwrap();
    // The listener checks its files every 5 s.
    let mut served_new = false;
    for _ in 0..80 {
        if let Ok(r) = client_trusting(&new_pem).post(&url).send().await {
            assert_eq!(r.status(), 401);
            served_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served_new, "the renewed certificate was never served");
    assert!(
        client_trusting(&old_pem).post(&url).send().await.is_err(),
        "the old certificate is gone"
    );
}
