//! The ping race: approvals timed to land at the fallback-poll boundary, so that the
//! OP's ping and the gateway's fallback poll both want to redeem the same grant.
//!
//! Topology: the development OP (ping delivery, `interval: 1`), one or two gateways
//! (memory store, or Redis shared by two replicas) with `ping_fallback_poll: 1s`, and a
//! recording tool server. The OP pings replica B's callback; calls go to the replicas in
//! turn, so with two replicas half the races are between B's ping handler and A's poll.
//! Each call asks for its own approval (the arguments differ); the test approves each
//! request on the OP about one fallback interval after the OP saw it (±40 ms), which is
//! when the gateway's poll is due. Counts only, never timings: the OP counts token
//! requests per grant, the tool server counts forwards, the agent counts answers.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use ciba_gate::devop::op::{DeliveryMode, DevClient, DevOp, DevOpConfig, DevOpStats};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::RedisServer;
use super::gateway::Gate;
use super::recording_upstream::RecordingUpstream;

const SECRET: &str = "race-client-secret-3c9f1d";
const USER: &str = "alice@example.com";
const STATE_KEY: &str = "4f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff";
/// The gateways' fallback poll (and the OP's interval): the boundary approvals aim at.
pub const FALLBACK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Memory,
    Redis,
    /// Two replicas sharing one Redis; the OP pings replica B.
    TwoReplicasRedis,
}

pub struct Race {
    pub op: DevOp,
    pub gates: Vec<Gate>,
    pub upstream: RecordingUpstream,
    _redis: Option<RedisServer>,
}

/// What a race run ended with.
#[derive(Debug, Default)]
pub struct Outcome {
    pub approvals: usize,
    /// Calls answered with the tool's result.
    pub forwarded: usize,
    /// Calls answered anything else (an approval a person gave, lost).
    pub lost: Vec<String>,
    /// Tool calls the tool server received.
    pub upstream_calls: usize,
    pub op: DevOpStats,
    /// Token requests the gateways put off because another party (the ping handler,
    /// the poll loop, the other replica) held the grant's redemption claim: how often
    /// the race was actually run into (`ciba_gate_token_requests_deferred_total`).
    pub deferred: u64,
}

fn free_port() -> u16 {
    super::free_port()
}

impl Race {
    pub async fn start(topology: Topology) -> Race {
        let (up_addr, upstream) = RecordingUpstream::start().await;
        let callback_ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
        // The OP pings the last replica.
        let replicas = if topology == Topology::TwoReplicasRedis {
            2
        } else {
            1
        };
        let ping_to = callback_ports[replicas - 1];
        let op = DevOp::spawn(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            DevOpConfig {
                clients: vec![DevClient {
                    client_id: "gate".into(),
                    secret: SECRET.into(),
                    delivery: DeliveryMode::Ping,
                    notification_endpoint: Some(format!(
                        "http://127.0.0.1:{ping_to}/ciba/callback"
                    )),
                }],
                users: vec![USER.into()],
                interval: Some(FALLBACK.as_secs()),
                default_expiry: 60,
                ..DevOpConfig::default()
            },
        )
        .await
        .unwrap();
        let redis = (topology != Topology::Memory).then(RedisServer::start);
        let store = match &redis {
            Some(r) => format!(
                "store: {{kind: redis, url: \"{}\", key_prefix: \"race:\", connect_timeout: 2s, response_timeout: 2s}}\n",
                r.url()
            ),
            None => String::new(),
        };
        let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
        let mut gates = Vec::new();
        for port in callback_ports.iter().take(replicas) {
            let dir = tempfile::tempdir().unwrap().keep();
            std::fs::write(dir.join("secret"), SECRET).unwrap();
            std::fs::write(dir.join("state-key"), STATE_KEY).unwrap();
            let yaml = format!(
                r#"
agent: {{id: billing-agent, namespace: agents}}
policy: {{dir: "{policies}", reload_interval: 0s}}
upstreams:
  - {{name: tools, kind: mcp, mount: /mcp, url: "http://{up_addr}/mcp"}}
{store}approvals:
  op:
    issuer: "{issuer}"
    client_id: gate
    client_auth: {{method: client_secret_basic, secret: {{file: secret}}}}
    delivery: ping
    allow_insecure_http: true
  user: {{value: "{USER}"}}
  binding_message_profile: ciba-gate-dev
  mode: hold
  max_wait: 60s
  ping_fallback_poll: {fallback}s
  state_key: {{file: state-key}}
  callback: {{listen: "127.0.0.1:{port}", insecure_http: true}}
"#,
                issuer = op.issuer(),
                fallback = FALLBACK.as_secs(),
            );
            let gate = Gate::start(&dir, &yaml).await;
            gate.approvals_ready().await;
            gates.push(gate);
        }
        Race {
            op,
            gates,
            upstream,
            _redis: redis,
        }
    }

    /// Runs `n` approvals, `batch` at a time, each approved at the boundary.
    pub async fn run(&self, n: usize, batch: usize) -> Outcome {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(batch)
            .build()
            .unwrap();
        let mut out = Outcome {
            approvals: n,
            ..Outcome::default()
        };
        let mut seen: HashSet<String> = HashSet::new();
        let mut next = 0usize;
        while next < n {
            let this_batch = batch.min(n - next);
            let mut calls = Vec::new();
            for i in next..next + this_batch {
                let addr = self.gates[i % self.gates.len()].addr;
                calls.push(tokio::spawn(call(client.clone(), addr, i)));
            }
            next += this_batch;
            // Approve each new request one fallback interval after it appeared (±40 ms).
            let mut approvals = Vec::new();
            let mut found = 0;
            let give_up = Instant::now() + Duration::from_secs(30);
            while found < this_batch {
                assert!(
                    Instant::now() < give_up,
                    "the OP saw only {found} of {this_batch} requests"
                );
                for p in self.op.pending() {
                    if seen.insert(p.id.clone()) {
                        let offset_ms = (seen.len() % 9) as i64 * 10 - 40;
                        let at = Instant::now() + FALLBACK;
                        let at = if offset_ms < 0 {
                            at - Duration::from_millis(offset_ms.unsigned_abs())
                        } else {
                            at + Duration::from_millis(offset_ms as u64)
                        };
                        let op_id = p.id.clone();
                        let op = self.op_handle();
                        approvals.push(tokio::spawn(async move {
                            tokio::time::sleep_until(at).await;
                            op.decide(&op_id).await
                        }));
                        found += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            for a in approvals {
                a.await.unwrap();
            }
            for c in calls {
                let (i, answer) = c.await.unwrap();
                if answer == "done" {
                    out.forwarded += 1;
                } else {
                    out.lost.push(format!("call {i}: {answer}"));
                }
            }
        }
        out.upstream_calls = self.upstream.count("deploy_service");
        out.op = self.op.stats();
        out.deferred = self.deferred().await;
        out
    }

    /// The deferred-token-request counter (one registry per test process).
    async fn deferred(&self) -> u64 {
        let text = reqwest::get(format!("http://{}/metrics", self.gates[0].admin_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with("ciba_gate_token_requests_deferred_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    fn op_handle(&self) -> Decider {
        Decider {
            url: format!("{}/api/requests", self.op.issuer()),
            client: reqwest::Client::new(),
        }
    }
}

/// Approves on the OP's approval API, as the phone page does.
#[derive(Clone)]
struct Decider {
    url: String,
    client: reqwest::Client,
}

impl Decider {
    async fn decide(&self, id: &str) {
        let r = self
            .client
            .post(format!("{}/{id}/approve", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "approving {id}");
    }
}

/// One held call (a progress token asks to be held with progress, never parked); returns its index and the tool's text (or what came instead).
async fn call(client: reqwest::Client, addr: SocketAddr, i: usize) -> (usize, String) {
    // Each call its own approval: a different ticket makes a different fingerprint.
    let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
        "params": {"name": "deploy_service",
                   "arguments": {"service": "payments", "env": "prod", "ticket": i},
                   "_meta": {"progressToken": i}}});
    let resp = client
        .post(format!("http://{addr}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .timeout(Duration::from_secs(60))
        .body(body.to_string())
        .send()
        .await;
    let text = match resp {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => return (i, format!("transport error: {e}")),
    };
    // A JSON answer, or the last data event of an SSE stream.
    let answer = super::jsonrpc_answer(&text);
    let tool_text = answer["result"]["content"][0]["text"]
        .as_str()
        .map(str::to_string);
    match tool_text {
        Some(t) if answer["result"]["isError"] != true => (i, t),
        _ => (i, answer.to_string()),
    }
}

/// Asserts the guarantee: every approval a person gave reached the tool server exactly
/// once, and the OP was asked for each grant exactly once.
pub fn assert_one_redemption_per_grant(what: &str, o: &Outcome) {
    eprintln!(
        "{what}: {} approvals, {} forwarded, {} lost, OP: {} token requests, {} redemption requests, {} double redemptions, {} tokens issued; {} token requests deferred to the claim holder",
        o.approvals,
        o.forwarded,
        o.lost.len(),
        o.op.token_requests,
        o.op.redemption_requests,
        o.op.double_redemptions,
        o.op.tokens_issued,
        o.deferred,
    );
    let mut lost_kinds: HashMap<String, usize> = HashMap::new();
    for l in &o.lost {
        *lost_kinds
            .entry(l.split_once(": ").map_or(l.clone(), |(_, r)| r.to_string()))
            .or_default() += 1;
    }
    assert!(o.lost.is_empty(), "{what}: approvals lost: {lost_kinds:?}");
    assert_eq!(o.forwarded, o.approvals, "{what}: forwarded");
    assert_eq!(o.upstream_calls, o.approvals, "{what}: tool server calls");
    assert_eq!(
        o.op.approved as usize, o.approvals,
        "{what}: approved at the OP"
    );
    assert_eq!(o.op.double_redemptions, 0, "{what}: grants redeemed twice");
    assert_eq!(
        o.op.redemption_requests as usize, o.approvals,
        "{what}: token requests for approved grants"
    );
    assert_eq!(
        o.op.tokens_issued as usize, o.approvals,
        "{what}: tokens issued"
    );
}
