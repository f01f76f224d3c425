//! `ciba-gate dev-op` for tests that need a person's approval: the OP (poll delivery,
//! one user), the gateway's `approvals:` section for it, and the person with the phone
//! who approves every request the OP shows.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::ChildGuard;

fn quoted(p: &Path) -> String {
    serde_json::to_string(p.to_str().expect("utf-8 path")).unwrap()
}

pub const OP_SECRET: &str = "interop-op-secret-0123456789abcdef";
pub const OP_USER: &str = "demo@example.com";

/// `ciba-gate dev-op` (poll delivery, one user) for a gateway started by `Stack::launch`.
pub struct Op {
    pub _child: ChildGuard,
    pub issuer: String,
    pub dir: tempfile::TempDir,
}

pub fn start_op() -> Op {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ciba-gate"));
    cmd.args([
        "dev-op",
        "--listen",
        "127.0.0.1:0",
        "--client",
        &format!("gate:{OP_SECRET}:poll"),
        "--user",
        OP_USER,
        "--interval",
        "1",
        "--expiry",
        "120",
    ]);
    let mut child = ChildGuard::spawn("dev-op", cmd, dir.path(), true);
    let line = child.wait_for_stdout_line("READY ", Duration::from_secs(20));
    Op {
        issuer: line.trim_start_matches("READY ").trim().to_string(),
        _child: child,
        dir,
    }
}

/// The gateway's `approvals:` section for `op` (`mode`: hold or park).
pub fn approvals_yaml(op: &Op, mode: &str) -> String {
    let secret = op.dir.path().join("op-secret");
    std::fs::write(&secret, OP_SECRET).unwrap();
    format!(
        r#"approvals:
  op:
    issuer: "{issuer}"
    client_id: gate
    client_auth: {{method: client_secret_basic, secret: {{file: {secret}}}}}
    delivery: poll
    allow_insecure_http: true
  user: {{value: "{OP_USER}"}}
  binding_message_profile: ciba-gate-dev
  mode: {mode}
  max_wait: 120s
  keepalive: 1s
  progress_interval: 1s
  park_retry_after: 1s
"#,
        issuer = op.issuer,
        secret = quoted(&secret),
    )
}

/// The person with the phone: approves every request the OP shows, until dropped.
pub struct Approver {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    approved: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Approver {
    pub fn start(op: &Op) -> Approver {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let approved = std::sync::Arc::new(AtomicUsize::new(0));
        let (s, a, issuer) = (stop.clone(), approved.clone(), op.issuer.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                while !s.load(Ordering::Relaxed) {
                    let pending: Vec<Value> =
                        match http.get(format!("{issuer}/api/requests")).send().await {
                            Ok(r) => r.json().await.unwrap_or_default(),
                            Err(_) => Vec::new(),
                        };
                    for p in pending {
                        let Some(id) = p["id"].as_str() else { continue };
                        let r = http
                            .post(format!("{issuer}/api/requests/{id}/approve"))
                            .send()
                            .await;
                        if r.is_ok_and(|r| r.status().is_success()) {
                            a.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        });
        Approver {
            stop,
            approved,
            thread: Some(thread),
        }
    }

    pub fn approved(&self) -> usize {
        self.approved.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Approver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
