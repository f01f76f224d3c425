//! Approvals benchmark (no criterion harness): the development OP and a timestamping
//! upstream run in this process; the gateway runs as a separate process
//! (`target/release/ciba-gate serve --config <generated>`) against them, over
//! 127.0.0.1. Three measurements, each printed as a markdown table:
//!
//! 1. `latency`: callback → upstream. N calls are held one at a time (SSE with a
//!    progressToken); each is approved with `DevOp::decide` and the time from just
//!    before `decide()` to the upstream receiving the forwarded call is recorded.
//!    Delivery `ping` and `push`.
//! 2. `memory`: 10,000 distinct calls waiting for a person at once, once per client
//!    kind (SSE with and without a progressToken, JSON only, parked); the gateway's
//!    VmRSS / VmHWM before and while they wait, bytes per call, CPU while waiting,
//!    then all are denied and drained.
//! 3. `rps`: CIBA requests per second the gateway starts (park mode, distinct calls,
//!    closed-loop clients), counted at the OP.
//!
//! Run: `ulimit -n 20000; cargo bench --bench approvals` (see BENCHMARKS.md).
//! Knobs (environment): APPROVALS_ONLY=latency,memory,rps  APPROVALS_N=500
//! APPROVALS_WARMUP=20  APPROVALS_HELD=10000  APPROVALS_RPS_SECS=5
//! APPROVALS_KINDS=sse-progress,sse-default,plain,park  APPROVALS_RPS_CONNS=32
//! APPROVALS_RPS_ROUNDS=5  APPROVALS_KEEP_TMP=1.
#![allow(clippy::disallowed_methods)] // waits on real processes and sockets in real time

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ciba_gate::devop::op::{DeliveryMode, DevClient, DevOp, DevOpConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};

const CLIENT_SECRET: &str = "bench-client-secret-7f3a91";
const USER: &str = "alice@example.com";
const GATEWAY: &str = env!("CARGO_BIN_EXE_ciba-gate");
/// The development OP keeps at most this many requests (finished ones count until
/// their expiry plus ten minutes).
const OP_CAPACITY: usize = 10_000;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// --- a timestamping upstream -------------------------------------------------------------

#[derive(Clone, Default)]
struct Upstream {
    /// JSON-RPC id → when the request head reached the handler.
    arrivals: Arc<Mutex<HashMap<i64, Instant>>>,
    notify: Arc<Notify>,
    count: Arc<AtomicUsize>,
}

impl Upstream {
    async fn start() -> (SocketAddr, Upstream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Upstream::default();
        let seen = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let arrived = Instant::now();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            if let Some(id) = v.get("id").and_then(Value::as_i64) {
                                seen.arrivals.lock().unwrap().insert(id, arrived);
                            }
                            seen.count.fetch_add(1, Ordering::Relaxed);
                            seen.notify.notify_waiters();
                            let answer = json!({"jsonrpc": "2.0", "id": v.get("id").cloned().unwrap_or(Value::Null),
                                "result": {"content": [{"type": "text", "text": "done"}], "isError": false}});
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(answer.to_string())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, up)
    }

    async fn arrival(&self, id: i64, timeout: Duration) -> Option<Instant> {
        let end = Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            if let Some(t) = self.arrivals.lock().unwrap().get(&id) {
                return Some(*t);
            }
            let left = end.checked_duration_since(Instant::now())?;
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), notified).await;
        }
    }
}

// --- the gateway as a child process --------------------------------------------------------

/// The gateway process; killed (SIGKILL) and reaped when dropped, also on panic.
struct GatewayProc {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var("APPROVALS_KEEP_TMP").is_err() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("kept {}", self.dir.display());
        }
    }
}

impl GatewayProc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

struct Bench {
    op: DevOp,
    upstream: Upstream,
    gw: GatewayProc,
    http: reqwest::Client,
}

struct GwOpts {
    delivery: DeliveryMode,
    mode: &'static str,
    /// Extra lines under `approvals:` (two-space indented).
    extra: &'static str,
}

async fn start(o: GwOpts) -> Bench {
    let (up_addr, upstream) = Upstream::start().await;
    let callback_port = free_port();
    let callback_url = format!("http://127.0.0.1:{callback_port}/ciba/callback");
    let op = DevOp::spawn(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        DevOpConfig {
            clients: vec![DevClient {
                client_id: "gate".into(),
                secret: CLIENT_SECRET.into(),
                delivery: o.delivery,
                notification_endpoint: (o.delivery != DeliveryMode::Poll)
                    .then(|| callback_url.clone()),
            }],
            users: vec![USER.into()],
            interval: Some(5),
            slow_down_polls: 0,
            default_expiry: 300,
            ..DevOpConfig::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(dir.join("secret"), CLIENT_SECRET).unwrap();
    let gw_port = free_port();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let callback = if o.delivery == DeliveryMode::Poll {
        String::new()
    } else {
        format!("  callback: {{listen: \"127.0.0.1:{callback_port}\", insecure_http: true}}\n")
    };
    let yaml = format!(
        r#"listen: "127.0.0.1:{gw_port}"
agent: {{id: bench-agent, namespace: agents}}
policy: {{dir: {policies:?}, reload_interval: 0s}}
evidence: {{sink: file, path: evidence.jsonl}}
upstreams:
  - {{name: tools, kind: mcp, mount: /mcp, url: "http://{up_addr}/mcp"}}
approvals:
  op:
    issuer: "{issuer}"
    client_id: gate
    client_auth: {{method: client_secret_basic, secret: {{file: secret}}}}
    delivery: {delivery}
    allow_insecure_http: true
  user: {{value: "{USER}"}}
  binding_message_profile: ciba-gate-dev
  mode: {mode}
{callback}{extra}"#,
        issuer = op.issuer(),
        delivery = o.delivery.as_str(),
        mode = o.mode,
        extra = o.extra,
    );
    let cfg = dir.join("gate.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let log = std::fs::File::create(dir.join("gateway.log")).unwrap();
    let child = Command::new(GATEWAY)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting target/release/ciba-gate");
    let gw = GatewayProc {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], gw_port)),
        dir,
    };
    let end = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(gw.addr).await.is_err() {
        assert!(
            Instant::now() < end,
            "the gateway did not start; see its log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    Bench {
        op,
        upstream,
        gw,
        http,
    }
}

// --- calling ------------------------------------------------------------------------------

fn deploy(id: i64, ticket: &str, progress: bool) -> Value {
    let mut params = json!({"name": "deploy_service",
        "arguments": {"service": "payments", "env": "prod", "ticket": ticket}});
    if progress {
        params["_meta"] = json!({"progressToken": format!("p{id}")});
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

/// Posts a call and returns the final JSON-RPC message (the last SSE event with an id,
/// or the JSON body) and when it was complete.
async fn call(http: &reqwest::Client, addr: SocketAddr, body: &Value) -> (Value, Instant) {
    let resp = http
        .post(format!("http://{addr}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .timeout(Duration::from_secs(60))
        .body(body.to_string())
        .send()
        .await
        .expect("calling the gateway");
    let sse = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "text/event-stream");
    let text = resp.text().await.unwrap_or_default();
    let done = Instant::now();
    if !sse {
        return (serde_json::from_str(&text).unwrap_or(Value::Null), done);
    }
    let last = text
        .split("\n\n")
        .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v.get("id").is_some())
        .last()
        .unwrap_or(Value::Null);
    (last, done)
}

fn reason(v: &Value) -> String {
    v["result"]["_meta"]["ciba-gate/reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn tool_text(v: &Value) -> String {
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until the OP shows at least `n` pending requests.
async fn op_pending(
    op: &DevOp,
    n: usize,
    timeout: Duration,
) -> Vec<ciba_gate::devop::op::PendingView> {
    let end = Instant::now() + timeout;
    loop {
        let p = op.pending();
        if p.len() >= n {
            return p;
        }
        assert!(
            Instant::now() < end,
            "the OP never saw {n} pending request(s) (has {})",
            p.len()
        );
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// Retries an approval-needing call until the gateway has the OP's metadata (before
/// discovery completes it answers `op_unavailable`), approving it when held.
async fn wait_ready(b: &Bench, hold: bool) {
    let end = Instant::now() + Duration::from_secs(20);
    let mut k = 0;
    loop {
        k += 1;
        let body = deploy(-k, &format!("ready-{k}"), hold);
        let http = b.http.clone();
        let addr = b.gw.addr;
        let task = tokio::spawn(async move { call(&http, addr, &body).await.0 });
        if hold {
            // Either it is held (the OP sees it) or it comes back blocked at once.
            let t_end = Instant::now() + Duration::from_secs(5);
            loop {
                if task.is_finished() {
                    break;
                }
                if let Some(p) = b.op.pending().first() {
                    b.op.decide(&p.id, true).await.unwrap();
                    break;
                }
                assert!(Instant::now() < t_end, "readiness probe stuck");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let v = task.await.unwrap();
        let r = reason(&v);
        if (hold && tool_text(&v) == "done") || (!hold && r == "approval_pending") {
            return;
        }
        assert!(Instant::now() < end, "the gateway never became ready: {v}");
        assert!(
            r == "op_unavailable",
            "unexpected answer while waiting for the gateway: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the gateway's "OpenID Provider metadata loaded" log line without sending
/// a call (every call would take one of the OP's 10,000 request slots).
async fn wait_discovered(b: &Bench) {
    let end = Instant::now() + Duration::from_secs(20);
    let log = b.gw.dir.join("gateway.log");
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("OpenID Provider metadata loaded")
    {
        assert!(
            Instant::now() < end,
            "the gateway never loaded the OP metadata; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- /proc --------------------------------------------------------------------------------

fn proc_status_kb(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .and_then(|r| r.trim_start_matches(':').split_whitespace().next())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// utime + stime of a process, in microseconds.
fn cpu_us(pid: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks * 1_000_000 / clk_tck()
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn nofile_soft_limit() -> u64 {
    let s = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `other build processes running?` — exact process names, not command lines.
fn busy_box() -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("ps -eo comm= | grep -cxE 'rustc|cargo|cc|ld|rust-lld' || true")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    let n: u64 = out.trim().parse().unwrap_or(0);
    // This benchmark itself runs under `cargo bench`: one cargo process is ours.
    if n <= 1 {
        "yes".into()
    } else {
        format!("no ({} rustc/cargo/cc/ld processes)", n)
    }
}

// --- 1. callback → upstream latency -------------------------------------------------------

async fn latency(delivery: DeliveryMode, n: usize, warmup: usize) {
    let b = start(GwOpts {
        delivery,
        mode: "hold",
        // Only the callback may resolve the call within the measurement.
        extra: "  max_wait: 60s\n  ping_fallback_poll: 5m\n",
    })
    .await;
    wait_ready(&b, true).await;
    let quiet_before = busy_box();
    let mut to_upstream = Vec::with_capacity(n);
    let mut to_agent = Vec::with_capacity(n);
    let gw_cpu0 = cpu_us(&b.gw.pid().to_string());
    for i in 0..(warmup + n) as i64 {
        let body = deploy(i, &format!("lat-{i}"), true);
        let (http, addr) = (b.http.clone(), b.gw.addr);
        let task = tokio::spawn(async move { call(&http, addr, &body).await });
        let p = op_pending(&b.op, 1, Duration::from_secs(10)).await;
        assert_eq!(p.len(), 1, "one call at a time");
        let t0 = Instant::now();
        b.op.decide(&p[0].id, true).await.unwrap();
        let arrived = b
            .upstream
            .arrival(i, Duration::from_secs(10))
            .await
            .expect("the call never reached the upstream");
        let (v, answered) = task.await.unwrap();
        assert_eq!(tool_text(&v), "done", "call {i}: {v}");
        if i as usize >= warmup {
            to_upstream.push(arrived - t0);
            to_agent.push(answered - t0);
        }
    }
    let gw_cpu = cpu_us(&b.gw.pid().to_string()) - gw_cpu0;
    let quiet_after = busy_box();
    to_upstream.sort();
    to_agent.sort();
    let row = |name: &str, v: &[Duration]| {
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            delivery.as_str(),
            name,
            v.len(),
            ms(pct(v, 50.0)),
            ms(pct(v, 90.0)),
            ms(pct(v, 99.0)),
            ms(*v.last().unwrap()),
            ms(v.iter().sum::<Duration>() / v.len() as u32),
        )
    };
    row("decide → upstream", &to_upstream);
    row("decide → agent has answer", &to_agent);
    eprintln!(
        "  [{}] gateway CPU {:.0} µs per held+approved call (whole call incl. hold); quiet box before/after: {} / {}",
        delivery.as_str(),
        gw_cpu as f64 / (warmup + n) as f64,
        quiet_before,
        quiet_after
    );
}

// --- 2. memory with 10,000 held calls -------------------------------------------------------

/// How the agent's client asks, which decides how the gateway keeps the call while the
/// person decides.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ClientKind {
    /// `Accept: text/event-stream` and a `progressToken`: held on SSE with keep-alives
    /// and progress notifications.
    SseProgress,
    /// `Accept: text/event-stream`, no `progressToken` (an SDK's default call): held on
    /// SSE with keep-alives only.
    SseDefault,
    /// `Accept: application/json` only: held with a plain answer (`max_plain_wait`
    /// covers the deadline), nothing written until the decision.
    Plain,
    /// `mode: park`: answered at once with the pending tool result; only the approval
    /// record and its request driver stay, no connection.
    Park,
}

impl ClientKind {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "sse-progress" => Some(Self::SseProgress),
            "sse-default" => Some(Self::SseDefault),
            "plain" => Some(Self::Plain),
            "park" => Some(Self::Park),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::SseProgress => "SSE + progressToken (held)",
            Self::SseDefault => "SSE, no progressToken (held, keep-alives only)",
            Self::Plain => "JSON only (held, plain answer)",
            Self::Park => "parked (pending tool result at once; connection closed)",
        }
    }

    fn accept(self) -> &'static str {
        match self {
            Self::SseProgress | Self::SseDefault => "application/json, text/event-stream",
            Self::Plain | Self::Park => "application/json",
        }
    }

    /// The content type of the answer's head.
    fn answer_type(self) -> &'static str {
        match self {
            Self::SseProgress | Self::SseDefault => "text/event-stream",
            Self::Plain | Self::Park => "application/json",
        }
    }

    /// Whether the answer's head arrives before the decision (so the opening limit can
    /// be released on it).
    fn head_first(self) -> bool {
        matches!(self, Self::SseProgress | Self::SseDefault | Self::Park)
    }

    fn gateway_lines(self) -> &'static str {
        match self {
            Self::Park => "  max_wait: 5m\n",
            _ => "  max_wait: 5m\n  max_plain_wait: 5m\n",
        }
    }
}

/// Counters shared by the client tasks of one memory run.
#[derive(Default)]
struct HeldCounters {
    /// Answer heads of the expected kind (200 with the kind's content type).
    heads: AtomicUsize,
    /// Answers that ended (the final JSON-RPC result was read).
    done: AtomicUsize,
    /// Connection failures and answers of another kind.
    bad: AtomicUsize,
    /// Final results that say `approval_denied`.
    denied: AtomicUsize,
    /// Final results that say `approval_pending` (park).
    pending: AtomicUsize,
}

/// One raw-TCP client: sends the call and reads until the final JSON-RPC result.
async fn held_client(
    addr: SocketAddr,
    kind: ClientKind,
    i: usize,
    permit: tokio::sync::OwnedSemaphorePermit,
    n: Arc<HeldCounters>,
) {
    let mut permit = Some(permit);
    let progress = kind == ClientKind::SseProgress;
    let body = deploy(1_000_000 + i as i64, &format!("mem-{i}"), progress).to_string();
    let close = if kind == ClientKind::Park {
        "connection: close\r\n"
    } else {
        ""
    };
    let req = format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\naccept: {}\r\n{close}content-length: {}\r\n\r\n{body}",
        kind.accept(),
        body.len()
    );
    let Ok(mut s) = TcpStream::connect(addr).await else {
        n.bad.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if s.write_all(req.as_bytes()).await.is_err() {
        n.bad.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if !kind.head_first() {
        permit.take();
    }
    let mut buf = vec![0u8; 2048];
    let mut acc: Vec<u8> = Vec::new();
    let mut headers_seen = false;
    loop {
        let read = match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        acc.extend_from_slice(&buf[..read]);
        if !headers_seen {
            let Some(end) = acc.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            headers_seen = true;
            let head = String::from_utf8_lossy(&acc[..end]).to_ascii_lowercase();
            if head.starts_with("http/1.1 200") && head.contains(kind.answer_type()) {
                n.heads.fetch_add(1, Ordering::Relaxed);
            } else {
                n.bad.fetch_add(1, Ordering::Relaxed);
            }
            permit.take();
            acc.drain(..end + 4);
        }
        // The final message is the JSON-RPC answer (it has "result").
        if let Some(pos) = acc.windows(8).position(|w| w == b"\"result\"") {
            let tail = String::from_utf8_lossy(&acc[pos..]);
            if tail.contains("approval_denied") {
                n.denied.fetch_add(1, Ordering::Relaxed);
                break;
            }
            if tail.contains("approval_pending") {
                n.pending.fetch_add(1, Ordering::Relaxed);
                break;
            }
            if kind != ClientKind::Park {
                break;
            }
        }
        // Keep only a tail long enough to find the marker across reads.
        if acc.len() > 4096 {
            acc.drain(..acc.len() - 64);
        }
    }
    permit.take();
    n.done.fetch_add(1, Ordering::Relaxed);
}

async fn memory(held: usize, kind: ClientKind) {
    let limit = nofile_soft_limit();
    assert!(
        limit as usize >= held + 1000,
        "open-file limit {limit} is too low for {held} held calls: run `ulimit -n 20000` first"
    );
    let b = start(GwOpts {
        delivery: DeliveryMode::Ping,
        mode: if kind == ClientKind::Park {
            "park"
        } else {
            "hold"
        },
        // Production-like timers (keep-alive 15 s, progress 10 s, fallback poll 30 s);
        // no throttle configured (none by default).
        extra: kind.gateway_lines(),
    })
    .await;
    // No warm-up call: the OP has room for exactly 10,000 requests.
    wait_discovered(&b).await;
    let pid = b.gw.pid();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = proc_status_kb(pid, "VmRSS");
    let quiet_before = busy_box();

    let n = Arc::new(HeldCounters::default());
    let opening = Arc::new(Semaphore::new(256));
    let addr = b.gw.addr;
    let t_open = Instant::now();
    let mut tasks = Vec::with_capacity(held);
    for i in 0..held {
        let permit = opening.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(held_client(addr, kind, i, permit, n.clone())));
    }
    // Every call is waiting for its person once the OP has all of them pending.
    let end = Instant::now() + Duration::from_secs(180);
    loop {
        let p = b.op.pending().len();
        if p >= held {
            break;
        }
        if Instant::now() > end || n.bad.load(Ordering::Relaxed) > 0 {
            panic!(
                "only {p} of {held} calls reached the OP (answer heads {}, bad answers {})",
                n.heads.load(Ordering::Relaxed),
                n.bad.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let open_time = t_open.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = proc_status_kb(pid, "VmRSS");
    let hwm1 = proc_status_kb(pid, "VmHWM");
    let threads = proc_status_kb(pid, "Threads");
    let fds = fd_count(pid);
    // CPU the gateway spends just waiting (keep-alives, progress, record reads).
    let c0 = cpu_us(&pid.to_string());
    let w0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_cpu =
        (cpu_us(&pid.to_string()) - c0) as f64 / w0.elapsed().as_secs_f64() / 1e6 * 100.0;
    let quiet_held = busy_box();

    // Deny them all, at most ~1000 undelivered at a time, and wait for every held
    // answer to end (a parked call has ended already).
    let t_drain = Instant::now();
    let pending = b.op.pending();
    for (k, p) in pending.iter().enumerate() {
        b.op.decide(&p.id, false).await.unwrap();
        if kind != ClientKind::Park && k % 250 == 249 {
            let until = Instant::now() + Duration::from_secs(30);
            while k + 1 > n.done.load(Ordering::Relaxed) + 1000 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let until = Instant::now() + Duration::from_secs(120);
    while n.done.load(Ordering::Relaxed) < held && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_time = t_drain.elapsed();
    for t in tasks {
        t.abort();
    }
    let per_call = (rss1 as f64 - rss0 as f64) * 1024.0 / held as f64;
    let ended = match kind {
        ClientKind::Park => format!(
            "{} answered at once with approval_pending",
            n.pending.load(Ordering::Relaxed)
        ),
        _ => format!(
            "{} ended with approval_denied",
            n.denied.load(Ordering::Relaxed)
        ),
    };
    println!(
        "| {} | {held} | {} | {:.1} | {:.1} | {:.1} | **{:.1}** | {threads} / {fds} | {idle_cpu:.1} % | {:.1} s; {ended} |",
        kind.label(),
        n.heads.load(Ordering::Relaxed),
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        hwm1 as f64 / 1024.0,
        per_call / 1024.0,
        drain_time.as_secs_f64(),
    );
    eprintln!(
        "  [memory {kind:?}] open {:.1} s; quiet box before/holding: {quiet_before} / {quiet_held}",
        open_time.as_secs_f64()
    );
}

// --- 3. CIBA requests per second ----------------------------------------------------------

async fn rps(secs: u64, conns: usize, round: usize) -> (u64, f64, u64, f64) {
    let b = start(GwOpts {
        delivery: DeliveryMode::Ping,
        mode: "park",
        extra: "  max_wait: 5m\n  ping_fallback_poll: 5m\n",
    })
    .await;
    wait_ready(&b, false).await;
    // Room at the OP: it counts every request it ever saw (until expiry + 10 min).
    let cap = (OP_CAPACITY - 200) as u64;
    let already = b.op.pending().len() as u64;
    let quiet_before = busy_box();
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let gw_pid = b.gw.pid().to_string();
    let (g0, s0) = (cpu_us(&gw_pid), cpu_us("self"));
    let t0 = Instant::now();
    let stop_at = t0 + Duration::from_secs(secs);
    let mut workers = Vec::new();
    for _ in 0..conns {
        let (http, addr, next, ok, other) = (
            b.http.clone(),
            b.gw.addr,
            next.clone(),
            ok.clone(),
            other.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cap - already || Instant::now() >= stop_at {
                    break;
                }
                let (v, _) = call(&http, addr, &deploy(i as i64, &format!("rps-{i}"), false)).await;
                if reason(&v) == "approval_pending" {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    other.fetch_add(1, Ordering::Relaxed);
                    if other.load(Ordering::Relaxed) <= 3 {
                        eprintln!("  [rps] unexpected answer: {v}");
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let window = t0.elapsed();
    let answered = ok.load(Ordering::Relaxed);
    let at_op_window_end = b.op.pending().len() as u64 - already;
    // Every answered call started a CIBA request; wait until the OP has them all.
    let until = Instant::now() + Duration::from_secs(60);
    let mut at_op = at_op_window_end;
    while at_op < answered && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
        at_op = b.op.pending().len() as u64 - already;
    }
    let all = t0.elapsed();
    let (g1, s1) = (cpu_us(&gw_pid), cpu_us("self"));
    let quiet_after = busy_box();
    println!(
        "| {round} | {conns} | {:.2} | {answered} | {} | {:.0} | {:.0} | {at_op} | {:.2} | {:.0} | {:.0} | {:.0} |",
        window.as_secs_f64(),
        other.load(Ordering::Relaxed),
        answered as f64 / window.as_secs_f64(),
        at_op_window_end as f64 / window.as_secs_f64(),
        all.as_secs_f64(),
        at_op as f64 / all.as_secs_f64(),
        (g1 - g0) as f64 / at_op.max(1) as f64,
        (s1 - s0) as f64 / at_op.max(1) as f64,
    );
    eprintln!("  [rps round {round}] quiet box before/after: {quiet_before} / {quiet_after}");
    (answered, window.as_secs_f64(), at_op, all.as_secs_f64())
}

fn main() {
    let only = std::env::var("APPROVALS_ONLY").unwrap_or_else(|_| "latency,memory,rps".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("\nciba-gate approvals benchmark; gateway = {GATEWAY} (child process); OP, upstream, clients in this process");
        println!("quiet box at start (no other rustc/cargo/cc/ld): {}\n", busy_box());
        if only.contains("latency") {
            let n = env_num("APPROVALS_N", 500) as usize;
            let warmup = env_num("APPROVALS_WARMUP", 20) as usize;
            println!("### 1. Callback → upstream latency ({n} calls one at a time, {warmup} warm-up calls not counted)\n");
            println!("| delivery | interval | calls | p50 ms | p90 ms | p99 ms | max ms | mean ms |");
            println!("|---|---|---:|---:|---:|---:|---:|---:|");
            latency(DeliveryMode::Ping, n, warmup).await;
            latency(DeliveryMode::Push, n, warmup).await;
            println!();
        }
        if only.contains("memory") {
            let held = env_num("APPROVALS_HELD", 10_000) as usize;
            let kinds = std::env::var("APPROVALS_KINDS")
                .unwrap_or_else(|_| "sse-progress,sse-default,plain,park".into());
            println!("### 2. Memory with {held} calls waiting for a person at once, per client kind\n");
            println!("| client kind | calls | answer heads | VmRSS before MB | VmRSS waiting MB | VmHWM MB | KB per call | threads / fds | CPU while waiting | deny all + drain |");
            println!("|---|---:|---:|---:|---:|---:|---:|---|---:|---|");
            for name in kinds.split(',') {
                let kind = ClientKind::parse(name.trim())
                    .unwrap_or_else(|| panic!("APPROVALS_KINDS: unknown kind {name:?}"));
                memory(held, kind).await;
            }
            println!();
        }
        if only.contains("rps") {
            let secs = env_num("APPROVALS_RPS_SECS", 5);
            let conns = env_num("APPROVALS_RPS_CONNS", 32) as usize;
            let rounds = env_num("APPROVALS_RPS_ROUNDS", 5) as usize;
            println!("### 3. CIBA requests started per second (park mode, ≤ {secs} s or {} calls per round)\n", OP_CAPACITY - 200);
            println!("| round | conns | window s | answered approval_pending | other answers | answered/s | at OP by window end /s | at OP total | until all at OP s | CIBA req/s (all at OP) | gateway CPU µs/req | OP+client CPU µs/req |");
            println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            let (mut answered, mut window, mut at_op, mut all) = (0, 0.0, 0, 0.0);
            for r in 1..=rounds {
                let (a, w, o, t) = rps(secs, conns, r).await;
                answered += a;
                window += w;
                at_op += o;
                all += t;
            }
            println!(
                "| all | {conns} | {window:.2} | {answered} | | {:.0} | | {at_op} | {all:.2} | {:.0} | | |",
                answered as f64 / window,
                at_op as f64 / all
            );
            println!();
        }
    });
    // Held client sockets and the OP go with the runtime.
    rt.shutdown_timeout(Duration::from_secs(2));
}
