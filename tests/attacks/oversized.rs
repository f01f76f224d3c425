//! Tool servers that push against the gateway's limits: an SSE event that never ends, an
//! answer of 100 MB. What the gateway must inspect it holds only up to a limit, then
//! answers with a typed error; what it need not inspect it streams without holding.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::harness::Gate;

const HUNDRED_MB: usize = 100 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

#[derive(Clone, Copy)]
enum Answer {
    /// `text/event-stream` whose first event never ends (no blank line, 100 MB).
    EndlessEvent,
    /// `application/json` of 100 MB (a valid JSON-RPC response padded with spaces).
    HugeJson,
}

async fn start(answer: Answer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let id = msg["id"].clone();
                    let (ctype, head, fill) = match answer {
                        Answer::EndlessEvent => (
                            "text/event-stream",
                            Bytes::from("event: message\ndata: "),
                            b'a',
                        ),
                        Answer::HugeJson => (
                            "application/json",
                            Bytes::from(
                                json!({"jsonrpc": "2.0", "id": id, "result": {"tools": []}})
                                    .to_string(),
                            ),
                            b' ',
                        ),
                    };
                    let chunks = std::iter::once(head)
                        .chain((0..HUNDRED_MB / CHUNK).map(move |_| Bytes::from(vec![fill; CHUNK])))
                        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
                    let body = StreamBody::new(futures_util::stream::iter(chunks));
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", ctype)
                            .body(body)
                            .unwrap(),
                    )
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn post(gate: &Gate, body: Value) -> (u16, String, Vec<u8>) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let req = Request::post(format!("http://{}/mcp", gate.addr))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let mut body = resp.into_body().into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), body.next())
        .await
        .unwrap()
    {
        out.extend_from_slice(&chunk.unwrap());
    }
    (status, ctype, out)
}

fn gate_for(addr: SocketAddr) -> String {
    format!("  - {{name: tools, kind: mcp, mount: /mcp, url: \"http://{addr}/mcp\"}}")
}

const SMALL_LIMIT: &str = "limits: {max_inspected_response_bytes: 1048576}";

#[tokio::test]
async fn an_sse_event_that_never_ends_is_cut_at_the_limit_and_the_list_gets_an_error() {
    let gate = crate::harness::gate_with(
        &gate_for(start(Answer::EndlessEvent).await),
        SMALL_LIMIT,
        crate::harness::POLICIES,
    )
    .await;
    let (status, ctype, body) = post(
        &gate,
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/event-stream"));
    // Nothing of the unfilterable event reached the agent; its request got an error.
    assert!(body.len() < 4096, "{} bytes passed", body.len());
    let text = String::from_utf8(body).unwrap();
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("an error event");
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["id"], 7);
    assert_eq!(v["error"]["data"]["reason"], "upstream_answer_too_large");
}

#[tokio::test]
async fn a_100_mb_answer_to_filter_is_refused_with_a_typed_error() {
    let gate = crate::harness::gate_with(
        &gate_for(start(Answer::HugeJson).await),
        SMALL_LIMIT,
        crate::harness::POLICIES,
    )
    .await;
    let (status, _, body) = post(
        &gate,
        json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list"}),
    )
    .await;
    assert_eq!(status, 502);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["error"]["data"]["reason"], "upstream_answer_too_large");
}

#[tokio::test]
async fn a_100_mb_answer_the_gateway_need_not_read_streams_through_whole() {
    let gate = crate::harness::gate_with(
        &gate_for(start(Answer::HugeJson).await),
        SMALL_LIMIT,
        crate::harness::POLICIES,
    )
    .await;
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "list_deployments", "arguments": {}}});
    let (status, _, body) = post(&gate, call).await;
    assert_eq!(status, 200);
    assert!(body.len() > HUNDRED_MB, "{}", body.len());
}
