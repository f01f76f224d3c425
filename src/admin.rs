//! The admin listener (`admin.listen`, default 127.0.0.1:9090): `/metrics`
//! (Prometheus/OpenMetrics text), `/healthz` (alive) and `/readyz` (ready to take
//! calls: policy loaded, approval store reachable, OpenID Provider metadata and keys
//! fetched when approvals are configured, not shutting down). Kept apart from the
//! agent-facing port so probes and scrapes never go through policy.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::proxy::Gateway;
use crate::store::ApprovalStore;

/// `admin:` — probes and metrics, on their own port (keep it off the agent's network).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: std::net::SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
        }
    }
}

pub fn default_admin_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// How long `/readyz` waits for the store to answer.
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the probes look at.
pub struct Admin {
    pub gateway: Arc<Gateway>,
    /// The approval store, when approvals are configured.
    pub store: Option<Arc<dyn ApprovalStore>>,
    /// Set on SIGTERM: `/readyz` turns 503 so no new calls are routed here.
    pub draining: AtomicBool,
}

impl Admin {
    pub fn new(gateway: Arc<Gateway>, store: Option<Arc<dyn ApprovalStore>>) -> Arc<Self> {
        Arc::new(Admin {
            gateway,
            store,
            draining: AtomicBool::new(false),
        })
    }

    /// `/readyz`: (ready, JSON body listing every check).
    pub async fn readiness(&self) -> (bool, Value) {
        let revision = self.gateway.policy.revision();
        let policy_ok = &*revision != "none";
        let mut checks = serde_json::Map::new();
        checks.insert(
            "policy".into(),
            match self.gateway.policy.source_problem() {
                // Serving the last good bundle (or none yet), and saying why not a newer one.
                Some(problem) => {
                    json!({"ok": policy_ok, "revision": &*revision, "source_problem": problem})
                }
                None => json!({"ok": policy_ok, "revision": &*revision}),
            },
        );
        let store_ok = match &self.store {
            None => {
                checks.insert("store".into(), json!({"ok": true, "configured": false}));
                true
            }
            Some(store) => {
                let r = tokio::time::timeout(STORE_CHECK_TIMEOUT, store.ping()).await;
                let (ok, error) = match r {
                    Ok(Ok(())) => (true, None),
                    Ok(Err(e)) => {
                        crate::telemetry::metrics::store_error();
                        (false, Some(e.to_string()))
                    }
                    Err(_) => {
                        crate::telemetry::metrics::store_error();
                        (false, Some("timed out".to_string()))
                    }
                };
                let mut c = json!({"ok": ok, "configured": true});
                if let Some(e) = error {
                    c["error"] = json!(e);
                }
                checks.insert("store".into(), c);
                ok
            }
        };
        let op_ok = match self.gateway.approvals_configured() {
            false => {
                checks.insert("op".into(), json!({"ok": true, "configured": false}));
                true
            }
            true => {
                let ok = self.gateway.approvals().is_some();
                let mut c = json!({"ok": ok, "configured": true});
                if !ok {
                    c["error"] = json!("OpenID Provider metadata and keys not fetched yet");
                }
                checks.insert("op".into(), c);
                ok
            }
        };
        let draining = self.draining.load(Ordering::Relaxed);
        checks.insert("accepting".into(), json!({"ok": !draining}));
        if self.gateway.dry_run {
            // Ready, and loud about it: nothing policy decides is enforced.
            checks.insert(
                "enforcing".into(),
                json!({"ok": true, "dry_run": true, "warning": "policy.dry_run: decisions are recorded, not enforced"}),
            );
        }
        let ready = policy_ok && store_ok && op_ok && !draining;
        (
            ready,
            json!({
                "status": if ready { "ready" } else { "not_ready" },
                "policy_revision": &*revision,
                "dry_run": self.gateway.dry_run,
                "checks": Value::Object(checks),
            }),
        )
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match req.uri().path() {
            "/metrics" => {
                use crate::telemetry::metrics;
                let policy = &self.gateway.policy;
                let revision = policy.revision();
                let text = metrics::render(Some(metrics::PolicyState {
                    reloads: policy.reloads(),
                    reload_failures: policy.reload_failures(),
                    revision: &revision,
                }));
                // OpenMetrics when asked for (Prometheus does), else the classic format.
                let openmetrics = req
                    .headers()
                    .get_all(header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.contains("application/openmetrics-text"));
                let (body, content_type) = if openmetrics {
                    (text, metrics::CONTENT_TYPE)
                } else {
                    (metrics::to_text_004(&text), metrics::CONTENT_TYPE_TEXT)
                };
                let mut r = Response::new(Full::new(Bytes::from(body)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(content_type),
                );
                r
            }
            "/healthz" => json_response(StatusCode::OK, &json!({"status": "alive"})),
            "/readyz" => {
                let (ready, body) = self.readiness().await;
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json_response(status, &body)
            }
            _ => plain(
                StatusCode::NOT_FOUND,
                "not found: /metrics, /healthz, /readyz\n",
            ),
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(body).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// Serves the admin endpoints until the process exits (probes keep answering during
/// the shutdown drain).
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin listener ready (/metrics, /healthz, /readyz)");
    }
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        let svc = service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(admin.route(req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
