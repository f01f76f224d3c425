//! The way out to a tool server: a pooled hyper client per upstream, header hygiene
//! (hop-by-hop headers, spoofed gateway headers, the agent's own credential), injection
//! of the upstream's credential, and timeouts that become typed errors (502 / 504).
//! `https://` upstreams go through rustls (`upstream_tls.rs`); an `http://` one never
//! loads a trust store.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;

use super::BoxBody;
use secrecy::{ExposeSecret, SecretString};

use super::config::UpstreamConfig;
use crate::outcome::Reason;
use crate::validate::{Checked, FieldError};

/// Inbound headers starting with this prefix claim a gateway decision: always stripped.
pub const GATEWAY_HEADER_PREFIX: &str = "x-ciba-gate-";

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the upstream connection failed: {0}")]
    Protocol(String),
    #[error("{0}")]
    Tls(String),
    /// A server behind a virtual server answered 404 to its session: it forgot it.
    #[error("the server no longer knows its session")]
    SessionLost,
    /// A stdio server already has this many requests waiting.
    #[error("the tool server already has {0} requests waiting")]
    Busy(usize),
}

impl UpstreamError {
    /// The outcome this failure gives the call.
    pub fn reason(&self) -> Reason {
        match self {
            UpstreamError::Connect(why) => Reason::UpstreamUnreachable(why.clone()),
            UpstreamError::Timeout(d) => Reason::UpstreamTimeout(*d),
            UpstreamError::Protocol(why) => {
                Reason::UpstreamError(format!("the upstream connection failed: {why}"))
            }
            UpstreamError::Tls(why) => Reason::UpstreamTls(why.clone()),
            UpstreamError::SessionLost => Reason::UpstreamError(self.to_string()),
            UpstreamError::Busy(n) => Reason::UpstreamBusy(*n),
        }
    }

    /// A short label for traces and metrics: the outcome's own code.
    fn label(&self) -> &'static str {
        self.reason().metric_label()
    }
}

/// One configured tool server.
pub struct Upstream {
    pub name: String,
    base: Uri,
    credential: Option<(HeaderName, HeaderValue)>,
    /// Where the approver's access token goes (header, prefix), when this upstream
    /// asks for it.
    approval_token: Option<(HeaderName, String)>,
    /// The audience the approver's token is asked for (`approval_token.audience`).
    approval_audience: Option<String>,
    /// Exchange the token for that audience (RFC 8693) instead of asking for it.
    approval_exchange: bool,
    forward_agent_authorization: bool,
    response_timeout: Duration,
    client: Transport,
}

/// The pooled client: plain for `http://`, rustls (HTTPS only) for `https://`.
enum Transport {
    Plain(Client<HttpConnector, BoxBody>),
    Tls(Client<HttpsConnector<HttpConnector>, BoxBody>),
}

impl Transport {
    fn new(cfg: &UpstreamConfig, base: &std::path::Path) -> Checked<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256);
        if !cfg
            .url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
        {
            return Ok(Transport::Plain(builder.build(connector)));
        }
        let tls = cfg.tls.clone().unwrap_or_default();
        let config = tls.client_config(base).map_err(|e| e.under("tls"))?;
        connector.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only();
        let https = match &tls.server_name {
            Some(name) => {
                let name = rustls_pki_types::ServerName::try_from(name.clone()).map_err(|_| {
                    FieldError::new("tls.server_name", "is not a DNS name or IP address")
                })?;
                https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => https,
        };
        Ok(Transport::Tls(builder.build(
            https.enable_all_versions().wrap_connector(connector),
        )))
    }

    fn request(&self, req: Request<BoxBody>) -> ResponseFuture {
        match self {
            Transport::Plain(c) => c.request(req),
            Transport::Tls(c) => c.request(req),
        }
    }
}

impl Upstream {
    /// `secret`: the credential's value, read from its source; `files`: the directory
    /// TLS files are relative to.
    pub fn new(
        cfg: &UpstreamConfig,
        secret: Option<SecretString>,
        files: &std::path::Path,
    ) -> Checked<Self> {
        let url_err = |e: String| FieldError::new("url", e);
        let base: Uri = cfg
            .url
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e: http::uri::InvalidUri| url_err(e.to_string()))?;
        if base.host().is_none() {
            return Err(url_err("has no host".into()));
        }
        let client = Transport::new(cfg, files)?;
        let credential = match (&cfg.credential, secret) {
            (Some(c), Some(s)) => {
                let bad =
                    || FieldError::new("credential", "the secret is not a valid header value");
                let mut v = HeaderValue::from_str(&format!("{}{}", c.prefix, s.expose_secret()))
                    .map_err(|_| bad())?;
                v.set_sensitive(true);
                Some((
                    HeaderName::from_bytes(c.header.to_ascii_lowercase().as_bytes()).map_err(
                        |_| FieldError::new("credential.header", "is not a valid header name"),
                    )?,
                    v,
                ))
            }
            _ => None,
        };
        let approval_token = match &cfg.approval_token {
            Some(t) => Some((
                HeaderName::from_bytes(t.header.to_ascii_lowercase().as_bytes()).map_err(|_| {
                    FieldError::new("approval_token.header", "is not a valid header name")
                })?,
                t.prefix().to_string(),
            )),
            None => None,
        };
        Ok(Upstream {
            name: cfg.name.clone(),
            approval_token,
            approval_audience: cfg.approval_token.as_ref().and_then(|t| t.audience.clone()),
            approval_exchange: cfg.approval_token.as_ref().is_some_and(|t| t.exchange),
            base,
            credential,
            forward_agent_authorization: cfg.forward_agent_authorization,
            response_timeout: cfg.response_timeout,
            client,
        })
    }

    /// The upstream URI for a path below the mount (`rest` starts with '/' or is empty).
    pub fn target(&self, rest: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let base_path = self.base.path().trim_end_matches('/');
        let mut pq = String::with_capacity(base_path.len() + rest.len() + 1);
        pq.push_str(base_path);
        pq.push_str(rest);
        if pq.is_empty() {
            pq.push('/');
        }
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        Uri::builder()
            .scheme(self.base.scheme_str().unwrap_or("http"))
            .authority(
                self.base
                    .authority()
                    .map(|a| a.as_str())
                    .unwrap_or_default(),
            )
            .path_and_query(pq)
            .build()
    }

    /// The audience asked for in the authentication request (`resource`), when
    /// configured and not obtained by exchange.
    pub fn approval_resource(&self) -> Option<&str> {
        self.approval_audience
            .as_deref()
            .filter(|_| !self.approval_exchange)
    }

    /// The audience to exchange the approver's token for (RFC 8693), when configured.
    pub fn approval_exchange_audience(&self) -> Option<&str> {
        self.approval_audience
            .as_deref()
            .filter(|_| self.approval_exchange)
    }

    /// How long the upstream has to answer (its response headers).
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// True when this upstream takes the approver's access token on approved calls.
    pub fn wants_approval_token(&self) -> bool {
        self.approval_token.is_some()
    }

    /// Builds the upstream request for a path below the mount and sends it, with the
    /// approver's access token when the call was approved and this upstream asks for it.
    pub async fn forward(
        &self,
        method: http::Method,
        rest: &str,
        query: Option<&str>,
        headers: HeaderMap,
        body: BoxBody,
        approval_token: Option<&SecretString>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let uri = self
            .target(rest, query)
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(body)
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        *req.headers_mut() = headers;
        *req.version_mut() = http::Version::HTTP_11;
        self.send(req, approval_token).await
    }

    /// Sends the request with clean headers and the upstream's credential.
    pub async fn send(
        &self,
        mut req: Request<BoxBody>,
        approval_token: Option<&SecretString>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        use tracing::Instrument;
        clean_request_headers(req.headers_mut(), self.forward_agent_authorization);
        let span = crate::traced_span!(
            "upstream",
            otel.name = %format_args!("{} {}", req.method(), self.name),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = %req.method(),
            server.address = self.base.host().unwrap_or_default(),
            server.port = i64::from(self.base.port_u16().unwrap_or(match self.client {
                Transport::Plain(_) => 80,
                Transport::Tls(_) => 443,
            })),
            url.path = req.uri().path(),
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            ciba_gate.upstream = %self.name
        );
        // The tool server sees the gateway's upstream span as its parent.
        crate::telemetry::traces::inject(&span, req.headers_mut());
        // No `host` field: the client writes it from the target over HTTP/1.1, and over
        // HTTP/2 the target travels as `:authority` alone (RFC 9113 §8.3.1; nginx
        // refuses a request with both).
        let h = req.headers_mut();
        if let Some((name, value)) = &self.credential {
            h.insert(name.clone(), value.clone());
        }
        // After the credential: on an approved call the person's token takes its place
        // when both use one header.
        if let (Some((name, prefix)), Some(token)) = (&self.approval_token, approval_token) {
            let mut v = HeaderValue::from_str(&format!("{prefix}{}", token.expose_secret()))
                .map_err(|_| {
                    UpstreamError::Protocol(
                        "the approver's token is not a valid header value".into(),
                    )
                })?;
            v.set_sensitive(true);
            h.insert(name.clone(), v);
        }
        let started = crate::clock::now();
        let result = match tokio::time::timeout(self.response_timeout, self.client.request(req))
            .instrument(span.clone())
            .await
        {
            Err(_) => Err(UpstreamError::Timeout(self.response_timeout)),
            Ok(Ok(resp)) => Ok(resp),
            // TLS 1.3 reports a refused client certificate after the handshake, on the
            // first request: a TLS failure wherever it shows up.
            Ok(Err(e)) => Err(match super::upstream_tls::tls_failure(&e) {
                Some(why) => UpstreamError::Tls(why),
                None if e.is_connect() => UpstreamError::Connect(error_chain(&e)),
                None => UpstreamError::Protocol(error_chain(&e)),
            }),
        };
        let status = match &result {
            Ok(r) => {
                // tracing-opentelemetry exports u64 fields as strings; i64 as integers.
                span.record("http.response.status_code", i64::from(r.status().as_u16()));
                if r.status().is_server_error() {
                    span.record("otel.status_code", "ERROR");
                }
                Ok(r.status().as_u16())
            }
            Err(e) => {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", e.label());
                Err(match e {
                    UpstreamError::Timeout(_) => "timeout",
                    _ => "error",
                })
            }
        };
        crate::telemetry::metrics::upstream(&self.name, status, started.elapsed());
        result
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// Removes hop-by-hop headers (including those named by `Connection`).
pub fn remove_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// Everything the agent must not be able to send through: hop-by-hop headers, headers
/// that claim a gateway decision, and (by default) its own `Authorization`.
pub fn clean_request_headers(h: &mut HeaderMap, forward_agent_authorization: bool) {
    remove_hop_by_hop(h);
    let spoofed: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with(GATEWAY_HEADER_PREFIX))
        .cloned()
        .collect();
    for k in spoofed {
        h.remove(k);
    }
    if !forward_agent_authorization {
        h.remove(header::AUTHORIZATION);
    }
    h.remove(header::HOST);
    // The gateway has the body (or streams it); an expectation is between the agent
    // and the gateway.
    h.remove(header::EXPECT);
    // The body may be re-framed by the gateway; hyper recomputes the length.
    h.remove(header::CONTENT_LENGTH);
}

/// What the agent must not receive from a tool server: hop-by-hop headers and headers
/// that would claim a gateway decision.
pub fn clean_response_headers(h: &mut HeaderMap) {
    remove_hop_by_hop(h);
    let spoofed: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with(GATEWAY_HEADER_PREFIX))
        .cloned()
        .collect();
    for k in spoofed {
        h.remove(k);
    }
}

/// Sets the body's length header when the gateway sends a body it holds in full.
pub fn set_content_length(h: &mut HeaderMap, body: &Bytes) {
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_spoofed_and_agent_credentials_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-custom".parse().unwrap());
        h.insert("x-custom", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("x-ciba-gate-decision", "allow".parse().unwrap());
        h.insert("X-Ciba-Gate-Approved", "yes".parse().unwrap());
        h.insert("authorization", "Bearer agent".parse().unwrap());
        h.insert("mcp-session-id", "abc".parse().unwrap());
        h.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        clean_request_headers(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["mcp-session-id", "traceparent"]);
    }
}
