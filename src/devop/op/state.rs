//! The development OP's state: its clients, users and keys, and every authentication
//! request it holds, with what the phone page and the tests may see of it.

use super::*;

pub(super) struct Shared {
    pub(super) issuer: String,
    /// The issuer URL's path without the trailing slash ("" for a root issuer).
    pub(super) prefix: String,
    pub(super) issuer_host: String,
    pub(super) clients: HashMap<String, DevClient>,
    pub(super) users: Vec<String>,
    pub(super) interval: Option<u64>,
    pub(super) slow_down_polls: u32,
    pub(super) default_expiry: u64,
    pub(super) key: EncodingKey,
    pub(super) kid: String,
    pub(super) jwks: Value,
    pub(super) http: reqwest::Client,
    pub(super) state: Mutex<State>,
}

#[derive(Default)]
pub(super) struct State {
    /// By `auth_req_id`.
    pub(super) requests: HashMap<String, AuthRequest>,
    /// Opaque view id → `auth_req_id`.
    pub(super) by_view_id: HashMap<String, String>,
}

pub(super) struct AuthRequest {
    pub(super) view_id: String,
    pub(super) client_id: String,
    pub(super) user: String,
    pub(super) scope: String,
    pub(super) binding_message: Option<String>,
    pub(super) created: Instant,
    pub(super) deadline: Instant,
    pub(super) expires_at: u64,
    pub(super) notification_token: Option<String>,
    pub(super) status: Status,
    pub(super) polls: u32,
    /// Every token request for this `auth_req_id`.
    pub(super) token_requests: u32,
    /// Token requests that arrived after the user approved (a client that redeems its
    /// grant once makes exactly one).
    pub(super) redemption_requests: u32,
    /// When the user decided.
    pub(super) decided: Option<Instant>,
    /// When each token request arrived (capped; for timing analysis in tests).
    pub(super) token_request_times: Vec<Instant>,
}

/// What the token endpoint saw for one request (`DevOp::request_stats`). The id is the
/// opaque view id, never the `auth_req_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestStats {
    pub id: String,
    pub approved: bool,
    pub token_requests: u32,
    pub redemption_requests: u32,
    /// Milliseconds from the request's creation to the user's decision.
    pub decided_after_ms: Option<u64>,
    /// Milliseconds from the request's creation to each token request.
    pub token_requests_after_ms: Vec<u64>,
}

/// Totals over every request the OP still remembers (`GET /api/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevOpStats {
    pub requests: u64,
    pub approved: u64,
    pub token_requests: u64,
    /// Token requests for grants the user had approved.
    pub redemption_requests: u64,
    /// Approved requests whose grant was asked for more than once.
    pub double_redemptions: u64,
    /// Approved requests whose tokens were issued (token endpoint or push).
    pub tokens_issued: u64,
}

pub(super) const MAX_TIMES_KEPT: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Pending,
    Approved {
        auth_time: u64,
    },
    Denied,
    /// Tokens were handed out (token endpoint or push).
    Redeemed,
    /// Ran out of time undecided and the push client was told so.
    Expired,
}

pub(super) struct Notification {
    pub(super) url: String,
    pub(super) bearer: String,
    pub(super) body: Value,
    pub(super) kind: &'static str,
}

pub(super) fn invalid_input(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

impl Shared {
    pub(super) fn new(cfg: DevOpConfig, local_addr: SocketAddr) -> std::io::Result<Shared> {
        let issuer = if cfg.issuer.trim().is_empty() {
            let ip = match local_addr.ip() {
                IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
                IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                ip => ip,
            };
            format!("http://{}", SocketAddr::new(ip, local_addr.port()))
        } else {
            cfg.issuer.trim().trim_end_matches('/').to_string()
        };
        let url = url::Url::parse(&issuer)
            .map_err(|e| invalid_input(format!("development OP issuer {issuer:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https")
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(invalid_input(format!(
                "development OP issuer {issuer:?} must be an http(s) URL without query or fragment"
            )));
        }
        let prefix = url.path().trim_end_matches('/').to_string();
        let issuer_host = url.host_str().unwrap_or_default().to_ascii_lowercase();

        let mut clients = HashMap::new();
        for c in cfg.clients {
            if c.client_id.is_empty() {
                return Err(invalid_input("development OP: empty client_id".into()));
            }
            if c.delivery != DeliveryMode::Poll {
                let Some(ep) = &c.notification_endpoint else {
                    return Err(invalid_input(format!(
                        "development OP client {:?}: {} mode needs a notification_endpoint",
                        c.client_id,
                        c.delivery.as_str()
                    )));
                };
                let ok = url::Url::parse(ep)
                    .map(|u| matches!(u.scheme(), "http" | "https"))
                    .unwrap_or(false);
                if !ok {
                    return Err(invalid_input(format!(
                        "development OP client {:?}: notification_endpoint {ep:?} is not an http(s) URL",
                        c.client_id
                    )));
                }
            }
            let id = c.client_id.clone();
            if clients.insert(id.clone(), c).is_some() {
                return Err(invalid_input(format!(
                    "development OP: client {id:?} is configured twice"
                )));
            }
        }

        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| std::io::Error::other("could not generate an ES256 key"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(|_| std::io::Error::other("could not load the generated ES256 key"))?;
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err(std::io::Error::other(
                "unexpected P-256 public key encoding",
            ));
        }
        let (x, y) = (&point[1..33], &point[33..65]);
        let kid = format!("dev-{}", &hex::encode(Sha256::digest(point))[..16]);
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
            "kid": kid, "alg": "ES256", "use": "sig",
        }]});
        let key = EncodingKey::from_ec_der(pkcs8.as_ref());

        let http = reqwest::Client::builder()
            .timeout(NOTIFY_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| std::io::Error::other(format!("notification HTTP client: {e}")))?;

        Ok(Shared {
            issuer,
            prefix,
            issuer_host,
            clients,
            users: cfg.users,
            interval: cfg.interval,
            slow_down_polls: cfg.slow_down_polls,
            default_expiry: cfg.default_expiry.max(1),
            key,
            kid,
            jwks,
            http,
            state: Mutex::new(State::default()),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    pub(super) fn discovery(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "backchannel_authentication_endpoint": self.endpoint("/backchannel"),
            "token_endpoint": self.endpoint("/token"),
            "jwks_uri": self.endpoint("/jwks"),
            "backchannel_token_delivery_modes_supported": ["poll", "ping", "push"],
            "backchannel_user_code_parameter_supported": false,
            "grant_types_supported": [CIBA_GRANT_TYPE],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "subject_types_supported": ["public"],
            "response_types_supported": [],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "claims_supported": ["iss", "sub", "aud", "iat", "exp", "auth_time", "acr", "amr"],
            "acr_values_supported": [DEV_ACR],
            "ciba_gate_development_op": true,
            "ciba_gate_approval_page": self.endpoint("/"),
        })
    }

    pub(super) fn stats(&self) -> DevOpStats {
        let st = self.lock();
        let mut out = DevOpStats::default();
        for r in st.requests.values() {
            out.requests += 1;
            out.token_requests += u64::from(r.token_requests);
            out.redemption_requests += u64::from(r.redemption_requests);
            if r.approved() {
                out.approved += 1;
                if r.status == Status::Redeemed {
                    out.tokens_issued += 1;
                }
                if r.redemption_requests > 1 {
                    out.double_redemptions += 1;
                }
            }
        }
        out
    }

    pub(super) fn pending(&self, now: Instant) -> Vec<PendingView> {
        let mut st = self.lock();
        st.cleanup(now);
        let mut items: Vec<(&AuthRequest, PendingView)> = st
            .requests
            .values()
            .filter(|r| r.status == Status::Pending && now < r.deadline)
            .map(|r| (r, r.view(now)))
            .collect();
        items.sort_by_key(|(r, _)| r.created);
        items.into_iter().map(|(_, v)| v).collect()
    }
}

impl State {
    pub(super) fn cleanup(&mut self, now: Instant) {
        let before = self.requests.len();
        self.requests
            .retain(|_, r| now < r.deadline + RETAIN_AFTER_EXPIRY);
        if self.requests.len() != before {
            let live: std::collections::HashSet<&str> =
                self.requests.keys().map(String::as_str).collect();
            self.by_view_id.retain(|_, a| live.contains(a.as_str()));
        }
    }
}

impl AuthRequest {
    pub(super) fn approved(&self) -> bool {
        matches!(self.status, Status::Approved { .. } | Status::Redeemed)
    }

    pub(super) fn view(&self, now: Instant) -> PendingView {
        PendingView {
            id: self.view_id.clone(),
            client_id: self.client_id.clone(),
            binding_message: self.binding_message.clone(),
            scope: self.scope.clone(),
            expires_at: self.expires_at,
            expires_in: self.deadline.saturating_duration_since(now).as_secs(),
            user: mask_user(&self.user),
        }
    }
}
