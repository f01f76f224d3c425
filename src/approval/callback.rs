//! The CIBA callback listener: its own port, HTTPS (rustls; certificate and key reloaded
//! when their files change), plain HTTP only with an explicit insecure flag. Ping: check
//! the bearer notification token, answer 204 at once, then make one token request
//! (under the approval's redemption claim: at most one per grant, whoever asks).
//! Push: check the token, validate the ID token (with the push-only claims), record.
//! Forged, replayed, unknown or late notifications are refused (4xx) and change
//! nothing: a push whose ID token does not validate is answered 400 and leaves the
//! approval pending. Bodies are read up to `MAX_BODY`; a larger one is answered 413.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::json;
use tokio::net::TcpListener;

use super::Approvals;
use super::driver::{check_id_token, finish, op_ended, redeem_for_ping};
use crate::ciba::{CibaClient, DeliveryMode, PushNotification};
use crate::store::{Resolution, Status};

/// Largest notification body read (a push carries an ID token, an access token and
/// perhaps a refresh token: a few KiB).
pub const MAX_BODY: usize = 64 * 1024;

fn too_large() -> Response<Full<Bytes>> {
    crate::telemetry::metrics::limit_exceeded("callback_body");
    reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({"error": "invalid_request", "error_description": "the notification body is too large"}),
    )
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
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

fn no_content() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn unauthorized(why: &str) -> Response<Full<Bytes>> {
    let mut r = reply(
        StatusCode::UNAUTHORIZED,
        json!({"error": "invalid_token", "error_description": why}),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    r
}

/// The `client_notification_token` in an `Authorization` header value: `Bearer ` (or
/// `bearer `) and a non-empty token, surrounding whitespace trimmed.
pub(crate) fn presented_token(authorization: &str) -> Option<String> {
    authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

/// Handles one notification from the OP.
pub async fn handle(
    approvals: Arc<Approvals>,
    path: Arc<str>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.uri().path() != &*path {
        return reply(StatusCode::NOT_FOUND, json!({"error": "not_found"}));
    }
    if req.method() != http::Method::POST {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "method_not_allowed"}),
        );
    }
    // A declared length over the limit is refused before anything is looked up or read.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(presented_token);
    let Some(token) = token else {
        return unauthorized("a bearer client_notification_token is required");
    };
    // Looking up by hash compares nothing secret byte by byte.
    let hash = crate::ciba::token_hash(&token);
    let fingerprint = match approvals.store.find_by_notification_hash(&hash).await {
        Ok(Some(fp)) => fp,
        Ok(None) => return unauthorized("unknown notification token"),
        Err(_) => {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "temporarily_unavailable"}),
            );
        }
    };
    let record = match approvals.store.get(&fingerprint).await {
        Ok(Some(r)) => r,
        Ok(None) => return unauthorized("unknown notification token"),
        Err(_) => {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "temporarily_unavailable"}),
            );
        }
    };
    // Constant-time check of the stored hash, for stores that index loosely.
    if !record
        .notification_token_hash
        .as_deref()
        .is_some_and(|h| crate::ciba::token_matches(&token, h))
    {
        return unauthorized("unknown notification token");
    }
    if record.status != Status::Pending {
        return reply(StatusCode::CONFLICT, json!({"error": "request_finished"}));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Err(_) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "error_description": "unreadable body"}),
            );
        }
    };
    let ids_match = |id: &str| {
        record
            .auth_req_id
            .as_deref()
            .is_none_or(|known| known == id)
    };
    match approvals.ciba.config().delivery {
        DeliveryMode::Ping => {
            let auth_req_id = match CibaClient::parse_ping(&body) {
                Ok(id) => id,
                Err(e) => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        json!({"error": "invalid_request", "error_description": e.to_string()}),
                    );
                }
            };
            if !ids_match(&auth_req_id) {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "invalid_request", "error_description": "auth_req_id does not match"}),
                );
            }
            // Answer the OP at once; fetch the tokens afterwards, under the claim.
            tokio::spawn(redeem_for_ping(approvals, fingerprint, auth_req_id));
            no_content()
        }
        DeliveryMode::Push => {
            let note = match CibaClient::parse_push(&body) {
                Ok(n) => n,
                Err(e) => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        json!({"error": "invalid_request", "error_description": e.to_string()}),
                    );
                }
            };
            let resolution = match note {
                PushNotification::Tokens {
                    auth_req_id,
                    tokens,
                } => {
                    if !ids_match(&auth_req_id) {
                        return reply(
                            StatusCode::BAD_REQUEST,
                            json!({"error": "invalid_request", "error_description": "auth_req_id does not match"}),
                        );
                    }
                    match check_id_token(&approvals, &auth_req_id, &tokens, true).await {
                        Ok(approver) => Resolution::Granted(approver),
                        // The OP's keys could not be fetched: not the pusher's fault, and
                        // nothing is settled on a guess; the OP may push again.
                        Err(e) if e.is_retryable() => {
                            tracing::warn!(code = e.code(), error = %e, "push ID token could not be checked now");
                            return reply(
                                StatusCode::SERVICE_UNAVAILABLE,
                                json!({"error": "temporarily_unavailable"}),
                            );
                        }
                        // Whoever holds the notification token sent an ID token the OP did
                        // not issue for this request: refused, and the approval stays as it
                        // was (pending until the OP's real answer or the deadline).
                        Err(e) => {
                            crate::telemetry::metrics::op_error(
                                crate::store::Failure::InvalidIdToken.code(),
                            );
                            tracing::warn!(code = e.code(), error = %e, "push with an invalid ID token refused; the approval stays pending");
                            return reply(
                                StatusCode::BAD_REQUEST,
                                json!({"error": "invalid_request", "error_description": "the ID token is not valid for this request"}),
                            );
                        }
                    }
                }
                PushNotification::Error { auth_req_id, error } => {
                    if !ids_match(&auth_req_id) {
                        return reply(
                            StatusCode::BAD_REQUEST,
                            json!({"error": "invalid_request", "error_description": "auth_req_id does not match"}),
                        );
                    }
                    op_ended(Some(&error), error.as_str())
                }
            };
            finish(&approvals, &fingerprint, resolution, "push").await;
            no_content()
        }
        DeliveryMode::Poll => reply(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
    }
}

/// TLS settings for the listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Serves callbacks on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    approvals: Arc<Approvals>,
    path: String,
    tls: Option<TlsFiles>,
) -> anyhow::Result<()> {
    let acceptor = match &tls {
        Some(files) => {
            let resolver = Arc::new(ReloadingCert::load(files.clone())?);
            resolver.clone().spawn_watcher(Duration::from_secs(5));
            let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
            cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
        }
        None => None,
    };
    let path: Arc<str> = Arc::from(path);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "callback accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let approvals = approvals.clone();
        let path = path.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let approvals = approvals.clone();
                let path = path.clone();
                async move { Ok::<_, Infallible>(handle(approvals, path, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let result = match acceptor {
                Some(acc) => {
                    match tokio::time::timeout(Duration::from_secs(10), acc.accept(stream)).await {
                        Ok(Ok(tls)) => builder.serve_connection(TokioIo::new(tls), svc).await,
                        _ => return,
                    }
                }
                None => builder.serve_connection(TokioIo::new(stream), svc).await,
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "callback connection ended with an error");
            }
        });
    }
}

/// Binds the callback port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// A certificate that follows its files: a changed file is loaded on the next check;
/// a file that fails to load is logged and the last good certificate stays.
pub struct ReloadingCert {
    files: TlsFiles,
    current: RwLock<(Arc<CertifiedKey>, [u8; 32])>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("files", &self.files)
            .finish()
    }
}

fn read_pair(files: &TlsFiles) -> anyhow::Result<(Arc<CertifiedKey>, [u8; 32])> {
    use rustls_pki_types::pem::PemObject;
    use sha2::Digest;
    let cert_pem =
        std::fs::read(&files.cert).map_err(|e| anyhow::anyhow!("{}: {e}", files.cert.display()))?;
    let key_pem =
        std::fs::read(&files.key).map_err(|e| anyhow::anyhow!("{}: {e}", files.key.display()))?;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate found", files.cert.display());
    }
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| anyhow::anyhow!("{}: {e}", files.key.display()))?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", files.key.display()))?;
    let mut h = sha2::Sha256::new();
    h.update(&cert_pem);
    h.update(&key_pem);
    Ok((
        Arc::new(CertifiedKey::new(certs, signing)),
        h.finalize().into(),
    ))
}

impl ReloadingCert {
    pub fn load(files: TlsFiles) -> anyhow::Result<Self> {
        let pair = read_pair(&files)?;
        Ok(ReloadingCert {
            files,
            current: RwLock::new(pair),
        })
    }

    /// Re-reads the files; true if a new certificate is now in use.
    pub fn reload(&self) -> bool {
        match read_pair(&self.files) {
            Ok((key, digest)) => {
                let Ok(mut cur) = self.current.write() else {
                    return false;
                };
                if cur.1 == digest {
                    return false;
                }
                *cur = (key, digest);
                tracing::info!(cert = %self.files.cert.display(), "callback TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "callback TLS certificate reload failed; keeping the current one");
                false
            }
        }
    }

    pub fn spawn_watcher(self: Arc<Self>, every: Duration) {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                self.reload();
            }
        });
    }

    pub fn cert_path(&self) -> &Path {
        &self.files.cert
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.0.clone())
    }
}
