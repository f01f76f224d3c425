//! What the attack tests run against: the gateway (in process, bundled policies, evidence
//! kept in memory), foreign tool servers, and a client that speaks raw bytes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::ChildGuard;

pub const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");

pub use crate::support::gateway::Gate;

/// Starts a gateway whose `upstreams:` section is `upstreams` (YAML list items), with
/// `extra` top-level YAML and the policies in `policies`.
pub async fn gate_with(upstreams: &str, extra: &str, policies: &str) -> Gate {
    let dir = tempfile::tempdir().unwrap().keep();
    let text = format!(
        "agent: {{id: attack-agent}}\npolicy: {{dir: \"{policies}\", reload_interval: 0s}}\n{extra}\nupstreams:\n{upstreams}\n"
    );
    Gate::start(&dir, &text).await
}

/// A gateway with the bundled policies in front of `upstreams`.
pub async fn gate(upstreams: &str) -> Gate {
    gate_with(upstreams, "", POLICIES).await
}

/// The Python `http.server` tool server of tests/peers/naive_mcp_server.py.
pub struct NaiveUpstream {
    pub addr: SocketAddr,
    log: PathBuf,
    _child: ChildGuard,
}

impl NaiveUpstream {
    /// `mode`: how it reads duplicate JSON keys: `last`, `first` or `strict`.
    pub fn start(mode: &str) -> NaiveUpstream {
        let dir = tempfile::tempdir().unwrap().keep();
        let log = dir.join("requests.jsonl");
        let mut cmd = Command::new("python3");
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/naive_mcp_server.py"
        ))
        .arg(&log)
        .arg(mode);
        let mut child = ChildGuard::spawn(&format!("naive-{mode}"), cmd, &dir, true);
        let line = child.wait_for_stdout_line("READY ", Duration::from_secs(20));
        let port: u16 = line["READY ".len()..].trim().parse().unwrap();
        NaiveUpstream {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            _child: child,
        }
    }

    /// Every request the tool server parsed, in order.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The tools it was asked to run.
    pub fn tools_run(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter_map(|r| r["tool"].as_str().map(str::to_string))
            .collect()
    }
}

/// One request as a raw-socket upstream received it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub head: String,
    pub body: Vec<u8>,
    pub chunked: bool,
    pub trailers: String,
}

impl RawRequest {
    pub fn header_count(&self, name: &str) -> usize {
        self.head
            .lines()
            .filter(|l| {
                l.split_once(':')
                    .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            })
            .count()
    }
}

/// A tool server that logs the exact bytes of every request (head, body, framing,
/// trailers) and answers JSON-RPC requests with a tool result. Parses requests itself
/// (not with hyper), so the log shows the gateway's framing as it was written.
#[derive(Clone, Default)]
pub struct RawUpstream {
    pub requests: Arc<Mutex<Vec<RawRequest>>>,
}

impl RawUpstream {
    pub async fn start() -> (SocketAddr, RawUpstream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = RawUpstream::default();
        let log = up.requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(req) = read_request(&mut stream, &mut buf).await else {
                            return;
                        };
                        let id = serde_json::from_slice::<Value>(&req.body)
                            .ok()
                            .and_then(|v| v.get("id").cloned());
                        log.lock().unwrap().push(req);
                        let body = match id {
                            Some(id) => serde_json::json!({"jsonrpc": "2.0", "id": id,
                                "result": {"content": [{"type": "text", "text": "done"}], "isError": false}})
                            .to_string(),
                            None => String::new(),
                        };
                        let status = if body.is_empty() {
                            "202 Accepted"
                        } else {
                            "200 OK"
                        };
                        let resp = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, up)
    }

    pub fn all(&self) -> Vec<RawRequest> {
        self.requests.lock().unwrap().clone()
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one HTTP/1.1 request (Content-Length or chunked framing) from `stream`.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<RawRequest> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(stream, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    buf.drain(..head_end);
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let mut body = Vec::new();
    let mut trailers = String::new();
    if chunked {
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                if !fill(stream, buf).await {
                    return None;
                }
            };
            let size_line = String::from_utf8_lossy(&buf[..line_end]).to_string();
            buf.drain(..line_end + 2);
            let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    if let Some(i) = find(buf, b"\r\n") {
                        if i == 0 {
                            buf.drain(..2);
                            break;
                        }
                        trailers.push_str(&String::from_utf8_lossy(&buf[..i]));
                        trailers.push('\n');
                        buf.drain(..i + 2);
                        continue;
                    }
                    if !fill(stream, buf).await {
                        return None;
                    }
                }
                break;
            }
            while buf.len() < size + 2 {
                if !fill(stream, buf).await {
                    return None;
                }
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    } else {
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < len {
            if !fill(stream, buf).await {
                return None;
            }
        }
        body = buf.drain(..len).collect();
    }
    Some(RawRequest {
        head,
        body,
        chunked,
        trailers,
    })
}

/// One response as read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends `bytes` as they are on one connection and reads every response until the
/// gateway closes it or goes quiet.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<RawResponse> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        let Some(head_end) = find(&buf, b"\r\n\r\n").map(|i| i + 4) else {
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(Duration::from_millis(1500), stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => {
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
                _ => return out,
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(&buf[..head_end]).unwrap();
        let status = resp.code.unwrap_or(0);
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::to_string)
        };
        let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        buf.drain(..head_end);
        let mut body = Vec::new();
        if chunked {
            loop {
                let Some(line_end) = find(&buf, b"\r\n") else {
                    if !read_more(&mut stream, &mut buf).await {
                        return out;
                    }
                    continue;
                };
                let size_line = String::from_utf8_lossy(&buf[..line_end]).to_string();
                let size = usize::from_str_radix(size_line.trim(), 16).unwrap_or(0);
                while buf.len() < line_end + 2 + size + 2 {
                    if !read_more(&mut stream, &mut buf).await {
                        return out;
                    }
                }
                body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
                buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        } else {
            while buf.len() < len {
                if !read_more(&mut stream, &mut buf).await {
                    return out;
                }
            }
            body = buf.drain(..len).collect();
        }
        out.push(RawResponse { status, body });
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match tokio::time::timeout(Duration::from_millis(1500), stream.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// An MCP POST as raw bytes.
pub fn mcp_post(body: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nHost: gate\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

pub fn tools_call(id: u32, name: &str, arguments: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{name}","arguments":{arguments}}}}}"#
    )
}
