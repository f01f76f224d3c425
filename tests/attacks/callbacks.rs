//! The CIBA callback listener under attack by someone who holds the real client
//! notification token (it travels to the OP and back, so treat it as leakable): a push
//! with a forged ID token must be refused (4xx, never 204) and settle nothing, and a
//! notification body too large to be one must be refused 413 without being read to its
//! end. The OP here is a small scripted one whose signing key the test holds, so every
//! forgery is exactly one fault away from a genuine token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ciba_gate::ciba::at_hash;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::Gate;
use crate::support::recording_upstream::RecordingUpstream;

const CLIENT_ID: &str = "gate";
const KID: &str = "op-key";

/// A push-mode OP: discovery, its JWKS, and a backchannel endpoint that acknowledges
/// every request and remembers the `client_notification_token` it was given.
struct PushOp {
    issuer: String,
    key_pem: String,
    /// (auth_req_id, client_notification_token) of each request, in order.
    requests: Arc<Mutex<Vec<(String, String)>>>,
}

fn ec_pem() -> String {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem()
}

impl PushOp {
    async fn start() -> PushOp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let key_pem = ec_pem();
        let mut jwk = Jwk::from_encoding_key(
            &EncodingKey::from_ec_pem(key_pem.as_bytes()).unwrap(),
            Algorithm::ES256,
        )
        .unwrap();
        jwk.common.key_id = Some(KID.into());
        let discovery = json!({
            "issuer": issuer,
            "backchannel_authentication_endpoint": format!("{issuer}/backchannel"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
            "backchannel_token_delivery_modes_supported": ["push"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "grant_types_supported": ["urn:openid:params:grant-type:ciba"],
        });
        let jwks = json!({"keys": [jwk]});
        let requests: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (discovery, jwks, seen) = (discovery.clone(), jwks.clone(), seen.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (discovery, jwks, seen) =
                            (discovery.clone(), jwks.clone(), seen.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let (status, answer) = match path.as_str() {
                                "/.well-known/openid-configuration" => (200, discovery),
                                "/jwks" => (200, jwks),
                                "/backchannel" => {
                                    let form: Vec<(String, String)> =
                                        url::form_urlencoded::parse(&body).into_owned().collect();
                                    let token = form
                                        .iter()
                                        .find(|(k, _)| k == "client_notification_token")
                                        .map(|(_, v)| v.clone())
                                        .unwrap_or_default();
                                    let mut s = seen.lock().unwrap();
                                    let id = format!("push-req-{}", s.len() + 1);
                                    s.push((id.clone(), token));
                                    (200, json!({"auth_req_id": id, "expires_in": 60}))
                                }
                                _ => (400, json!({"error": "unauthorized_client"})),
                            };
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(answer.to_string())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        PushOp {
            issuer,
            key_pem,
            requests,
        }
    }

    /// Waits for the gateway's authentication request: its auth_req_id and token.
    async fn request(&self) -> (String, String) {
        for _ in 0..500 {
            if let Some(r) = self.requests.lock().unwrap().first().cloned() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the gateway never sent its authentication request");
    }
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// The claims of a genuine push ID token for `auth_req_id` and `access_token`.
fn genuine_claims(issuer: &str, auth_req_id: &str, access_token: &str) -> Value {
    json!({
        "iss": issuer,
        "sub": "user-7",
        "aud": CLIENT_ID,
        "iat": now(),
        "exp": now() + 300,
        "auth_time": now() - 2,
        "urn:openid:params:jwt:claim:auth_req_id": auth_req_id,
        "at_hash": at_hash(access_token, Algorithm::ES256).unwrap(),
    })
}

fn sign(pem: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(KID.into());
    jsonwebtoken::encode(
        &h,
        claims,
        &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn push_body(auth_req_id: &str, access_token: &str, id_token: &str) -> Value {
    json!({"auth_req_id": auth_req_id, "access_token": access_token, "token_type": "Bearer",
           "expires_in": 600, "id_token": id_token})
}

struct Setup {
    op: PushOp,
    gate: Gate,
    upstream: RecordingUpstream,
    callback: String,
    callback_addr: SocketAddr,
}

async fn setup() -> Setup {
    let op = PushOp::start().await;
    let (up_addr, upstream) = RecordingUpstream::start().await;
    let port = crate::support::free_port();
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(dir.join("secret"), "push-client-secret-77a1").unwrap();
    let policies = crate::harness::POLICIES;
    let yaml = format!(
        r#"
agent: {{id: billing-agent, namespace: agents}}
policy: {{dir: "{policies}", reload_interval: 0s}}
upstreams:
  - {{name: tools, kind: mcp, mount: /mcp, url: "http://{up_addr}/mcp"}}
approvals:
  op:
    issuer: "{issuer}"
    client_id: {CLIENT_ID}
    client_auth: {{method: client_secret_basic, secret: {{file: secret}}}}
    delivery: push
    allow_insecure_http: true
  user: {{value: "alice@example.com"}}
  binding_message_profile: ciba-gate-dev
  mode: hold
  max_wait: 60s
  callback: {{listen: "127.0.0.1:{port}", insecure_http: true}}
"#,
        issuer = op.issuer,
    );
    let gate = Gate::start(&dir, &yaml).await;
    gate.approvals_ready().await;
    Setup {
        op,
        gate,
        upstream,
        callback: format!("http://127.0.0.1:{port}/ciba/callback"),
        callback_addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

/// One held deploy call; resolves to the tool's text or the gateway's refusal.
fn held_call(addr: SocketAddr) -> tokio::task::JoinHandle<Value> {
    tokio::spawn(async move {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "deploy_service", "arguments": {"service": "payments", "env": "prod"},
                       "_meta": {"progressToken": "held"}}});
        let text = reqwest::Client::new()
            .post(format!("http://{addr}/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .timeout(Duration::from_secs(60))
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        crate::support::jsonrpc_answer(&text)
    })
}

async fn metric(gate: &Gate, line_prefix: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", gate.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(line_prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_with_the_real_token_but_a_forged_id_token_never_settles_the_approval() {
    let s = setup().await;
    let call = held_call(s.gate.addr);
    let (auth_req_id, token) = s.op.request().await;
    assert!(!token.is_empty(), "push mode sends a notification token");
    let at = "access-token-0123456789abcdef";
    let genuine = genuine_claims(&s.op.issuer, &auth_req_id, at);
    let with = |k: &str, v: Value| {
        let mut c = genuine.clone();
        c[k] = v;
        c
    };
    let mut expired = with("exp", json!(now() - 3600));
    expired["iat"] = json!(now() - 4000);
    let attacker_pem = ec_pem();
    let forgeries: Vec<(&str, String)> = vec![
        (
            "bad signature (another key, the OP's kid)",
            sign(&attacker_pem, &genuine),
        ),
        (
            "wrong issuer",
            sign(&s.op.key_pem, &with("iss", json!("https://evil.example"))),
        ),
        (
            "wrong audience",
            sign(&s.op.key_pem, &with("aud", json!("another-client"))),
        ),
        (
            "bound to another auth_req_id",
            sign(
                &s.op.key_pem,
                &with(
                    "urn:openid:params:jwt:claim:auth_req_id",
                    json!("push-req-999"),
                ),
            ),
        ),
        ("expired", sign(&s.op.key_pem, &expired)),
        (
            "at_hash of another access token",
            sign(
                &s.op.key_pem,
                &with(
                    "at_hash",
                    json!(at_hash("another-access-token", Algorithm::ES256).unwrap()),
                ),
            ),
        ),
        ("not a JWT", "e.y.z".to_string()),
    ];
    let c = reqwest::Client::new();
    let before = metric(
        &s.gate,
        "ciba_gate_op_errors_total{code=\"invalid_id_token\"}",
    )
    .await;
    for (what, id_token) in &forgeries {
        let r = c
            .post(&s.callback)
            .bearer_auth(&token)
            .json(&push_body(&auth_req_id, at, id_token))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert!(
            (400..500).contains(&status),
            "{what}: answered {status} {body}, not a 4xx"
        );
        assert!(!call.is_finished(), "{what}: the held call was settled");
    }
    assert!(
        s.upstream.tool_calls().is_empty(),
        "nothing forwarded on a forged push"
    );
    let after = metric(
        &s.gate,
        "ciba_gate_op_errors_total{code=\"invalid_id_token\"}",
    )
    .await;
    assert!(
        after - before >= forgeries.len() as f64,
        "each forgery counted ({before} -> {after})"
    );
    // The OP's genuine push still completes the approval: nothing was settled before.
    let r = c
        .post(&s.callback)
        .bearer_auth(&token)
        .json(&push_body(&auth_req_id, at, &sign(&s.op.key_pem, &genuine)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let answer = call.await.unwrap();
    assert_eq!(
        answer["result"]["content"][0]["text"], "done",
        "the genuine push completes the call: {answer}"
    );
    assert_eq!(s.upstream.tool_calls().len(), 1);
    // A replay of the genuine push changes nothing.
    let r = c
        .post(&s.callback)
        .bearer_auth(&token)
        .json(&push_body(&auth_req_id, at, &sign(&s.op.key_pem, &genuine)))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    assert_eq!(s.upstream.tool_calls().len(), 1);
}

/// Reads from `stream` until a full HTTP status line arrived; returns the status code.
async fn read_status(stream: &mut tokio::net::tcp::OwnedReadHalf) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]).to_string();
            return line.split(' ').nth(1)?.parse().ok();
        }
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_callback_body_is_refused_413_and_never_read_to_its_end() {
    let s = setup().await;
    let call = held_call(s.gate.addr);
    let (auth_req_id, token) = s.op.request().await;
    let limit = ciba_gate::approval::callback::MAX_BODY;
    let before = metric(
        &s.gate,
        "ciba_gate_limits_exceeded_total{limit=\"callback_body\"}",
    )
    .await;

    // A declared length over the limit: refused before anything is read.
    let r = reqwest::Client::new()
        .post(&s.callback)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(vec![b' '; 4 * limit])
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 413),
        // The listener may close before the client finished sending the body; the
        // raw-socket case below checks the answer itself.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }

    // A chunked body that never ends: the answer comes once the limit is passed, while
    // the sender is still sending (so it was never buffered to its end).
    let stream = TcpStream::connect(s.callback_addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /ciba/callback HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    let writer = tokio::spawn(async move {
        let chunk = vec![b' '; 16 * 1024];
        let frame = [
            format!("{:x}\r\n", chunk.len()).into_bytes(),
            chunk,
            b"\r\n".to_vec(),
        ]
        .concat();
        // Up to 100 MB, never the final chunk; stops when the listener hangs up.
        for _ in 0..6400 {
            if wr.write_all(&frame).await.is_err() {
                return;
            }
        }
        // Keep the connection open, the body unfinished.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(wr);
    });
    let status = read_status(&mut rd).await;
    assert_eq!(status, Some(413), "an endless body is cut at the limit");
    writer.abort();

    let after = metric(
        &s.gate,
        "ciba_gate_limits_exceeded_total{limit=\"callback_body\"}",
    )
    .await;
    assert!(after - before >= 2.0, "counted ({before} -> {after})");
    assert!(!call.is_finished(), "an oversized body settles nothing");
    assert!(s.upstream.tool_calls().is_empty());
    // The OP's genuine push (a few KiB) is still taken.
    let at = "access-token-after-413";
    let id_token = sign(
        &s.op.key_pem,
        &genuine_claims(&s.op.issuer, &auth_req_id, at),
    );
    let r = reqwest::Client::new()
        .post(&s.callback)
        .bearer_auth(&token)
        .json(&push_body(&auth_req_id, at, &id_token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(call.await.unwrap()["result"]["content"][0]["text"], "done");
}
