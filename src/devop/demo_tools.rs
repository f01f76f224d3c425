//! A small MCP Streamable HTTP tool server for demos and benchmarks (JSON responses,
//! stateless). Tools: `list_deployments` (read-only), `deploy_service {service, env}`,
//! `delete_repository {repo}`. It only pretends: nothing is deployed or deleted.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const SUPPORTED: [&str; 4] = ["2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"];
const LATEST_STATEFUL: &str = "2025-11-25";

/// Binds and serves in the background; returns the bound address.
pub async fn spawn(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener));
    Ok(local)
}

pub async fn serve(listener: TcpListener) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let _ = builder
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(|r| async { Ok::<_, Infallible>(handle(r).await) }),
                )
                .await;
        });
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(v).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/mcp" {
        return json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"}));
    }
    if req.method() != Method::POST {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return r;
    }
    let Ok(body) = Limited::new(req.into_body(), 4 << 20).collect().await else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "unreadable body"}),
        );
    };
    let Ok(value) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "parse error"}}),
        );
    };
    match value {
        Value::Array(items) => {
            let answers: Vec<Value> = items.iter().filter_map(answer).collect();
            if answers.is_empty() {
                accepted()
            } else {
                json_response(StatusCode::OK, &Value::Array(answers))
            }
        }
        one => match answer(&one) {
            Some(a) => json_response(StatusCode::OK, &a),
            None => accepted(),
        },
    }
}

fn accepted() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

/// The answer to one message (`None` for notifications and responses).
fn answer(msg: &Value) -> Option<Value> {
    let id = msg.get("id")?.clone();
    let method = msg.get("method")?.as_str()?;
    let params = msg.get("params").cloned().unwrap_or(json!({}));
    let stateless = params
        .pointer("/_meta/io.modelcontextprotocol~1protocolVersion")
        .and_then(Value::as_str)
        .is_some();
    let result = match method {
        "initialize" => {
            let asked = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or(LATEST_STATEFUL);
            let version = if SUPPORTED.contains(&asked) {
                asked
            } else {
                LATEST_STATEFUL
            };
            Ok(json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "ciba-gate-demo-tools", "version": env!("CARGO_PKG_VERSION")},
            }))
        }
        // A 2026-07-28 method: its result always has that revision's shape.
        "server/discover" => Ok(json!({
            "supportedVersions": SUPPORTED,
            "capabilities": {"tools": {"listChanged": false}},
            "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "ciba-gate-demo-tools", "version": env!("CARGO_PKG_VERSION")}},
            "resultType": "complete",
            "ttlMs": 0,
            "cacheScope": "private",
        })),
        "ping" => Ok(json!({})),
        "tools/list" => {
            let mut list = json!({"tools": tools()});
            if stateless {
                // 2026-07-28 list results say how long they may be cached, and by whom.
                list["ttlMs"] = json!(0);
                list["cacheScope"] = json!("private");
            }
            Ok(list)
        }
        "tools/call" => call(&params),
        _ => Err((-32601, format!("method not found: {method}"))),
    };
    Some(match result {
        Ok(mut r) => {
            if stateless {
                r["resultType"] = json!("complete");
            }
            json!({"jsonrpc": "2.0", "id": id, "result": r})
        }
        Err((code, message)) => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
        }
    })
}

fn tools() -> Value {
    json!([
        {
            "name": "list_deployments",
            "description": "List the services deployed in each environment.",
            "inputSchema": {"type": "object", "properties": {"env": {"type": "string"}}},
            "annotations": {"readOnlyHint": true},
        },
        {
            "name": "deploy_service",
            "description": "Deploy a service to an environment.",
            "inputSchema": {
                "type": "object",
                "properties": {"service": {"type": "string"}, "env": {"type": "string"}},
                "required": ["service", "env"],
            },
            "annotations": {"readOnlyHint": false, "destructiveHint": false},
        },
        {
            "name": "delete_repository",
            "description": "Delete a source repository.",
            "inputSchema": {"type": "object", "properties": {"repo": {"type": "string"}}, "required": ["repo"]},
            "annotations": {"destructiveHint": true},
        },
    ])
}

fn text(t: String) -> Value {
    json!({"content": [{"type": "text", "text": t}], "isError": false})
}

fn call(params: &Value) -> Result<Value, (i64, String)> {
    let name = params.get("name").and_then(Value::as_str).unwrap_or("");
    let args = params.get("arguments").cloned().unwrap_or(json!({}));
    let arg = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_string);
    match name {
        "list_deployments" => {
            let env = arg("env");
            let rows = [
                ("payments", "prod", "v2.14.1"),
                ("payments", "staging", "v2.15.0"),
                ("search", "prod", "v7.2.0"),
            ];
            let lines: Vec<String> = rows
                .iter()
                .filter(|(_, e, _)| env.as_deref().is_none_or(|want| want == *e))
                .map(|(s, e, v)| format!("{s} {e} {v}"))
                .collect();
            Ok(text(lines.join("\n")))
        }
        "deploy_service" => match (arg("service"), arg("env")) {
            (Some(s), Some(e)) => Ok(text(format!("Deployed {s} to {e}."))),
            _ => Err((-32602, "deploy_service needs service and env".into())),
        },
        "delete_repository" => match arg("repo") {
            Some(r) => Ok(text(format!("Deleted repository {r}."))),
            None => Err((-32602, "delete_repository needs repo".into())),
        },
        _ => Err((-32602, format!("unknown tool: {name}"))),
    }
}
