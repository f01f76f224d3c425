//! Decisions from the approval page and what they send: ping and push notifications.

use super::*;

impl Shared {
    // -- decisions ---------------------------------------------------------------------

    pub(super) fn decide(self: &Arc<Self>, id: &str, approve: bool) -> Result<(), DevOpError> {
        let now = Instant::now();
        let notification = {
            let mut st = self.lock();
            st.cleanup(now);
            let auth_req_id = if st.requests.contains_key(id) {
                id.to_string()
            } else {
                st.by_view_id.get(id).cloned().ok_or(DevOpError::NotFound)?
            };
            let req = st
                .requests
                .get_mut(&auth_req_id)
                .ok_or(DevOpError::NotFound)?;
            match req.status {
                Status::Pending if now < req.deadline => {}
                Status::Pending | Status::Expired => return Err(DevOpError::Expired),
                _ => return Err(DevOpError::AlreadyDecided),
            }
            let client = self
                .clients
                .get(&req.client_id)
                .ok_or(DevOpError::NotFound)?;
            let auth_time = unix_now();
            req.decided = Some(now);
            req.status = if approve {
                Status::Approved { auth_time }
            } else {
                Status::Denied
            };
            tracing::info!(
                client_id = %req.client_id,
                request = %req.view_id,
                decision = if approve { "approved" } else { "denied" },
                "development OP: user decided"
            );
            let url = client.notification_endpoint.clone().unwrap_or_default();
            let bearer = req.notification_token.clone().unwrap_or_default();
            match client.delivery {
                DeliveryMode::Poll => None,
                DeliveryMode::Ping => Some(Notification {
                    url,
                    bearer,
                    body: json!({"auth_req_id": auth_req_id}),
                    kind: "ping",
                }),
                DeliveryMode::Push if approve => {
                    match self.mint(req, &auth_req_id, auth_time, true) {
                        Ok(body) => {
                            req.status = Status::Redeemed;
                            Some(Notification {
                                url,
                                bearer,
                                body,
                                kind: "push",
                            })
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "development OP: push token minting failed");
                            Some(Notification {
                                url,
                                bearer,
                                body: json!({"error": "transaction_failed", "auth_req_id": auth_req_id}),
                                kind: "push error",
                            })
                        }
                    }
                }
                DeliveryMode::Push => Some(Notification {
                    url,
                    bearer,
                    body: json!({"error": "access_denied", "auth_req_id": auth_req_id}),
                    kind: "push error",
                }),
            }
        };
        if let Some(n) = notification {
            tokio::spawn(self.clone().notify(n));
        }
        Ok(())
    }

    /// Called when a push request's deadline passes: if still undecided, tell the client.
    pub(super) fn expire_push(self: &Arc<Self>, auth_req_id: &str) {
        let notification = {
            let mut st = self.lock();
            let Some(req) = st.requests.get_mut(auth_req_id) else {
                return;
            };
            if req.status != Status::Pending {
                return;
            }
            req.status = Status::Expired;
            let Some(client) = self.clients.get(&req.client_id) else {
                return;
            };
            Notification {
                url: client.notification_endpoint.clone().unwrap_or_default(),
                bearer: req.notification_token.clone().unwrap_or_default(),
                body: json!({"error": "expired_token", "auth_req_id": auth_req_id}),
                kind: "push error",
            }
        };
        tokio::spawn(self.clone().notify(notification));
    }

    pub(super) async fn notify(self: Arc<Self>, n: Notification) {
        let result = self
            .http
            .post(&n.url)
            .bearer_auth(&n.bearer)
            .json(&n.body)
            .send()
            .await;
        match result {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(kind = n.kind, endpoint = %n.url, "development OP: notification delivered");
            }
            Ok(r) => tracing::warn!(
                kind = n.kind,
                endpoint = %n.url,
                status = r.status().as_u16(),
                "development OP: notification rejected by the client (not retried)"
            ),
            Err(e) => tracing::warn!(
                kind = n.kind,
                endpoint = %n.url,
                error = %e,
                "development OP: notification failed (not retried)"
            ),
        }
    }
}
