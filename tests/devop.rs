//! The development OpenID Provider over real sockets, with hand-rolled CIBA client calls.

use std::convert::Infallible;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use ciba_gate::devop::op::{DeliveryMode, DevClient, DevOp, DevOpConfig, DevOpError};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const USER: &str = "demo@example.com";
const CIBA: &str = "urn:openid:params:grant-type:ciba";
const NOTIFY_TOKEN: &str = "n0tification-T0ken_abcdefghijklmnopqrstuvwxyz012345";

fn client(id: &str, delivery: DeliveryMode, endpoint: Option<String>) -> DevClient {
    DevClient {
        client_id: id.to_string(),
        secret: format!("{id}-secret"),
        delivery,
        notification_endpoint: endpoint,
    }
}

fn base_config() -> DevOpConfig {
    DevOpConfig {
        issuer: String::new(),
        clients: vec![
            client("agent", DeliveryMode::Poll, None),
            client("other", DeliveryMode::Poll, None),
        ],
        users: vec![USER.to_string()],
        interval: None,
        slow_down_polls: 0,
        default_expiry: 60,
    }
}

async fn start(cfg: DevOpConfig) -> (DevOp, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let op = DevOp::spawn(listener, cfg).await.unwrap();
    let base = op.issuer().to_string();
    (op, base)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// client_secret_basic POST to an OP endpoint.
async fn post_basic(
    url: &str,
    client_id: &str,
    secret: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let r = http()
        .post(url)
        .basic_auth(client_id, Some(secret))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn backchannel(base: &str, client_id: &str, form: &[(&str, &str)]) -> (u16, Value) {
    post_basic(
        &format!("{base}/backchannel"),
        client_id,
        &format!("{client_id}-secret"),
        form,
    )
    .await
}

async fn start_request(base: &str, client_id: &str, extra: &[(&str, &str)]) -> Value {
    let mut form = vec![
        ("scope", "openid"),
        ("login_hint", USER),
        ("binding_message", "Deploy api to prod"),
    ];
    form.extend_from_slice(extra);
    let (status, body) = backchannel(base, client_id, &form).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn poll(base: &str, client_id: &str, auth_req_id: &str) -> (u16, Value) {
    post_basic(
        &format!("{base}/token"),
        client_id,
        &format!("{client_id}-secret"),
        &[("grant_type", CIBA), ("auth_req_id", auth_req_id)],
    )
    .await
}

async fn pending(base: &str) -> Vec<Value> {
    let v: Value = http()
        .get(format!("{base}/api/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.as_array().unwrap().clone()
}

/// The opaque page id of the request with this binding message.
async fn view_id(base: &str, binding_message: &str) -> String {
    pending(base)
        .await
        .into_iter()
        .find(|r| r["binding_message"] == binding_message)
        .expect("request is listed")["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn api_decide(base: &str, id: &str, action: &str) -> (u16, Value) {
    let r = http()
        .post(format!("{base}/api/requests/{id}/{action}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("<none>")
}

/// A tiny notification receiver: every POST is reported as (Authorization, JSON body).
async fn receiver() -> (String, mpsc::UnboundedReceiver<(Option<String>, Value)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cb", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let auth = req
                            .headers()
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_string());
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let _ = tx.send((auth, v));
                        let mut r = hyper::Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = hyper::StatusCode::NO_CONTENT;
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, rx)
}

async fn next_notification(
    rx: &mut mpsc::UnboundedReceiver<(Option<String>, Value)>,
) -> (Option<String>, Value) {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("notification within 5 s")
        .expect("channel open")
}

async fn jwks(base: &str) -> JwkSet {
    http()
        .get(format!("{base}/jwks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn verify_id_token(base: &str, id_token: &str, aud: &str) -> Value {
    let header = jsonwebtoken::decode_header(id_token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    let set = jwks(base).await;
    let jwk = set
        .find(header.kid.as_deref().unwrap())
        .expect("kid in JWKS");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[aud]);
    validation.set_issuer(&[base]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(id_token, &key, &validation)
        .unwrap()
        .claims
}

fn half_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(&Sha256::digest(token.as_bytes())[..16])
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn discovery_lists_ciba_metadata_and_dev_marker() {
    let (op, base) = start(base_config()).await;
    assert_eq!(base, format!("http://{}", op.local_addr()));
    let d: Value = http()
        .get(format!("{base}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["issuer"], base);
    assert_eq!(
        d["backchannel_authentication_endpoint"],
        format!("{base}/backchannel")
    );
    assert_eq!(d["token_endpoint"], format!("{base}/token"));
    assert_eq!(d["jwks_uri"], format!("{base}/jwks"));
    assert_eq!(
        d["backchannel_token_delivery_modes_supported"],
        json!(["poll", "ping", "push"])
    );
    assert_eq!(d["backchannel_user_code_parameter_supported"], false);
    assert!(
        d["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(CIBA))
    );
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
    assert_eq!(d["id_token_signing_alg_values_supported"], json!(["ES256"]));
    assert_eq!(d["response_types_supported"], json!([]));
    assert!(d["subject_types_supported"].is_array());
    assert!(
        d["scopes_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("openid"))
    );
    assert_eq!(d["ciba_gate_development_op"], true);
    assert!(
        d.get("backchannel_authentication_request_signing_alg_values_supported")
            .is_none()
    );
}

#[tokio::test]
async fn jwks_has_one_es256_p256_key() {
    let (_op, base) = start(base_config()).await;
    let v: Value = http()
        .get(format!("{base}/jwks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert_eq!(k["kty"], "EC");
    assert_eq!(k["crv"], "P-256");
    assert_eq!(k["alg"], "ES256");
    assert_eq!(k["use"], "sig");
    assert!(k["kid"].as_str().is_some_and(|s| !s.is_empty()));
    for c in ["x", "y"] {
        let bytes = URL_SAFE_NO_PAD.decode(k[c].as_str().unwrap()).unwrap();
        assert_eq!(bytes.len(), 32, "{c} is a 32-byte coordinate");
    }
    assert!(k.get("d").is_none(), "no private part");
}

#[tokio::test]
async fn backchannel_rejects_bad_client_authentication() {
    let (_op, base) = start(base_config()).await;
    let url = format!("{base}/backchannel");
    let form = [("scope", "openid"), ("login_hint", USER)];

    let (s, v) = post_basic(&url, "agent", "wrong", &form).await;
    assert_eq!((s, error_of(&v)), (401, "invalid_client"));
    assert!(v["error_description"].is_string());

    let r = http()
        .post(&url)
        .basic_auth("agent", Some("wrong"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("www-authenticate").is_some());

    let (s, v) = post_basic(&url, "nobody", "agent-secret", &form).await;
    assert_eq!((s, error_of(&v)), (401, "invalid_client"));

    // client_secret_post, wrong secret
    let r = http()
        .post(&url)
        .form(&[
            ("client_id", "agent"),
            ("client_secret", "nope"),
            ("scope", "openid"),
            ("login_hint", USER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");

    // no authentication at all
    let r = http().post(&url).form(&form).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");

    // client_secret_post, right secret
    let r = http()
        .post(&url)
        .form(&[
            ("client_id", "agent"),
            ("client_secret", "agent-secret"),
            ("scope", "openid"),
            ("login_hint", USER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // two methods at once
    let r = http()
        .post(&url)
        .basic_auth("agent", Some("agent-secret"))
        .form(&[
            ("client_secret", "agent-secret"),
            ("scope", "openid"),
            ("login_hint", USER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
}

#[tokio::test]
async fn basic_credentials_are_form_decoded_per_rfc6749() {
    let mut cfg = base_config();
    cfg.clients.push(DevClient {
        client_id: "my agent".into(),
        secret: "p@ss:word+ünï".into(),
        delivery: DeliveryMode::Poll,
        notification_endpoint: None,
    });
    let (_op, base) = start(cfg).await;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let credentials = STANDARD.encode(format!("{}:{}", enc("my agent"), enc("p@ss:word+ünï")));
    let r = http()
        .post(format!("{base}/backchannel"))
        .header("authorization", format!("Basic {credentials}"))
        .form(&[("scope", "openid"), ("login_hint", USER)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn backchannel_error_codes() {
    let (_op, base) = start(base_config()).await;
    let long = "x".repeat(65);
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("scope", "profile"), ("login_hint", USER)],
            "invalid_scope",
        ),
        (vec![("login_hint", USER)], "invalid_scope"),
        (
            vec![("scope", "openid"), ("login_hint", "mallory@example.com")],
            "unknown_user_id",
        ),
        (
            vec![
                ("scope", "openid"),
                ("login_hint", USER),
                ("binding_message", &long),
            ],
            "invalid_binding_message",
        ),
        (
            vec![
                ("scope", "openid"),
                ("login_hint", USER),
                ("binding_message", "semi;colon"),
            ],
            "invalid_binding_message",
        ),
        (vec![("scope", "openid")], "invalid_request"),
        (
            vec![
                ("scope", "openid"),
                ("login_hint", USER),
                ("id_token_hint", "eyJ.x.y"),
            ],
            "invalid_request",
        ),
        (
            vec![("scope", "openid"), ("login_hint_token", "abc")],
            "invalid_request",
        ),
        (
            vec![
                ("scope", "openid"),
                ("login_hint", USER),
                ("requested_expiry", "0"),
            ],
            "invalid_request",
        ),
        (
            vec![
                ("scope", "openid"),
                ("login_hint", USER),
                ("requested_expiry", "601"),
            ],
            "invalid_request",
        ),
        (
            vec![
                ("scope", "openid"),
                ("login_hint", USER),
                ("requested_expiry", "soon"),
            ],
            "invalid_request",
        ),
        (
            vec![
                ("scope", "openid"),
                ("login_hint", USER),
                ("user_code", "1234"),
            ],
            "invalid_request",
        ),
        (
            vec![
                ("scope", "openid"),
                ("login_hint", USER),
                ("login_hint", USER),
            ],
            "invalid_request",
        ),
    ];
    for (form, expected) in cases {
        let (status, body) = backchannel(&base, "agent", &form).await;
        assert_eq!(status, 400, "{form:?} → {body}");
        assert_eq!(error_of(&body), expected, "{form:?} → {body}");
        assert!(body["error_description"].is_string());
    }

    // Accepted edge cases: the largest expiry, 64 characters, several scopes.
    let (status, ack) = backchannel(
        &base,
        "agent",
        &[
            ("scope", "profile openid email"),
            ("login_hint", USER),
            ("requested_expiry", "600"),
            ("binding_message", &"Ok-._+/!?#,: 9".repeat(5)[..64]),
        ],
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["expires_in"], 600);
}

#[tokio::test]
async fn ping_and_push_clients_need_a_valid_notification_token() {
    let (url, _rx) = receiver().await;
    let mut cfg = base_config();
    cfg.clients = vec![
        client("pinger", DeliveryMode::Ping, Some(url.clone())),
        client("pusher", DeliveryMode::Push, Some(url)),
    ];
    let (_op, base) = start(cfg).await;
    for c in ["pinger", "pusher"] {
        let (s, v) = backchannel(&base, c, &[("scope", "openid"), ("login_hint", USER)]).await;
        assert_eq!((s, error_of(&v)), (400, "invalid_request"), "{c}");
        let (s, v) = backchannel(
            &base,
            c,
            &[
                ("scope", "openid"),
                ("login_hint", USER),
                ("client_notification_token", "not a bearer token"),
            ],
        )
        .await;
        assert_eq!((s, error_of(&v)), (400, "invalid_request"), "{c}");
        let (s, v) = backchannel(
            &base,
            c,
            &[
                ("scope", "openid"),
                ("login_hint", USER),
                ("client_notification_token", NOTIFY_TOKEN),
            ],
        )
        .await;
        assert_eq!(s, 200, "{c}: {v}");
    }
}

#[tokio::test]
async fn poll_flow_pending_then_approved_tokens_once() {
    let (_op, base) = start(base_config()).await;
    let ack = start_request(&base, "agent", &[("requested_expiry", "90")]).await;
    let auth_req_id = ack["auth_req_id"].as_str().unwrap();
    assert!(
        URL_SAFE_NO_PAD.decode(auth_req_id).unwrap().len() >= 16,
        "≥128 bits"
    );
    assert_eq!(ack["expires_in"], 90);
    assert!(
        ack.get("interval").is_none(),
        "no interval unless configured"
    );

    let (s, v) = poll(&base, "agent", auth_req_id).await;
    assert_eq!((s, error_of(&v)), (400, "authorization_pending"));

    // The page API shows it, without secrets.
    let list = pending(&base).await;
    assert_eq!(list.len(), 1);
    let item = &list[0];
    assert_eq!(item["client_id"], "agent");
    assert_eq!(item["binding_message"], "Deploy api to prod");
    assert_eq!(item["scope"], "openid");
    assert_eq!(item["user"], "d***@example.com");
    assert!(item["expires_at"].as_u64().unwrap() > 0);
    let text = item.to_string();
    assert!(!text.contains(auth_req_id), "auth_req_id not on the page");
    assert!(!text.contains("agent-secret"));

    let id = item["id"].as_str().unwrap();
    let (s, _) = api_decide(&base, id, "approve").await;
    assert_eq!(s, 204);
    assert!(pending(&base).await.is_empty());

    // Another client cannot redeem it.
    let (s, v) = poll(&base, "other", auth_req_id).await;
    assert_eq!((s, error_of(&v)), (400, "invalid_grant"));

    let (s, tokens) = poll(&base, "agent", auth_req_id).await;
    assert_eq!(s, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(
        tokens["access_token"]
            .as_str()
            .is_some_and(|t| t.len() >= 22)
    );
    assert!(tokens["expires_in"].as_u64().is_some());
    assert!(tokens.get("refresh_token").is_none());
    let claims = verify_id_token(&base, tokens["id_token"].as_str().unwrap(), "agent").await;
    assert_eq!(claims["iss"], base);
    assert_eq!(claims["aud"], "agent");
    assert!(claims["sub"].as_str().unwrap().starts_with("user-"));
    assert_eq!(claims["acr"], "urn:ciba-gate:dev:phone");
    assert_eq!(claims["amr"], json!(["user"]));
    assert!(claims["auth_time"].as_u64().is_some());
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 300);

    let (s, v) = poll(&base, "agent", auth_req_id).await;
    assert_eq!((s, error_of(&v)), (400, "invalid_grant"), "single use");

    // Deciding again: 409.
    let (s, v) = api_decide(&base, id, "deny").await;
    assert_eq!((s, error_of(&v)), (409, "already_decided"));
    let (s, v) = api_decide(&base, "no-such-id", "approve").await;
    assert_eq!((s, error_of(&v)), (404, "not_found"));
}

#[tokio::test]
async fn subject_is_stable_per_user() {
    let (op, base) = start(base_config()).await;
    let mut subs = Vec::new();
    for _ in 0..2 {
        let ack = start_request(&base, "agent", &[]).await;
        let id = ack["auth_req_id"].as_str().unwrap();
        op.decide(id, true).await.unwrap();
        let (_, tokens) = poll(&base, "agent", id).await;
        let claims = verify_id_token(&base, tokens["id_token"].as_str().unwrap(), "agent").await;
        subs.push(claims["sub"].as_str().unwrap().to_string());
    }
    assert_eq!(subs[0], subs[1]);
    assert!(!subs[0].contains("demo"), "pseudonymous");
}

#[tokio::test]
async fn offline_access_adds_a_refresh_token() {
    let (op, base) = start(base_config()).await;
    let (s, ack) = backchannel(
        &base,
        "agent",
        &[("scope", "openid offline_access"), ("login_hint", USER)],
    )
    .await;
    assert_eq!(s, 200);
    let id = ack["auth_req_id"].as_str().unwrap();
    op.decide(id, true).await.unwrap();
    let (_, tokens) = poll(&base, "agent", id).await;
    assert!(tokens["refresh_token"].as_str().is_some());
}

#[tokio::test]
async fn poll_denied_gives_access_denied() {
    let (_op, base) = start(base_config()).await;
    let ack = start_request(&base, "agent", &[]).await;
    let auth_req_id = ack["auth_req_id"].as_str().unwrap();
    let id = view_id(&base, "Deploy api to prod").await;
    let (s, _) = api_decide(&base, &id, "deny").await;
    assert_eq!(s, 204);
    let (s, v) = poll(&base, "agent", auth_req_id).await;
    assert_eq!((s, error_of(&v)), (400, "access_denied"));
}

#[tokio::test]
async fn interval_is_sent_when_configured() {
    let mut cfg = base_config();
    cfg.interval = Some(2);
    let (_op, base) = start(cfg).await;
    let ack = start_request(&base, "agent", &[]).await;
    assert_eq!(ack["interval"], 2);
    assert_eq!(ack["expires_in"], 60, "default expiry");
}

#[tokio::test]
async fn slow_down_for_the_first_polls() {
    let mut cfg = base_config();
    cfg.slow_down_polls = 2;
    let (op, base) = start(cfg).await;
    let ack = start_request(&base, "agent", &[]).await;
    let id = ack["auth_req_id"].as_str().unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (s, v) = poll(&base, "agent", id).await;
        assert_eq!(s, 400);
        seen.push(error_of(&v).to_string());
    }
    assert_eq!(
        seen,
        [
            "slow_down",
            "slow_down",
            "authorization_pending",
            "authorization_pending"
        ]
    );
    // Counted per request.
    let ack2 = start_request(&base, "agent", &[]).await;
    let id2 = ack2["auth_req_id"].as_str().unwrap();
    let (_, v) = poll(&base, "agent", id2).await;
    assert_eq!(error_of(&v), "slow_down");
    op.decide(id, true).await.unwrap();
    let (s, _) = poll(&base, "agent", id).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn expired_requests_give_expired_token() {
    let (op, base) = start(base_config()).await;
    let ack = start_request(&base, "agent", &[("requested_expiry", "1")]).await;
    let id = ack["auth_req_id"].as_str().unwrap();
    assert_eq!(ack["expires_in"], 1);
    let view = view_id(&base, "Deploy api to prod").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        pending(&base).await.is_empty(),
        "expired requests leave the page"
    );
    let (s, v) = poll(&base, "agent", id).await;
    assert_eq!((s, error_of(&v)), (400, "expired_token"));
    assert_eq!(op.decide(id, true).await, Err(DevOpError::Expired));
    let (s, v) = api_decide(&base, &view, "approve").await;
    assert_eq!((s, error_of(&v)), (410, "expired"));
}

#[tokio::test]
async fn token_endpoint_errors() {
    let mut cfg = base_config();
    let (url, _rx) = receiver().await;
    cfg.clients
        .push(client("pusher", DeliveryMode::Push, Some(url)));
    let (_op, base) = start(cfg).await;
    let ack = start_request(&base, "agent", &[]).await;
    let id = ack["auth_req_id"].as_str().unwrap();
    let token = format!("{base}/token");

    let (s, v) = post_basic(
        &token,
        "agent",
        "bad",
        &[("grant_type", CIBA), ("auth_req_id", id)],
    )
    .await;
    assert_eq!((s, error_of(&v)), (401, "invalid_client"));
    let (s, v) = post_basic(
        &token,
        "agent",
        "agent-secret",
        &[("grant_type", "authorization_code"), ("auth_req_id", id)],
    )
    .await;
    assert_eq!((s, error_of(&v)), (400, "unsupported_grant_type"));
    let (s, v) = post_basic(&token, "agent", "agent-secret", &[("grant_type", CIBA)]).await;
    assert_eq!((s, error_of(&v)), (400, "invalid_request"));
    let (s, v) = poll(&base, "agent", "unknown").await;
    assert_eq!((s, error_of(&v)), (400, "invalid_grant"));
    let (s, v) = poll(&base, "pusher", id).await;
    assert_eq!((s, error_of(&v)), (400, "unauthorized_client"));
}

#[tokio::test]
async fn ping_is_sent_on_approve_and_on_deny() {
    let (url, mut rx) = receiver().await;
    let mut cfg = base_config();
    cfg.clients = vec![client("pinger", DeliveryMode::Ping, Some(url))];
    let (op, base) = start(cfg).await;

    // approve via the HTTP API
    let ack = start_request(
        &base,
        "pinger",
        &[("client_notification_token", NOTIFY_TOKEN)],
    )
    .await;
    let id = ack["auth_req_id"].as_str().unwrap().to_string();
    let view = view_id(&base, "Deploy api to prod").await;
    assert_eq!(api_decide(&base, &view, "approve").await.0, 204);
    let (auth, body) = next_notification(&mut rx).await;
    assert_eq!(
        auth.as_deref(),
        Some(format!("Bearer {NOTIFY_TOKEN}").as_str())
    );
    assert_eq!(body, json!({"auth_req_id": id}));
    let (s, tokens) = poll(&base, "pinger", &id).await;
    assert_eq!(s, 200);
    assert!(tokens["id_token"].is_string());

    // deny via DevOp::decide
    let other_token = "second-token-0123456789abcdefghijklmnop";
    let ack = start_request(
        &base,
        "pinger",
        &[("client_notification_token", other_token)],
    )
    .await;
    let id = ack["auth_req_id"].as_str().unwrap().to_string();
    op.decide(&id, false).await.unwrap();
    let (auth, body) = next_notification(&mut rx).await;
    assert_eq!(
        auth.as_deref(),
        Some(format!("Bearer {other_token}").as_str())
    );
    assert_eq!(body, json!({"auth_req_id": id}));
    let (s, v) = poll(&base, "pinger", &id).await;
    assert_eq!((s, error_of(&v)), (400, "access_denied"));
}

#[tokio::test]
async fn push_delivers_tokens_with_a_verifiable_id_token() {
    let (url, mut rx) = receiver().await;
    let mut cfg = base_config();
    cfg.clients = vec![client("pusher", DeliveryMode::Push, Some(url))];
    let (op, base) = start(cfg).await;

    let (s, ack) = backchannel(
        &base,
        "pusher",
        &[
            ("scope", "openid offline_access"),
            ("login_hint", USER),
            ("binding_message", "Delete repo acme/web"),
            ("client_notification_token", NOTIFY_TOKEN),
        ],
    )
    .await;
    assert_eq!(s, 200, "{ack}");
    let id = ack["auth_req_id"].as_str().unwrap().to_string();
    // decide() also accepts the page's opaque id
    let view = view_id(&base, "Delete repo acme/web").await;
    op.decide(&view, true).await.unwrap();

    let (auth, body) = next_notification(&mut rx).await;
    assert_eq!(
        auth.as_deref(),
        Some(format!("Bearer {NOTIFY_TOKEN}").as_str())
    );
    assert_eq!(body["auth_req_id"], id.as_str());
    assert_eq!(body["token_type"], "Bearer");
    let access_token = body["access_token"].as_str().unwrap();
    let refresh_token = body["refresh_token"].as_str().unwrap();
    let claims = verify_id_token(&base, body["id_token"].as_str().unwrap(), "pusher").await;
    assert_eq!(
        claims["urn:openid:params:jwt:claim:auth_req_id"],
        id.as_str()
    );
    assert_eq!(claims["at_hash"], half_hash(access_token));
    assert_eq!(
        claims["urn:openid:params:jwt:claim:rt_hash"],
        half_hash(refresh_token)
    );
    assert_eq!(claims["acr"], "urn:ciba-gate:dev:phone");

    // Push clients never use the token endpoint.
    let (s, v) = poll(&base, "pusher", &id).await;
    assert_eq!((s, error_of(&v)), (400, "unauthorized_client"));
    assert_eq!(op.decide(&id, false).await, Err(DevOpError::AlreadyDecided));

    // Denial is pushed as an error.
    let ack = start_request(
        &base,
        "pusher",
        &[("client_notification_token", NOTIFY_TOKEN)],
    )
    .await;
    let id = ack["auth_req_id"].as_str().unwrap().to_string();
    op.decide(&id, false).await.unwrap();
    let (_, body) = next_notification(&mut rx).await;
    assert_eq!(body, json!({"error": "access_denied", "auth_req_id": id}));

    // Expiry is pushed as an error too.
    let ack = start_request(
        &base,
        "pusher",
        &[
            ("client_notification_token", NOTIFY_TOKEN),
            ("requested_expiry", "1"),
        ],
    )
    .await;
    let id = ack["auth_req_id"].as_str().unwrap().to_string();
    let (_, body) = next_notification(&mut rx).await;
    assert_eq!(body, json!({"error": "expired_token", "auth_req_id": id}));
}

#[tokio::test]
async fn approval_page_lists_requests_with_escaped_text() {
    let mut cfg = base_config();
    cfg.clients.push(DevClient {
        client_id: "<img src=x onerror=alert(1)>&\"".into(),
        secret: "s".into(),
        delivery: DeliveryMode::Poll,
        notification_endpoint: None,
    });
    let (_op, base) = start(cfg).await;

    let empty = http().get(format!("{base}/")).send().await.unwrap();
    let html = empty.text().await.unwrap();
    assert!(html.contains("No pending requests"));

    let r = http()
        .post(format!("{base}/backchannel"))
        .form(&[
            ("client_id", "<img src=x onerror=alert(1)>&\""),
            ("client_secret", "s"),
            ("scope", "openid"),
            ("login_hint", USER),
            ("binding_message", "Pay 10 EUR to Bob #7"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let id = view_id(&base, "Pay 10 EUR to Bob #7").await;

    let r = http().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(r.headers().get("content-security-policy").is_some());
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let html = r.text().await.unwrap();
    assert!(html.contains("name=\"viewport\""));
    assert!(html.contains("Development OpenID Provider — not for production"));
    assert!(html.contains("Pay 10 EUR to Bob #7"));
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;&amp;&quot;"));
    assert!(!html.contains("<img src=x"));
    assert!(html.contains(&format!("data-action=\"approve\" data-id=\"{id}\"")));
    assert!(html.contains(&format!("data-action=\"deny\" data-id=\"{id}\"")));
    assert!(html.contains("d***@example.com"));
    assert!(!html.contains(USER));
    assert!(html.contains("api/requests"), "auto-refresh script");
}

#[tokio::test]
async fn page_api_refuses_rebinding_and_cross_site_posts() {
    let (_op, base) = start(base_config()).await;
    start_request(&base, "agent", &[]).await;
    let id = view_id(&base, "Deploy api to prod").await;

    let r = http()
        .get(format!("{base}/api/requests"))
        .header("host", "attacker.example:80")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 421);

    let r = http()
        .post(format!("{base}/api/requests/{id}/approve"))
        .header("origin", "https://attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = http()
        .post(format!("{base}/api/requests/{id}/approve"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // Same origin works.
    let r = http()
        .post(format!("{base}/api/requests/{id}/approve"))
        .header("origin", base.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
}

#[tokio::test]
async fn malformed_input_gets_oauth_errors_not_panics() {
    let (_op, base) = start(base_config()).await;
    let c = http();
    let bc = format!("{base}/backchannel");

    // JSON body instead of a form
    let r = c
        .post(&bc)
        .basic_auth("agent", Some("agent-secret"))
        .header("content-type", "application/json")
        .body(r#"{"scope":"openid"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");

    // Garbage Basic credentials
    for auth in ["Basic !!!", "Basic", "Bearer abc", "Basic /w=="] {
        let r = c
            .post(&bc)
            .header("authorization", auth)
            .form(&[("scope", "openid")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{auth}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "invalid_client");
        assert!(v["error_description"].is_string());
    }

    // Invalid percent-encoded UTF-8 and non-UTF-8 bytes
    for body in [&b"scope=openid&login_hint=%FF"[..], &b"scope=\xff\xfe"[..]] {
        let r = c
            .post(&bc)
            .basic_auth("agent", Some("agent-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    }

    // Oversized body
    let r = c
        .post(&bc)
        .basic_auth("agent", Some("agent-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "scope=openid&binding_message={}",
            "a".repeat(100_000)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);

    // Empty body at the token endpoint
    let r = c
        .post(format!("{base}/token"))
        .basic_auth("agent", Some("agent-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");

    // Wrong methods and unknown paths
    let r = c.get(&bc).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let r = c.get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = c
        .post(format!("{base}/api/requests/x/maybe"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // Still alive
    let r = c
        .get(format!("{base}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn spawn_rejects_bad_configuration() {
    let bad = |cfg: DevOpConfig| async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        DevOp::spawn(listener, cfg).await.unwrap_err().kind()
    };
    let mut cfg = base_config();
    cfg.clients.push(client("pinger", DeliveryMode::Ping, None));
    assert_eq!(bad(cfg).await, std::io::ErrorKind::InvalidInput);
    let mut cfg = base_config();
    cfg.clients.push(client("agent", DeliveryMode::Poll, None));
    assert_eq!(bad(cfg).await, std::io::ErrorKind::InvalidInput);
    let mut cfg = base_config();
    cfg.issuer = "ftp://x".into();
    assert_eq!(bad(cfg).await, std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn issuer_with_a_path_prefix() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = base_config();
    cfg.issuer = format!("http://{addr}/op/");
    let op = DevOp::spawn(listener, cfg).await.unwrap();
    let base = op.issuer().to_string();
    assert_eq!(base, format!("http://{addr}/op"));
    let d: Value = http()
        .get(format!("{base}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["token_endpoint"], format!("{base}/token"));
    start_request(&base, "agent", &[]).await;
    let r = http().get(format!("{base}/")).send().await.unwrap();
    assert!(r.text().await.unwrap().contains("Deploy api to prod"));
    op.shutdown();
}
