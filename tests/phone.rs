//! The phone, for real: `ciba-gate dev` (gateway + demo tools + development OP) over
//! real sockets, an MCP `tools/call` held on an SSE stream, and the user's answer
//! given by tapping Approve or Deny on the OP's approval page in headless Chromium
//! at an iPhone-sized viewport (tests/phone/tap.mjs, playwright-core).
//!
//! Needs Node.js >= 18, npm (`tests/phone/node_modules` is installed with `npm ci`
//! on first use; no browser is ever downloaded) and the system Chromium at
//! /usr/bin/chromium (Debian package `chromium`). Screenshots of each run land in
//! `target/tmp/phone/`.
#![allow(clippy::disallowed_methods)] // waits on real processes and sockets in real time

mod support;

use futures_util::StreamExt;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{ChildGuard, ensure_node_deps, free_port, wait_for_port};
use tokio::sync::mpsc;

const CHROMIUM: &str = "/usr/bin/chromium";
const BINDING: &str = "Deploy payments to prod";

/// `tests/phone` with its pinned `playwright-core` installed (`npm ci` on first use;
/// playwright-core never downloads a browser).
fn ensure_phone_peers() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("phone");
    ensure_node_deps(&dir, "playwright-core");
    dir
}

/// Fail (never skip) when the browser is missing, naming the package to install.
fn require_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: these tests drive the approval page in the system Chromium. \
         Install the Debian package `chromium` (apt-get update && apt-get install -y chromium); \
         scripts/test does this when run as root"
    );
}

/// `ciba-gate dev` on free ports.
struct Dev {
    child: ChildGuard,
    _logs: tempfile::TempDir,
    gateway: u16,
    op: u16,
}

impl Drop for Dev {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== ciba-gate dev =====\n{}", self.child.logs());
        }
    }
}

impl Dev {
    fn start(delivery: &str) -> Dev {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let logs = tempfile::tempdir().expect("temp dir");
        let (gateway, op, callback) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ciba-gate"));
        cmd.current_dir(root)
            .arg("dev")
            .args(["--listen", &format!("127.0.0.1:{gateway}")])
            .args(["--tools-listen", "127.0.0.1:0"])
            .args(["--op-listen", &format!("127.0.0.1:{op}")])
            .args(["--callback-listen", &format!("127.0.0.1:{callback}")])
            .args(["--delivery", delivery])
            .arg("--policies")
            .arg(root.join("policies"));
        let mut child = ChildGuard::spawn(
            &format!("ciba-gate-dev-{delivery}"),
            cmd,
            logs.path(),
            false,
        );
        wait_for_port(op, Duration::from_secs(20), Some(&mut child));
        wait_for_port(gateway, Duration::from_secs(20), Some(&mut child));
        // The gateway reads the OP's metadata in the background after it starts
        // listening; a call before that would be answered op_unreachable.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !child
            .stderr_text()
            .contains("OpenID Provider metadata loaded")
        {
            if let Some(st) = child.try_status() {
                panic!("ciba-gate dev exited ({st})\n{}", child.logs());
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not load the development OP's metadata within 20 s\n{}",
                child.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Dev {
            child,
            _logs: logs,
            gateway,
            op,
        }
    }

    fn approval_page(&self) -> String {
        format!("http://127.0.0.1:{}/", self.op)
    }
}

/// What the held call's SSE stream delivers, as it arrives.
#[derive(Debug)]
enum Sse {
    Head(u16, reqwest::header::HeaderMap),
    Event(Value),
    Comment,
    End,
    Failed(String),
}

/// Sends `deploy_service {"service":"payments","env":"prod"}` with a progress token
/// and keeps reading the response in a task.
fn call_deploy(gateway: u16) -> mpsc::UnboundedReceiver<Sse> {
    let (tx, rx) = mpsc::unbounded_channel();
    let body = json!({
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "deploy_service",
            "arguments": {"service": "payments", "env": "prod"},
            "_meta": {"progressToken": "phone-1"}
        }
    });
    tokio::spawn(async move {
        let resp = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{gateway}/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .timeout(Duration::from_secs(120))
            .body(body.to_string())
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Sse::Failed(format!("POST /mcp failed: {e}")));
                return;
            }
        };
        let _ = tx.send(Sse::Head(resp.status().as_u16(), resp.headers().clone()));
        let mut stream = resp.bytes_stream();
        let mut buf = String::new();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Sse::Failed(format!("reading the SSE stream: {e}")));
                    return;
                }
            };
            buf.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                if block.starts_with(':') {
                    let _ = tx.send(Sse::Comment);
                }
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if !data.is_empty() {
                    let msg = match serde_json::from_str(&data.join("\n")) {
                        Ok(v) => Sse::Event(v),
                        Err(e) => Sse::Failed(format!("SSE data is not JSON ({e}): {block}")),
                    };
                    let _ = tx.send(msg);
                }
            }
        }
        let _ = tx.send(Sse::End);
    });
    rx
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Sse>, deadline: Instant, what: &str) -> Sse {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, rx.recv()).await {
        Ok(Some(Sse::Failed(e))) => panic!("{what}: {e}"),
        Ok(Some(m)) => m,
        Ok(None) => panic!("{what}: the reader task ended without a word"),
        Err(_) => panic!("{what}: nothing within the time allowed"),
    }
}

/// What `tap.mjs` reported.
fn tap(dev: &Dev, action: &str, screenshot: &Path) -> Value {
    let phone = ensure_phone_peers();
    let mut cmd = Command::new("node");
    cmd.arg(phone.join("tap.mjs"))
        .args(["--url", &dev.approval_page()])
        .args(["--binding", BINDING])
        .args(["--action", action])
        .arg("--screenshot")
        .arg(screenshot)
        .args(["--timeout-ms", "20000", "--chromium", CHROMIUM])
        .current_dir(&phone)
        .stdin(Stdio::null());
    let logs = tempfile::tempdir().expect("temp dir");
    let mut node = ChildGuard::spawn(&format!("tap-{action}"), cmd, logs.path(), false);
    let status = node.wait_timeout(Duration::from_secs(60));
    let out = node.stdout_text();
    let report: Value = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    assert!(
        status.is_some_and(|s| s.success()) && report["ok"] == true,
        "tapping {action} on the phone failed (exit {status:?}): {report}\n{}",
        node.logs()
    );
    report
}

fn screenshot_path(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("phone");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

struct Outcome {
    status: u16,
    headers: reqwest::header::HeaderMap,
    progress: Value,
    result: Value,
    tap: Value,
}

/// The whole round: call, see the binding message, tap on the phone, read the end.
async fn held_call_answered_on_phone(delivery: &str, action: &str) -> Outcome {
    require_chromium();
    ensure_phone_peers();
    let dev = tokio::task::spawn_blocking({
        let delivery = delivery.to_string();
        move || Dev::start(&delivery)
    })
    .await
    .expect("starting ciba-gate dev");

    let mut rx = call_deploy(dev.gateway);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, headers) = match next(&mut rx, deadline, "response head").await {
        Sse::Head(s, h) => (s, h),
        other => panic!("expected the response head, got {other:?}"),
    };
    assert_eq!(status, 200, "held call status; headers {headers:?}");
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/event-stream"),
        "a held call with a progress token answers over SSE"
    );
    // The agent's screen: a progress notification with the binding message.
    let progress = loop {
        match next(&mut rx, deadline, "progress notification").await {
            Sse::Event(e) if e["method"] == "notifications/progress" => break e,
            Sse::Comment => {}
            other => panic!("expected a progress notification first, got {other:?}"),
        }
    };

    // The phone's screen: tap the card that shows the same text.
    let shot = screenshot_path(&format!("{action}-{delivery}.png"));
    let tap = tokio::task::spawn_blocking({
        let action = action.to_string();
        let shot = shot.clone();
        move || {
            let report = tap(&dev, &action, &shot);
            (dev, report)
        }
    })
    .await
    .expect("tap task");
    let (dev, tap) = tap;
    assert!(
        shot.exists(),
        "tap.mjs saved no screenshot at {}",
        shot.display()
    );

    // The rest of the stream: keep-alives, then the JSON-RPC answer, then the end.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut events = Vec::new();
    loop {
        match next(&mut rx, deadline, "end of the held call").await {
            Sse::Event(e) => events.push(e),
            Sse::Comment => {}
            Sse::End => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let result = events
        .iter()
        .rev()
        .find(|e| e.get("id").is_some())
        .cloned()
        .unwrap_or_else(|| panic!("the SSE stream ended without a JSON-RPC answer: {events:?}"));
    assert_eq!(
        events.last(),
        Some(&result),
        "the answer is the last event on the stream"
    );
    drop(dev);
    Outcome {
        status,
        headers,
        progress,
        result,
        tap,
    }
}

/// The same text on both screens: the agent's progress notification and response
/// header, and the card the phone tapped.
fn assert_same_binding_message(o: &Outcome) {
    assert_eq!(o.progress["params"]["progressToken"], "phone-1");
    let msg = o.progress["params"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(BINDING),
        "progress notification {} lacks the binding message {BINDING:?}",
        o.progress
    );
    assert_eq!(
        o.headers
            .get("x-ciba-gate-binding-message")
            .and_then(|v| v.to_str().ok()),
        Some(BINDING),
        "x-ciba-gate-binding-message header"
    );
    assert_eq!(o.tap["binding_message"], BINDING);
    assert!(
        o.tap["card"]
            .as_str()
            .unwrap_or_default()
            .starts_with(BINDING),
        "the tapped card shows {}",
        o.tap["card"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_tapped_on_phone_completes_the_held_call_ping() {
    let o = held_call_answered_on_phone("ping", "approve").await;
    assert_eq!(o.status, 200);
    assert_same_binding_message(&o);
    assert_eq!(o.tap["result"], "approved", "page confirmation {}", o.tap);
    let r = &o.result;
    assert_eq!(r["id"], 7, "{r}");
    assert!(r.get("error").is_none(), "JSON-RPC error: {r}");
    assert_eq!(r["result"]["isError"], false, "{r}");
    assert_eq!(
        r["result"]["content"][0]["text"], "Deployed payments to prod.",
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_tapped_on_phone_blocks_the_held_call_poll() {
    let o = held_call_answered_on_phone("poll", "deny").await;
    assert_eq!(o.status, 200);
    assert_same_binding_message(&o);
    assert_eq!(o.tap["result"], "denied", "page confirmation {}", o.tap);
    let r = &o.result;
    assert_eq!(r["id"], 7, "{r}");
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert_eq!(
        r["result"]["_meta"]["ciba-gate/reason"], "approval_denied",
        "{r}"
    );
    let text = r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        !text.contains("Deployed"),
        "a denied call must not reach the tool: {r}"
    );
}
