//! The token endpoint: the CIBA grant for poll and ping clients, and token minting.

use super::*;

impl Shared {
    // -- token endpoint ----------------------------------------------------------------

    pub(super) fn token(&self, headers: &HeaderMap, form: &Form) -> Result<Value, OAuthError> {
        let client = self.authenticate(headers, form)?;
        match form.get("grant_type") {
            None => {
                return Err(OAuthError::bad("invalid_request", "grant_type is missing"));
            }
            Some(CIBA_GRANT_TYPE) => {}
            Some(_) => {
                return Err(OAuthError::bad(
                    "unsupported_grant_type",
                    "the development OP supports only urn:openid:params:grant-type:ciba",
                ));
            }
        }
        if client.delivery == DeliveryMode::Push {
            // RFC 6749 §5.2 unauthorized_client: the *client* is not allowed to use this
            // grant at the token endpoint — push clients get their tokens at their
            // notification endpoint (CIBA §10.3), independent of any auth_req_id.
            return Err(OAuthError::bad(
                "unauthorized_client",
                "this client is registered for push delivery; tokens are pushed to its notification endpoint",
            ));
        }
        let Some(auth_req_id) = form.get("auth_req_id").filter(|s| !s.is_empty()) else {
            return Err(OAuthError::bad("invalid_request", "auth_req_id is missing"));
        };
        let now = Instant::now();
        let mut st = self.lock();
        st.cleanup(now);
        let Some(req) = st
            .requests
            .get_mut(auth_req_id)
            .filter(|r| r.client_id == client.client_id)
        else {
            return Err(OAuthError::bad(
                "invalid_grant",
                "auth_req_id is unknown or was issued to another client",
            ));
        };
        let expired = now >= req.deadline;
        req.token_requests = req.token_requests.saturating_add(1);
        if req.token_request_times.len() < MAX_TIMES_KEPT {
            req.token_request_times.push(now);
        }
        if matches!(req.status, Status::Approved { .. } | Status::Redeemed) {
            req.redemption_requests = req.redemption_requests.saturating_add(1);
        }
        match req.status {
            Status::Pending | Status::Approved { .. } | Status::Expired if expired => Err(
                OAuthError::bad("expired_token", "the authentication request has expired"),
            ),
            Status::Expired => Err(OAuthError::bad(
                "expired_token",
                "the authentication request has expired",
            )),
            Status::Pending => {
                req.polls = req.polls.saturating_add(1);
                if req.polls <= self.slow_down_polls {
                    Err(OAuthError::bad("slow_down", "poll less often"))
                } else {
                    Err(OAuthError::bad(
                        "authorization_pending",
                        "the user has not decided yet",
                    ))
                }
            }
            Status::Denied => Err(OAuthError::bad(
                "access_denied",
                "the user denied the request",
            )),
            Status::Redeemed => Err(OAuthError::bad(
                "invalid_grant",
                "the tokens for this auth_req_id were already issued",
            )),
            Status::Approved { auth_time } => {
                let body =
                    self.mint(req, auth_req_id, auth_time, false)
                        .map_err(|e| OAuthError {
                            status: StatusCode::INTERNAL_SERVER_ERROR,
                            code: "server_error",
                            description: e,
                            basic_challenge: false,
                        })?;
                req.status = Status::Redeemed;
                Ok(body)
            }
        }
    }

    /// The token response for an approved request. Push adds `auth_req_id` to the body
    /// and the `auth_req_id`, `at_hash` and `rt_hash` claims to the ID token.
    pub(super) fn mint(
        &self,
        req: &AuthRequest,
        auth_req_id: &str,
        auth_time: u64,
        push: bool,
    ) -> Result<Value, String> {
        let access_token = random_token(32);
        let refresh_token = req
            .scope
            .split(' ')
            .any(|s| s == "offline_access")
            .then(|| random_token(32));
        let now = unix_now();
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("sub".into(), json!(subject_for(&req.user)));
        claims.insert("aud".into(), json!(req.client_id));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + ID_TOKEN_LIFETIME));
        claims.insert("auth_time".into(), json!(auth_time));
        claims.insert("acr".into(), json!(DEV_ACR));
        claims.insert("amr".into(), json!(["user"]));
        if push {
            claims.insert(AUTH_REQ_ID_CLAIM.into(), json!(auth_req_id));
            claims.insert("at_hash".into(), json!(half_hash(&access_token)));
            if let Some(rt) = &refresh_token {
                claims.insert(RT_HASH_CLAIM.into(), json!(half_hash(rt)));
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        let id_token = jsonwebtoken::encode(&header, &Value::Object(claims), &self.key)
            .map_err(|e| format!("could not sign the ID token: {e}"))?;
        let mut body = Map::new();
        if push {
            body.insert("auth_req_id".into(), json!(auth_req_id));
        }
        body.insert("access_token".into(), json!(access_token));
        body.insert("token_type".into(), json!("Bearer"));
        body.insert("expires_in".into(), json!(ACCESS_TOKEN_LIFETIME));
        body.insert("id_token".into(), json!(id_token));
        if let Some(rt) = refresh_token {
            body.insert("refresh_token".into(), json!(rt));
        }
        body.insert("scope".into(), json!(req.scope));
        Ok(Value::Object(body))
    }
}
