//! The backchannel authentication endpoint (CIBA Core §7) and client authentication.

use super::*;

impl Shared {
    // -- backchannel authentication endpoint ------------------------------------------

    pub(super) fn backchannel(
        self: &Arc<Self>,
        headers: &HeaderMap,
        form: &Form,
    ) -> Result<Value, OAuthError> {
        let client = self.authenticate(headers, form)?;
        if form.get("request").is_some() {
            return Err(OAuthError::bad(
                "invalid_request",
                "signed authentication requests (request=) are not supported by the development OP",
            ));
        }
        if form.get("request_uri").is_some() {
            return Err(OAuthError::bad(
                "invalid_request",
                "request_uri is not supported by the development OP",
            ));
        }
        let hints = ["login_hint", "id_token_hint", "login_hint_token"];
        let present: Vec<&str> = hints
            .iter()
            .copied()
            .filter(|h| form.get(h).is_some())
            .collect();
        if present.len() != 1 {
            return Err(OAuthError::bad(
                "invalid_request",
                "exactly one of login_hint, id_token_hint and login_hint_token is required",
            ));
        }
        let scope = form.get("scope").unwrap_or_default();
        if !scope.split(' ').any(|s| s == "openid") {
            return Err(OAuthError::bad(
                "invalid_scope",
                "the scope must contain openid",
            ));
        }
        if present[0] != "login_hint" {
            return Err(OAuthError::bad(
                "invalid_request",
                "the development OP supports only login_hint",
            ));
        }
        let user = form.get("login_hint").unwrap_or_default();
        if !self.users.iter().any(|u| u == user) {
            return Err(OAuthError::bad(
                "unknown_user_id",
                "login_hint does not name a known user",
            ));
        }
        if form.get("user_code").is_some() {
            return Err(OAuthError::bad(
                "invalid_request",
                "user_code is not supported (backchannel_user_code_parameter_supported is false)",
            ));
        }
        let binding_message = form.get("binding_message").map(str::to_string);
        if let Some(bm) = &binding_message
            && !binding_message_ok(bm)
        {
            return Err(OAuthError::bad(
                "invalid_binding_message",
                "binding_message must be 1 to 64 letters, digits, spaces or -._+/!?#,:",
            ));
        }
        let lifetime = match form.get("requested_expiry") {
            None => self.default_expiry,
            Some(s) => match s.parse::<u64>() {
                Ok(n) if (1..=MAX_REQUESTED_EXPIRY).contains(&n) && !s.starts_with('+') => n,
                _ => {
                    return Err(OAuthError::bad(
                        "invalid_request",
                        "requested_expiry must be a whole number of seconds from 1 to 600",
                    ));
                }
            },
        };
        let notification_token = match client.delivery {
            DeliveryMode::Poll => None,
            DeliveryMode::Ping | DeliveryMode::Push => {
                let Some(t) = form.get("client_notification_token") else {
                    return Err(OAuthError::bad(
                        "invalid_request",
                        "client_notification_token is required for ping and push clients",
                    ));
                };
                if !bearer_token_syntax_ok(t) {
                    return Err(OAuthError::bad(
                        "invalid_request",
                        "client_notification_token must use bearer token syntax and be at most 1024 characters",
                    ));
                }
                Some(t.to_string())
            }
        };

        let now = Instant::now();
        let deadline = now + Duration::from_secs(lifetime);
        let auth_req_id = random_token(32);
        let view_id = random_token(16);
        {
            let mut st = self.lock();
            st.cleanup(now);
            if st.requests.len() >= MAX_REQUESTS {
                return Err(OAuthError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "temporarily_unavailable",
                    description: "too many outstanding requests".into(),
                    basic_challenge: false,
                });
            }
            st.by_view_id.insert(view_id.clone(), auth_req_id.clone());
            st.requests.insert(
                auth_req_id.clone(),
                AuthRequest {
                    view_id: view_id.clone(),
                    client_id: client.client_id.clone(),
                    user: user.to_string(),
                    scope: normalize_scope(scope),
                    binding_message: binding_message.clone(),
                    created: now,
                    deadline,
                    expires_at: unix_now() + lifetime,
                    notification_token,
                    status: Status::Pending,
                    polls: 0,
                    token_requests: 0,
                    redemption_requests: 0,
                    decided: None,
                    token_request_times: Vec::new(),
                },
            );
        }
        tracing::info!(
            client_id = %client.client_id,
            request = %view_id,
            delivery = client.delivery.as_str(),
            binding_message = binding_message.as_deref().unwrap_or(""),
            expires_in = lifetime,
            "development OP: authentication request waiting for approval"
        );
        if client.delivery == DeliveryMode::Push {
            let shared = self.clone();
            let id = auth_req_id.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
                shared.expire_push(&id);
            });
        }
        let mut ack = json!({"auth_req_id": auth_req_id, "expires_in": lifetime});
        if let Some(i) = self.interval {
            ack["interval"] = json!(i);
        }
        Ok(ack)
    }

    // -- client authentication ---------------------------------------------------------

    pub(super) fn authenticate(
        &self,
        headers: &HeaderMap,
        form: &Form,
    ) -> Result<&DevClient, OAuthError> {
        let basic = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => {
                let v = v
                    .to_str()
                    .map_err(|_| OAuthError::client("malformed Authorization header", true))?;
                let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
                if !scheme.eq_ignore_ascii_case("basic") {
                    return Err(OAuthError::client(
                        "use client_secret_basic or client_secret_post",
                        true,
                    ));
                }
                Some(
                    parse_basic_credentials(rest.trim())
                        .ok_or_else(|| OAuthError::client("malformed Basic credentials", true))?,
                )
            }
        };
        let post_secret = form.get("client_secret");
        let form_id = form.get("client_id");
        let (client_id, secret, via_basic) = match (basic, post_secret) {
            (Some(_), Some(_)) => {
                return Err(OAuthError::bad(
                    "invalid_request",
                    "use only one client authentication method",
                ));
            }
            (Some((id, secret)), None) => {
                if form_id.is_some_and(|f| f != id) {
                    return Err(OAuthError::bad(
                        "invalid_request",
                        "client_id in the body differs from the Basic credentials",
                    ));
                }
                (id, secret, true)
            }
            (None, Some(secret)) => {
                let Some(id) = form_id else {
                    return Err(OAuthError::client("client_id is missing", false));
                };
                (id.to_string(), secret.to_string(), false)
            }
            (None, None) => {
                return Err(OAuthError::client(
                    "client authentication is required",
                    true,
                ));
            }
        };
        let Some(client) = self.clients.get(&client_id) else {
            return Err(OAuthError::client(
                "client authentication failed",
                via_basic,
            ));
        };
        let same: bool = client.secret.as_bytes().ct_eq(secret.as_bytes()).into();
        if !same {
            return Err(OAuthError::client(
                "client authentication failed",
                via_basic,
            ));
        }
        Ok(client)
    }
}
