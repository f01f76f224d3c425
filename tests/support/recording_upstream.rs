//! A tool server for tests: answers every JSON-RPC request with a successful tool
//! result ("done") and records every body it receives, so a test can prove what the
//! gateway forwarded — and, above all, what it did not.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

#[derive(Clone, Default)]
pub struct RecordingUpstream {
    pub calls: Arc<Mutex<Vec<Value>>>,
}

impl RecordingUpstream {
    /// Listens on a free loopback port until the test's runtime ends.
    pub async fn start() -> (SocketAddr, RecordingUpstream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = RecordingUpstream::default();
        let seen = up.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            seen.calls.lock().unwrap().push(v.clone());
                            let answer = match v.get("id") {
                                Some(id) => json!({"jsonrpc": "2.0", "id": id,
                                    "result": {"content": [{"type": "text", "text": "done"}], "isError": false}}),
                                None => json!({"ok": true}),
                            };
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

    /// Every tool call received: MCP `tools/call` bodies and plain HTTP tool bodies.
    pub fn tool_calls(&self) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c["method"] == "tools/call" || c.get("method").is_none())
            .cloned()
            .collect()
    }

    /// How many MCP `tools/call` of `tool` were received.
    pub fn count(&self, tool: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c["method"] == "tools/call" && c["params"]["name"] == tool)
            .count()
    }
}
