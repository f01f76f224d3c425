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
    /// The `Authorization` header of each request, in the order of `calls`.
    pub authorizations: Arc<Mutex<Vec<Option<String>>>>,
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
                            let authorization = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let mut calls = seen.calls.lock().unwrap();
                            seen.authorizations.lock().unwrap().push(authorization);
                            calls.push(v.clone());
                            drop(calls);
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

    /// The `Authorization` each call of `tool` (MCP `tools/call`) arrived with.
    pub fn authorization_of(&self, tool: &str) -> Vec<Option<String>> {
        let calls = self.calls.lock().unwrap();
        let auth = self.authorizations.lock().unwrap();
        calls
            .iter()
            .zip(auth.iter())
            .filter(|(c, _)| c["params"]["name"] == tool)
            .map(|(_, a)| a.clone())
            .collect()
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
