//! HTTP: the listener, routing, and the host and cross-site checks of the approval page.

use super::*;

impl Shared {
    // -- host checks for the approval page ---------------------------------------------

    /// Guards the page and its API against DNS rebinding: the Host must be an IP
    /// literal, `localhost` or the issuer's host name.
    pub(super) fn host_allowed(&self, headers: &HeaderMap, uri: &http::Uri) -> bool {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| uri.authority().map(|a| a.as_str().to_string()));
        let Some(host) = host else {
            return true;
        };
        let name = host_name(&host).to_ascii_lowercase();
        name == "localhost"
            || name == self.issuer_host
            || name.parse::<IpAddr>().is_ok()
            || name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .is_some_and(|n| n.parse::<IpAddr>().is_ok())
    }
}

pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "development OP: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |r| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, r).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

pub(super) type Resp = Response<Full<Bytes>>;

pub(super) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let Some(rest) = path.strip_prefix(shared.prefix.as_str()) else {
        return not_found();
    };
    let rest = if rest.is_empty() { "/" } else { rest };
    let method = req.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    match rest {
        "/.well-known/openid-configuration" if get => {
            json_response(StatusCode::OK, &shared.discovery())
        }
        "/jwks" if get => json_response(StatusCode::OK, &shared.jwks),
        "/backchannel" | "/token" if method == Method::POST => {
            let (parts, body) = req.into_parts();
            let form = match read_form(&parts.headers, body).await {
                Ok(f) => f,
                Err(e) => return e.response(),
            };
            let result = if rest == "/token" {
                shared.token(&parts.headers, &form)
            } else {
                shared.backchannel(&parts.headers, &form)
            };
            match result {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(e) => e.response(),
            }
        }
        "/" if get => {
            if !shared.host_allowed(req.headers(), req.uri()) {
                return misdirected();
            }
            page(&shared)
        }
        "/api/requests" if get => {
            if !shared.host_allowed(req.headers(), req.uri()) {
                return misdirected();
            }
            json_response(StatusCode::OK, &json!(shared.pending(Instant::now())))
        }
        "/api/stats" if get => {
            if !shared.host_allowed(req.headers(), req.uri()) {
                return misdirected();
            }
            json_response(StatusCode::OK, &json!(shared.stats()))
        }
        p if method == Method::POST && p.starts_with("/api/requests/") => {
            if !shared.host_allowed(req.headers(), req.uri()) {
                return misdirected();
            }
            if cross_site(req.headers()) {
                return api_error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "cross-site requests cannot approve or deny",
                );
            }
            let tail = &p["/api/requests/".len()..];
            let (id, approve) = match tail.rsplit_once('/') {
                Some((id, "approve")) => (id, true),
                Some((id, "deny")) => (id, false),
                _ => return not_found(),
            };
            let id = percent_encoding::percent_decode_str(id).decode_utf8_lossy();
            match shared.decide(&id, approve) {
                Ok(()) => {
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r.headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    r
                }
                Err(e) => api_error(e.status(), e.code(), &e.to_string()),
            }
        }
        "/.well-known/openid-configuration" | "/jwks" | "/" | "/api/requests" | "/api/stats" => {
            method_not_allowed("GET, HEAD")
        }
        "/backchannel" | "/token" => method_not_allowed("POST"),
        _ => not_found(),
    }
}

pub(super) fn cross_site(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("cross-site"))
    {
        return true;
    }
    // An Origin that does not match the Host means another site's page is posting.
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some("null"), _) => true,
        (Some(o), Some(h)) => match url::Url::parse(o) {
            Ok(u) => {
                let authority = match (u.host_str(), u.port()) {
                    (Some(hs), Some(p)) => format!("{hs}:{p}"),
                    (Some(hs), None) => hs.to_string(),
                    _ => return true,
                };
                !authority.eq_ignore_ascii_case(h)
            }
            Err(_) => true,
        },
        _ => false,
    }
}

pub(super) fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}
