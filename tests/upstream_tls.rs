//! HTTPS tool servers: the gateway reaches a tool server whose certificate comes from a
//! configured private CA (over HTTP/2 when the server offers it by ALPN, HTTP/1.1
//! otherwise), presents a client certificate when configured (mutual TLS), and refuses
//! a certificate it cannot verify with a typed answer — never falling back to plain
//! HTTP, never sending the call.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use support::ca::Ca;
use support::gateway::Gate;

const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");

/// What the TLS tool server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    alpn: Option<String>,
    client_cert: bool,
    body: Value,
    /// The values of the request's `host` header fields.
    host: Vec<String>,
    /// The request target's authority (HTTP/2 `:authority`).
    authority: Option<String>,
}

/// An MCP tool server over TLS: answers every JSON-RPC request with a tool result.
struct TlsToolServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    handshakes_failed: Arc<Mutex<usize>>,
}

impl TlsToolServer {
    async fn start(
        cert_pem: &str,
        key_pem: &str,
        alpn: &[&[u8]],
        client_ca: Option<&str>,
    ) -> TlsToolServer {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    roots.add(c.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handshakes_failed = Arc::new(Mutex::new(0));
        let (log, failed) = (seen.clone(), handshakes_failed.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, log, failed) = (acceptor.clone(), log.clone(), failed.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        *failed.lock().unwrap() += 1;
                        return;
                    };
                    let (_, session) = tls.get_ref();
                    let alpn = session
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).to_string());
                    let client_cert = session.peer_certificates().is_some_and(|c| !c.is_empty());
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (log, alpn) = (log.clone(), alpn.clone());
                        async move {
                            let host = req
                                .headers()
                                .get_all("host")
                                .iter()
                                .map(|v| v.to_str().unwrap_or("").to_string())
                                .collect();
                            let authority = req.uri().authority().map(|a| a.to_string());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let answer = json!({"jsonrpc": "2.0", "id": body["id"].clone(),
                                "result": {"content": [{"type": "text", "text": "over tls"}], "isError": false}});
                            log.lock().unwrap().push(Seen {
                                alpn,
                                client_cert,
                                body,
                                host,
                                authority,
                            });
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(answer.to_string())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsToolServer {
            addr,
            seen,
            handshakes_failed,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

async fn gate_in_front_of(dir: &Path, server: SocketAddr, tls_yaml: &str) -> Gate {
    let yaml = format!(
        "agent: {{id: tls-agent}}\npolicy: {{dir: \"{POLICIES}\", reload_interval: 0s}}\n\
         upstreams:\n  - {{name: hosted, kind: mcp, mount: /mcp, url: \"https://localhost:{}/mcp\", {tls_yaml}}}\n",
        server.port()
    );
    Gate::start(dir, &yaml).await
}

async fn call_tool(gate: &Gate) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/mcp", gate.addr))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "list_deployments", "arguments": {}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn assert_tls_refusal(status: u16, answer: &Value, says: &str) {
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["jsonrpc"], "2.0");
    assert_eq!(answer["id"], 1);
    assert_eq!(answer["error"]["code"], -32002, "{answer}");
    assert_eq!(
        answer["error"]["data"]["reason"], "upstream_tls_error",
        "{answer}"
    );
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains(says), "{message}");
}

#[tokio::test]
async fn a_tool_server_certified_by_the_configured_ca_is_reached_over_http2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("private tool CA");
    let (cert, key) = ca.issue(&["localhost"], false);
    let server = TlsToolServer::start(&cert, &key, &[b"h2", b"http/1.1"], None).await;
    write(dir.path(), "ca.pem", &ca.pem);
    let gate = gate_in_front_of(dir.path(), server.addr, "tls: {ca_file: ca.pem}").await;
    let (status, answer) = call_tool(&gate).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"]["content"][0]["text"], "over tls");
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].alpn.as_deref(), Some("h2"));
    assert_eq!(seen[0].body["params"]["name"], "list_deployments");
    // RFC 9113 §8.3.1: over HTTP/2 the target is `:authority`, never a `host` field as
    // well (nginx answers 400 "duplicate host header" to a request with both).
    let port = server.addr.port();
    assert_eq!(seen[0].authority, Some(format!("localhost:{port}")));
    assert!(seen[0].host.is_empty(), "host fields: {:?}", seen[0].host);
    let evidence = gate.evidence(1).await;
    assert_eq!(evidence[0]["outcome"], "forwarded");
}

#[tokio::test]
async fn a_tool_server_without_http2_is_reached_over_http1_with_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("private tool CA");
    let (cert, key) = ca.issue(&["localhost"], false);
    let server = TlsToolServer::start(&cert, &key, &[b"http/1.1"], None).await;
    write(dir.path(), "ca.pem", &ca.pem);
    let gate = gate_in_front_of(dir.path(), server.addr, "tls: {ca_file: ca.pem}").await;
    let (status, _) = call_tool(&gate).await;
    assert_eq!(status, 200);
    let seen = server.seen();
    assert_eq!(seen[0].alpn.as_deref(), Some("http/1.1"));
    // HTTP/1.1 names the target in exactly one `host` field: the tool server's.
    assert_eq!(
        seen[0].host,
        vec![format!("localhost:{}", server.addr.port())]
    );
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_is_refused_and_the_call_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = Ca::new("the CA the gateway trusts");
    let other = Ca::new("someone else's CA");
    let (cert, key) = other.issue(&["localhost"], false);
    let server = TlsToolServer::start(&cert, &key, &[b"h2", b"http/1.1"], None).await;
    write(dir.path(), "ca.pem", &trusted.pem);
    let gate = gate_in_front_of(dir.path(), server.addr, "tls: {ca_file: ca.pem}").await;
    let (status, answer) = call_tool(&gate).await;
    assert_tls_refusal(status, &answer, "not signed by a trusted CA");
    assert!(server.seen().is_empty());
    let evidence = gate.evidence(1).await;
    assert_eq!(evidence[0]["reason"], "upstream_tls_error");
    assert_eq!(evidence[0]["outcome"], "upstream_failed");
}

#[tokio::test]
async fn the_system_roots_alone_do_not_trust_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("private tool CA");
    let (cert, key) = ca.issue(&["localhost"], false);
    let server = TlsToolServer::start(&cert, &key, &[b"h2", b"http/1.1"], None).await;
    let gate = gate_in_front_of(dir.path(), server.addr, "tls: {system_roots: true}").await;
    let (status, answer) = call_tool(&gate).await;
    assert_tls_refusal(status, &answer, "not signed by a trusted CA");
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("private tool CA");
    let (cert, key) = ca.issue(&["localhost"], true);
    let server = TlsToolServer::start(&cert, &key, &[b"h2", b"http/1.1"], None).await;
    write(dir.path(), "ca.pem", &ca.pem);
    let gate = gate_in_front_of(dir.path(), server.addr, "tls: {ca_file: ca.pem}").await;
    let (status, answer) = call_tool(&gate).await;
    assert_tls_refusal(status, &answer, "expired");
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn a_certificate_for_another_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("private tool CA");
    let (cert, key) = ca.issue(&["tools.internal"], false);
    let server = TlsToolServer::start(&cert, &key, &[b"h2", b"http/1.1"], None).await;
    write(dir.path(), "ca.pem", &ca.pem);
    let gate = gate_in_front_of(dir.path(), server.addr, "tls: {ca_file: ca.pem}").await;
    let (status, answer) = call_tool(&gate).await;
    assert_tls_refusal(status, &answer, "does not name its host");
    // With the name it does carry configured for SNI and verification, it is trusted.
    let dir2 = tempfile::tempdir().unwrap();
    write(dir2.path(), "ca.pem", &ca.pem);
    let gate = gate_in_front_of(
        dir2.path(),
        server.addr,
        "tls: {ca_file: ca.pem, server_name: tools.internal}",
    )
    .await;
    let (status, answer) = call_tool(&gate).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn mutual_tls_presents_the_configured_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("private tool CA");
    let (cert, key) = ca.issue(&["localhost"], false);
    let server = TlsToolServer::start(&cert, &key, &[b"h2", b"http/1.1"], Some(&ca.pem)).await;
    write(dir.path(), "ca.pem", &ca.pem);
    // Without a client certificate the server refuses the handshake.
    let gate = gate_in_front_of(dir.path(), server.addr, "tls: {ca_file: ca.pem}").await;
    let (status, answer) = call_tool(&gate).await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(
        answer["error"]["data"]["reason"], "upstream_tls_error",
        "{answer}"
    );
    assert!(server.seen().is_empty());
    // With one, signed by the CA the server trusts, the call goes through.
    let (client_cert, client_key) = ca.issue(&["ciba-gate"], false);
    write(dir.path(), "client.crt", &client_cert);
    write(dir.path(), "client.key", &client_key);
    let dir2 = dir.path().join("second");
    std::fs::create_dir(&dir2).unwrap();
    for f in ["ca.pem", "client.crt", "client.key"] {
        std::fs::copy(dir.path().join(f), dir2.join(f)).unwrap();
    }
    let gate = gate_in_front_of(
        &dir2,
        server.addr,
        "tls: {ca_file: ca.pem, client_cert: {cert_file: client.crt, key_file: client.key}}",
    )
    .await;
    let (status, answer) = call_tool(&gate).await;
    assert_eq!(status, 200, "{answer}");
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].client_cert);
    assert!(*server.handshakes_failed.lock().unwrap() >= 1);
}

#[test]
fn tls_settings_are_checked_when_the_config_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let parse = |upstream: &str| {
        let text = format!(
            "agent: {{id: a}}\npolicy: {{dir: \"{POLICIES}\"}}\nupstreams:\n  - {upstream}\n"
        );
        let file = dir.path().join("c.yaml");
        ciba_gate::config::LoadedConfig::parse(&file, &text).map(|_| ())
    };
    let err = parse(r#"{name: t, kind: mcp, mount: /mcp, url: "http://127.0.0.1:1/mcp", tls: {ca_file: ca.pem}}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("upstreams[0].tls") && err.contains("only for https"),
        "{err}"
    );
    let err = parse(r#"{name: t, kind: mcp, mount: /mcp, url: "https://127.0.0.1:1/mcp", tls: {system_roots: false}}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("system_roots"), "{err}");
    assert!(
        parse(r#"{name: t, kind: mcp, mount: /mcp, url: "https://tools.example/mcp"}"#).is_ok()
    );
}

#[tokio::test]
async fn a_missing_ca_file_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "listen: \"127.0.0.1:0\"\nadmin: {{listen: \"127.0.0.1:0\"}}\nagent: {{id: a}}\npolicy: {{dir: \"{POLICIES}\", reload_interval: 0s}}\n\
         upstreams:\n  - {{name: t, kind: mcp, mount: /mcp, url: \"https://localhost:1/mcp\", tls: {{ca_file: nowhere.pem}}}}\n"
    );
    let file = write(dir.path(), "gate.yaml", &text);
    let cfg = ciba_gate::config::LoadedConfig::parse(&file, &text).unwrap();
    let err = match ciba_gate::app::App::builder(&cfg).build() {
        Ok(_) => panic!("a missing CA file was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("upstreams[0].tls.ca_file") && err.contains("nowhere.pem"),
        "{err}"
    );
}

/// A gateway whose `/mcp` is a virtual server with the HTTPS tool server behind it.
async fn virtual_gate_in_front_of(dir: &Path, server: SocketAddr) -> Gate {
    let yaml = format!(
        "agent: {{id: tls-agent}}\npolicy: {{dir: \"{POLICIES}\", reload_interval: 0s}}\n\
         upstreams:\n  - {{name: tools, kind: mcp, mount: /mcp, servers: [{{upstream: hosted}}]}}\n\
         \x20 - {{name: hosted, kind: mcp, url: \"https://localhost:{}/mcp\", tls: {{ca_file: ca.pem}}}}\n",
        server.port()
    );
    Gate::start(dir, &yaml).await
}

/// Opens a session with the virtual server, then calls a tool in it.
async fn call_tool_in_a_session(gate: &Gate) -> (u16, Value) {
    let http = reqwest::Client::new();
    let post = |body: Value, session: Option<String>| {
        let mut req = http
            .post(format!("http://{}/mcp", gate.addr))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18");
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        req.body(body.to_string()).send()
    };
    let init = post(
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "tls-test", "version": "1"}}}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(init.status(), 200);
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let resp = post(
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": "list_deployments", "arguments": {}}}),
        Some(session),
    )
    .await
    .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_virtual_servers_https_server_is_reached_with_its_own_tls_settings() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("private tool CA");
    let (cert, key) = ca.issue(&["localhost"], false);
    let server = TlsToolServer::start(&cert, &key, &[b"h2", b"http/1.1"], None).await;
    write(dir.path(), "ca.pem", &ca.pem);
    let gate = virtual_gate_in_front_of(dir.path(), server.addr).await;
    let (status, answer) = call_tool_in_a_session(&gate).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"]["content"][0]["text"], "over tls");
    // The gateway opened the server's session (initialize, then initialized) and sent
    // the call in it, all over HTTP/2 with TLS.
    let seen = server.seen();
    let methods: Vec<&str> = seen
        .iter()
        .map(|s| s.body["method"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        methods,
        ["initialize", "notifications/initialized", "tools/call"]
    );
    assert!(seen.iter().all(|s| s.alpn.as_deref() == Some("h2")));
    let evidence = gate.evidence(2).await;
    let call = evidence
        .iter()
        .find(|r| r["mcp_method"] == "tools/call")
        .unwrap();
    assert_eq!(call["upstream"], "hosted");
    assert_eq!(call["outcome"], "forwarded");
}

#[tokio::test]
async fn a_virtual_servers_https_server_with_an_untrusted_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = Ca::new("the CA the gateway trusts");
    let other = Ca::new("someone else's CA");
    let (cert, key) = other.issue(&["localhost"], false);
    let server = TlsToolServer::start(&cert, &key, &[b"h2", b"http/1.1"], None).await;
    write(dir.path(), "ca.pem", &trusted.pem);
    let gate = virtual_gate_in_front_of(dir.path(), server.addr).await;
    let (status, answer) = call_tool_in_a_session(&gate).await;
    assert_tls_refusal(status, &answer, "not signed by a trusted CA");
    assert!(server.seen().is_empty());
}
