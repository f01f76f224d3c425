//! The CIBA client against a small scripted OpenID Provider on 127.0.0.1 (real sockets).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};

use ciba_gate::ciba::{
    AuthRequest, CibaClient, CibaError, ClientAuth, ClientConfig, DeliveryMode, ErrorCode,
    IdTokenCheck, Poller, PushNotification, SigningKey, TokenPoll, UserHint, at_hash,
};

const CLIENT_ID: &str = "client-1";

// ---------------------------------------------------------------------------------------------
// Scripted OP
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Canned {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn canned(status: u16, body: impl Into<String>) -> Canned {
    Canned {
        status,
        headers: vec![("content-type", "application/json".into())],
        body: body.into(),
    }
}

fn op_error(status: u16, code: &str) -> Canned {
    canned(
        status,
        json!({"error": code, "error_description": "scripted"}).to_string(),
    )
}

#[derive(Clone, Debug)]
struct Recorded {
    path: String,
    authorization: Option<String>,
    body: String,
}

impl Recorded {
    fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }
    fn field(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

#[derive(Default)]
struct OpState {
    discovery: Value,
    jwks: Value,
    backchannel: VecDeque<Canned>,
    token: VecDeque<Canned>,
    requests: Vec<Recorded>,
    hits: HashMap<String, usize>,
}

struct FakeOp {
    issuer: String,
    state: Arc<Mutex<OpState>>,
}

impl FakeOp {
    async fn start() -> FakeOp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let issuer = format!("http://{addr}");
        let state = Arc::new(Mutex::new(OpState {
            discovery: json!({
                "issuer": issuer,
                "backchannel_authentication_endpoint": format!("{issuer}/backchannel"),
                "token_endpoint": format!("{issuer}/token"),
                "jwks_uri": format!("{issuer}/jwks"),
                "backchannel_token_delivery_modes_supported": ["poll", "ping"],
                "backchannel_authentication_request_signing_alg_values_supported": ["PS256", "ES256", "RS256"],
                "backchannel_user_code_parameter_supported": true,
                "token_endpoint_auth_methods_supported":
                    ["client_secret_basic", "client_secret_post", "private_key_jwt"],
                "grant_types_supported": ["urn:openid:params:grant-type:ciba"],
            }),
            jwks: json!({"keys": [op_jwk()]}),
            ..OpState::default()
        }));
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeOp { issuer, state }
    }

    fn with<R>(&self, f: impl FnOnce(&mut OpState) -> R) -> R {
        f(&mut self.state.lock().expect("lock"))
    }

    fn hits(&self, path: &str) -> usize {
        self.with(|s| s.hits.get(path).copied().unwrap_or(0))
    }

    fn last(&self, path: &str) -> Recorded {
        self.with(|s| {
            s.requests
                .iter()
                .rev()
                .find(|r| r.path == path)
                .cloned()
                .expect("a recorded request")
        })
    }

    fn config(&self, auth: ClientAuth) -> ClientConfig {
        let mut c = ClientConfig::new(self.issuer.clone(), CLIENT_ID, auth, DeliveryMode::Poll);
        c.allow_http = true;
        c
    }

    async fn client(&self) -> CibaClient {
        CibaClient::discover(self.config(basic()))
            .await
            .expect("discovery")
    }
}

async fn handle(
    state: Arc<Mutex<OpState>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    let answer = {
        let mut s = state.lock().expect("lock");
        *s.hits.entry(path.clone()).or_default() += 1;
        s.requests.push(Recorded {
            path: path.clone(),
            authorization,
            body,
        });
        match path.as_str() {
            "/.well-known/openid-configuration" => canned(200, s.discovery.to_string()),
            "/jwks" => canned(200, s.jwks.to_string()),
            "/backchannel" => s
                .backchannel
                .pop_front()
                .unwrap_or_else(|| canned(200, r#"{"auth_req_id":"req-1","expires_in":120}"#)),
            "/token" => s
                .token
                .pop_front()
                .unwrap_or_else(|| op_error(400, "authorization_pending")),
            _ => canned(404, r#"{"error":"not_found"}"#),
        }
    };
    let mut resp = Response::builder().status(answer.status);
    for (k, v) in &answer.headers {
        resp = resp.header(*k, v);
    }
    Ok(resp
        .body(Full::new(Bytes::from(answer.body)))
        .expect("response"))
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

struct Keys {
    ec_pem: String,
    ec2_pem: String,
    rsa_pem: String,
    ed_pem: String,
    ed_public: Vec<u8>,
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        let ec = || {
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .expect("ec key")
                .serialize_pem()
        };
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed key");
        Keys {
            ec_pem: ec(),
            ec2_pem: ec(),
            rsa_pem: rsa_pem(),
            ed_pem: ed.serialize_pem(),
            ed_public: ed.public_key_raw().to_vec(),
        }
    })
}

/// rcgen (ring backend) cannot generate RSA keys; aws-lc-rs can.
fn rsa_pem() -> String {
    use aws_lc_rs::encoding::AsDer;
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa key");
    let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp).expect("pkcs8");
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

fn enc_key(alg: Algorithm, pem: &str) -> EncodingKey {
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .expect("encoding key")
}

fn pem_for(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => &keys().ec_pem,
        Algorithm::EdDSA => &keys().ed_pem,
        _ => &keys().rsa_pem,
    }
}

fn jwk(alg: Algorithm, pem: &str, kid: &str) -> Value {
    if alg == Algorithm::EdDSA {
        // jsonwebtoken cannot derive an OKP JWK from a private key here; build it by hand.
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&keys().ed_public);
        return json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid});
    }
    let mut j = Jwk::from_encoding_key(&enc_key(alg, pem), alg).expect("jwk");
    j.common.key_id = Some(kid.into());
    serde_json::to_value(j).expect("jwk json")
}

/// The OP's ID-token signing key (ES256, kid "op-ec").
fn op_jwk() -> Value {
    jwk(Algorithm::ES256, &keys().ec_pem, "op-ec")
}

fn mint(alg: Algorithm, pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, &enc_key(alg, pem)).expect("mint")
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn base_claims(issuer: &str) -> Value {
    json!({
        "iss": issuer,
        "sub": "user-123",
        "aud": CLIENT_ID,
        "exp": now() + 300,
        "iat": now(),
        "auth_time": now() - 5,
        "acr": "urn:acr:mfa",
        "amr": ["hwk", "user"],
    })
}

fn basic() -> ClientAuth {
    ClientAuth::SecretBasic {
        secret: "s3cret".into(),
    }
}

fn hint_req() -> AuthRequest {
    AuthRequest::new("openid", UserHint::LoginHint("alice@example.com".into()))
}

// ---------------------------------------------------------------------------------------------
// Discovery
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn discovery_ok_loads_metadata_and_jwks() {
    let op = FakeOp::start().await;
    let c = op.client().await;
    assert_eq!(c.metadata().issuer, op.issuer);
    assert_eq!(
        c.metadata().backchannel_authentication_endpoint,
        format!("{}/backchannel", op.issuer)
    );
    assert!(c.metadata().backchannel_user_code_parameter_supported);
    assert_eq!(op.hits("/jwks"), 1);
    assert_eq!(c.jwks_fetch_count(), 1);
}

async fn discovery_error(cfg: ClientConfig) -> CibaError {
    CibaClient::discover(cfg)
        .await
        .expect_err("discovery must fail")
}

#[tokio::test]
async fn discovery_issuer_mismatch_rejected() {
    let op = FakeOp::start().await;
    op.with(|s| s.discovery["issuer"] = "https://evil.example.com".into());
    let e = discovery_error(op.config(basic())).await;
    assert!(
        matches!(e, CibaError::Discovery(ref m) if m.contains("issuer")),
        "{e}"
    );
}

#[tokio::test]
async fn discovery_missing_backchannel_endpoint_rejected() {
    let op = FakeOp::start().await;
    op.with(|s| {
        s.discovery
            .as_object_mut()
            .expect("object")
            .remove("backchannel_authentication_endpoint")
    });
    let e = discovery_error(op.config(basic())).await;
    assert!(
        matches!(e, CibaError::Discovery(ref m) if m.contains("backchannel_authentication_endpoint")),
        "{e}"
    );
}

#[tokio::test]
async fn discovery_delivery_mode_not_supported_rejected() {
    let op = FakeOp::start().await;
    let mut cfg = op.config(basic());
    cfg.delivery = DeliveryMode::Push;
    let e = discovery_error(cfg).await;
    assert!(
        matches!(e, CibaError::Discovery(ref m) if m.contains("push")),
        "{e}"
    );
}

#[tokio::test]
async fn discovery_http_issuer_refused_unless_allow_http() {
    let op = FakeOp::start().await;
    let mut cfg = op.config(basic());
    cfg.allow_http = false;
    let e = discovery_error(cfg).await;
    assert!(matches!(e, CibaError::Config(_)), "{e}");
    assert_eq!(op.hits("/.well-known/openid-configuration"), 0);
}

#[tokio::test]
async fn discovery_rejects_unsupported_request_signing_alg() {
    let op = FakeOp::start().await;
    op.with(|s| {
        s.discovery["backchannel_authentication_request_signing_alg_values_supported"] =
            json!(["PS256"])
    });
    let mut cfg = op.config(basic());
    cfg.request_signing =
        Some(SigningKey::from_pem(Algorithm::ES256, None, keys().ec2_pem.as_bytes()).expect("key"));
    let e = discovery_error(cfg).await;
    assert!(matches!(e, CibaError::Discovery(_)), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Authentication request
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_endpoint_errors_map_to_typed_codes() {
    let op = FakeOp::start().await;
    let c = op.client().await;
    let table = [
        (400, "invalid_request", ErrorCode::InvalidRequest),
        (400, "invalid_scope", ErrorCode::InvalidScope),
        (
            400,
            "expired_login_hint_token",
            ErrorCode::ExpiredLoginHintToken,
        ),
        (400, "unknown_user_id", ErrorCode::UnknownUserId),
        (400, "unauthorized_client", ErrorCode::UnauthorizedClient),
        (400, "missing_user_code", ErrorCode::MissingUserCode),
        (400, "invalid_user_code", ErrorCode::InvalidUserCode),
        (
            400,
            "invalid_binding_message",
            ErrorCode::InvalidBindingMessage,
        ),
        (401, "invalid_client", ErrorCode::InvalidClient),
        (403, "access_denied", ErrorCode::AccessDenied),
    ];
    for (status, wire, code) in table {
        op.with(|s| s.backchannel.push_back(op_error(status, wire)));
        let e = c.authenticate(&hint_req()).await.expect_err(wire);
        match &e {
            CibaError::Endpoint {
                status: st,
                code: got,
                endpoint,
                ..
            } => {
                assert_eq!(*st, status);
                assert_eq!(got, &code);
                assert_eq!(*endpoint, "backchannel authentication");
            }
            other => panic!("{wire}: unexpected {other:?}"),
        }
        assert_eq!(e.code(), wire);
        assert!(!e.is_retryable(), "{wire} must be terminal");
    }

    // 5xx, JSON or not: retryable.
    op.with(|s| s.backchannel.push_back(op_error(500, "server_error")));
    let e = c.authenticate(&hint_req()).await.expect_err("500");
    assert!(
        matches!(e, CibaError::Endpoint { status: 500, .. }),
        "{e:?}"
    );
    assert_eq!(e.code(), "op_unavailable");
    assert!(e.is_retryable());
    op.with(|s| s.backchannel.push_back(canned(503, "Service Unavailable")));
    let e = c.authenticate(&hint_req()).await.expect_err("503");
    assert!(matches!(e, CibaError::NotJson { status: 503, .. }), "{e:?}");
    assert!(e.is_retryable());

    // Non-JSON answer.
    op.with(|s| s.backchannel.push_back(canned(400, "<html>oops</html>")));
    let e = c.authenticate(&hint_req()).await.expect_err("html");
    assert!(matches!(e, CibaError::NotJson { status: 400, .. }), "{e:?}");
    op.with(|s| s.backchannel.push_back(canned(200, "not json")));
    let e = c.authenticate(&hint_req()).await.expect_err("bad ack");
    assert!(matches!(e, CibaError::NotJson { status: 200, .. }), "{e:?}");

    // Unknown error string: Other, terminal.
    op.with(|s| s.backchannel.push_back(op_error(400, "weird_new_error")));
    let e = c.authenticate(&hint_req()).await.expect_err("weird");
    assert_eq!(
        e.error_code(),
        Some(&ErrorCode::Other("weird_new_error".into()))
    );
    assert_eq!(e.code(), "op_error");
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn auth_error_descriptions_do_not_echo_the_hint() {
    let op = FakeOp::start().await;
    let c = op.client().await;
    op.with(|s| {
        s.backchannel.push_back(canned(
            400,
            json!({"error": "unknown_user_id", "error_description": "no user alice@example.com"})
                .to_string(),
        ))
    });
    let e = c.authenticate(&hint_req()).await.expect_err("error");
    assert!(!e.to_string().contains("alice@example.com"), "{e}");
    assert!(!format!("{e:?}").contains("alice@example.com"));
}

#[tokio::test]
async fn auth_request_form_and_basic_auth_on_the_wire() {
    let op = FakeOp::start().await;
    let mut cfg = op.config(ClientAuth::SecretBasic {
        secret: "p@ss:w/rd+ é".into(),
    });
    cfg.client_id = "client:1 x".into();
    let c = CibaClient::discover(cfg).await.expect("discovery");
    op.with(|s| {
        s.backchannel.push_back(canned(
            200,
            r#"{"auth_req_id":"abc-123","expires_in":90,"interval":3}"#,
        ))
    });
    let mut req = hint_req();
    req.binding_message = Some("W4SCT".into());
    req.acr_values = Some("urn:acr:mfa".into());
    req.requested_expiry = Some(120);
    req.user_code = Some("9876".into());
    req.authorization_details = Some(json!([{"type": "tool_call", "tool": "pay"}]));
    let ack = c.authenticate(&req).await.expect("ack");
    assert_eq!(ack.auth_req_id, "abc-123");
    assert_eq!(ack.expires_in, 90);
    assert_eq!(ack.interval, Some(3));

    let r = op.last("/backchannel");
    let auth = r.authorization.clone().expect("basic header");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.strip_prefix("Basic ").expect("Basic"))
        .expect("base64");
    assert_eq!(
        String::from_utf8(raw).expect("utf8"),
        "client%3A1+x:p%40ss%3Aw%2Frd%2B+%C3%A9"
    );
    assert_eq!(r.field("scope").as_deref(), Some("openid"));
    assert_eq!(r.field("login_hint").as_deref(), Some("alice@example.com"));
    assert_eq!(r.field("binding_message").as_deref(), Some("W4SCT"));
    assert_eq!(r.field("acr_values").as_deref(), Some("urn:acr:mfa"));
    assert_eq!(r.field("requested_expiry").as_deref(), Some("120"));
    assert_eq!(r.field("user_code").as_deref(), Some("9876"));
    let details: Value =
        serde_json::from_str(&r.field("authorization_details").expect("details")).expect("json");
    assert_eq!(details[0]["tool"], "pay");
    assert_eq!(r.field("client_secret"), None);
    assert_eq!(r.field("client_notification_token"), None);
}

#[tokio::test]
async fn exactly_one_hint_on_the_wire() {
    let op = FakeOp::start().await;
    let c = op.client().await;
    for hint in [
        UserHint::LoginHint("alice".into()),
        UserHint::IdTokenHint("eyJ.previous.token".into()),
        UserHint::LoginHintToken("eyJ.hint.token".into()),
    ] {
        c.authenticate(&AuthRequest::new("openid profile", hint.clone()))
            .await
            .expect("ack");
        let form = op.last("/backchannel").form();
        let hints: Vec<_> = form
            .iter()
            .filter(|(k, _)| {
                ["login_hint", "id_token_hint", "login_hint_token"].contains(&k.as_str())
            })
            .collect();
        assert_eq!(hints.len(), 1, "{form:?}");
        assert_eq!(hints[0].0, hint.param());
        assert_eq!(hints[0].1, hint.value());
    }
    // A scope without openid never reaches the OP.
    let before = op.hits("/backchannel");
    let e = c
        .authenticate(&AuthRequest::new(
            "profile",
            UserHint::LoginHint("a".into()),
        ))
        .await
        .expect_err("no openid");
    assert!(matches!(e, CibaError::Config(_)));
    assert_eq!(op.hits("/backchannel"), before);
}

#[tokio::test]
async fn ping_mode_sends_notification_token() {
    let op = FakeOp::start().await;
    let mut cfg = op.config(basic());
    cfg.delivery = DeliveryMode::Ping;
    let c = CibaClient::discover(cfg).await.expect("discovery");
    let mut req = hint_req();
    let e = c.authenticate(&req).await.expect_err("token required");
    assert!(matches!(e, CibaError::Config(_)));
    let token = ciba_gate::ciba::new_notification_token();
    req.client_notification_token = Some(token.clone());
    c.authenticate(&req).await.expect("ack");
    assert_eq!(
        op.last("/backchannel").field("client_notification_token"),
        Some(token)
    );
}

#[tokio::test]
async fn client_secret_post_on_the_wire() {
    let op = FakeOp::start().await;
    let c = CibaClient::discover(op.config(ClientAuth::SecretPost {
        secret: "s3cret".into(),
    }))
    .await
    .expect("discovery");
    c.authenticate(&hint_req()).await.expect("ack");
    let r = op.last("/backchannel");
    assert_eq!(r.authorization, None);
    assert_eq!(r.field("client_id").as_deref(), Some(CLIENT_ID));
    assert_eq!(r.field("client_secret").as_deref(), Some("s3cret"));
    c.poll_token("req-1").await.expect("pending");
    let r = op.last("/token");
    assert_eq!(r.field("client_secret").as_deref(), Some("s3cret"));
}

async fn check_private_key_jwt(alg: Algorithm) {
    let op = FakeOp::start().await;
    let key = SigningKey::from_pem(alg, Some("client-key".into()), pem_for(alg).as_bytes())
        .expect("signing key");
    let public = key.public_jwk().expect("public jwk");
    let c = CibaClient::discover(op.config(ClientAuth::PrivateKeyJwt { key }))
        .await
        .expect("discovery");
    c.authenticate(&hint_req()).await.expect("ack");
    c.poll_token("req-1").await.expect("pending");

    let mut jtis = Vec::new();
    for path in ["/backchannel", "/token"] {
        let r = op.last(path);
        assert_eq!(r.authorization, None);
        assert_eq!(r.field("client_id").as_deref(), Some(CLIENT_ID));
        assert_eq!(
            r.field("client_assertion_type").as_deref(),
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        );
        let assertion = r.field("client_assertion").expect("assertion");
        let header = jsonwebtoken::decode_header(&assertion).expect("header");
        assert_eq!(header.alg, alg);
        assert_eq!(header.kid.as_deref(), Some("client-key"));
        let mut v = Validation::new(alg);
        v.set_audience(&[op.issuer.as_str()]);
        v.set_issuer(&[CLIENT_ID]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let dk = DecodingKey::from_jwk(&public).expect("decoding key");
        let data = jsonwebtoken::decode::<Value>(&assertion, &dk, &v).expect("verifies");
        let cl = data.claims;
        assert_eq!(cl["sub"], CLIENT_ID);
        assert_eq!(cl["aud"], op.issuer.as_str());
        let (iat, exp) = (
            cl["iat"].as_i64().expect("iat"),
            cl["exp"].as_i64().expect("exp"),
        );
        assert!((iat - now()).abs() <= 5);
        assert!(exp > iat && exp - iat <= 300);
        jtis.push(cl["jti"].as_str().expect("jti").to_owned());
    }
    assert_ne!(jtis[0], jtis[1]);
}

#[tokio::test]
async fn private_key_jwt_rs256() {
    check_private_key_jwt(Algorithm::RS256).await;
}

#[tokio::test]
async fn private_key_jwt_ps256() {
    check_private_key_jwt(Algorithm::PS256).await;
}

#[tokio::test]
async fn private_key_jwt_es256() {
    check_private_key_jwt(Algorithm::ES256).await;
}

#[tokio::test]
async fn signed_request_object_content() {
    let op = FakeOp::start().await;
    let key = SigningKey::from_pem(
        Algorithm::PS256,
        Some("req-key".into()),
        keys().rsa_pem.as_bytes(),
    )
    .expect("key");
    let public = key.public_jwk().expect("jwk");
    let mut cfg = op.config(basic());
    cfg.request_signing = Some(key);
    let c = CibaClient::discover(cfg).await.expect("discovery");
    let mut req = hint_req();
    req.binding_message = Some("W4SCT".into());
    req.requested_expiry = Some(120);
    req.authorization_details = Some(json!([{"type": "tool_call"}]));
    c.authenticate(&req).await.expect("ack");

    let r = op.last("/backchannel");
    assert!(r.authorization.is_some(), "client auth still applies");
    let mut names: Vec<_> = r.form().into_iter().map(|(k, _)| k).collect();
    names.sort();
    assert_eq!(names, ["client_id", "request"]);
    assert_eq!(r.field("client_id").as_deref(), Some(CLIENT_ID));
    let jwt = r.field("request").expect("request");
    let header = jsonwebtoken::decode_header(&jwt).expect("header");
    assert_eq!(header.alg, Algorithm::PS256);
    assert_eq!(header.kid.as_deref(), Some("req-key"));
    let mut v = Validation::new(Algorithm::PS256);
    v.set_audience(&[op.issuer.as_str()]);
    v.set_issuer(&[CLIENT_ID]);
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp", "iss", "aud", "nbf"]);
    let claims =
        jsonwebtoken::decode::<Value>(&jwt, &DecodingKey::from_jwk(&public).expect("dk"), &v)
            .expect("verifies")
            .claims;
    assert_eq!(claims["scope"], "openid");
    assert_eq!(claims["login_hint"], "alice@example.com");
    assert_eq!(claims["binding_message"], "W4SCT");
    assert_eq!(claims["requested_expiry"], 120);
    assert_eq!(claims["authorization_details"][0]["type"], "tool_call");
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert!(claims["iat"].is_i64() || claims["iat"].is_u64());
    assert!(claims.get("id_token_hint").is_none());
}

// ---------------------------------------------------------------------------------------------
// Token polling
// ---------------------------------------------------------------------------------------------

fn token_body(op: &FakeOp) -> String {
    let id = mint(
        Algorithm::ES256,
        &keys().ec_pem,
        Some("op-ec"),
        &base_claims(&op.issuer),
    );
    json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 60, "id_token": id})
        .to_string()
}

#[tokio::test]
async fn token_polling_pending_slow_down_retry_after_then_granted() {
    let op = FakeOp::start().await;
    let c = op.client().await;
    let mut retry = canned(503, "");
    retry.headers.push(("retry-after", "30".into()));
    let granted = canned(200, token_body(&op));
    op.with(|s| {
        s.token.extend([
            op_error(400, "authorization_pending"),
            op_error(400, "slow_down"),
            op_error(400, "authorization_pending"),
            retry,
            granted,
        ])
    });
    let mut p = Poller::new(None);
    assert_eq!(
        p.next_wait(),
        Duration::from_secs(5),
        "wait before the first poll"
    );

    let o = c.poll_token("req-1").await.expect("poll 1");
    assert_eq!(o, TokenPoll::Pending);
    p.observe(&o);
    assert_eq!(p.next_wait(), Duration::from_secs(5));

    let o = c.poll_token("req-1").await.expect("poll 2");
    assert_eq!(o, TokenPoll::SlowDown);
    p.observe(&o);
    assert_eq!(p.next_wait(), Duration::from_secs(10));

    let o = c.poll_token("req-1").await.expect("poll 3");
    assert_eq!(o, TokenPoll::Pending);
    p.observe(&o);
    assert_eq!(p.next_wait(), Duration::from_secs(10), "slow_down stays");

    let o = c.poll_token("req-1").await.expect("poll 4");
    assert_eq!(o, TokenPoll::RetryAfter(Duration::from_secs(30)));
    p.observe(&o);
    assert_eq!(p.next_wait(), Duration::from_secs(30));
    assert_eq!(p.next_wait(), Duration::from_secs(10));

    let TokenPoll::Granted(t) = c.poll_token("req-1").await.expect("poll 5") else {
        panic!("expected tokens");
    };
    assert_eq!(t.access_token, "at-1");
    assert!(!format!("{t:?}").contains("at-1"));

    let r = op.last("/token");
    assert_eq!(
        r.field("grant_type").as_deref(),
        Some("urn:openid:params:grant-type:ciba")
    );
    assert_eq!(r.field("auth_req_id").as_deref(), Some("req-1"));
    assert!(r.authorization.is_some());

    // The ID token from the token response validates (poll: no hash claims needed).
    let ev = c
        .validate_id_token(
            &t.id_token,
            &IdTokenCheck {
                auth_req_id: Some("req-1"),
                access_token: Some(&t.access_token),
                ..IdTokenCheck::default()
            },
        )
        .await
        .expect("valid");
    assert_eq!(ev.subject, "user-123");
}

#[tokio::test]
async fn token_polling_terminal_errors() {
    let op = FakeOp::start().await;
    let c = op.client().await;
    for (status, wire, code) in [
        (400, "expired_token", ErrorCode::ExpiredToken),
        (400, "access_denied", ErrorCode::AccessDenied),
        (403, "access_denied", ErrorCode::AccessDenied),
        (400, "invalid_grant", ErrorCode::InvalidGrant),
        (400, "invalid_request", ErrorCode::InvalidRequest),
        (401, "invalid_client", ErrorCode::InvalidClient),
    ] {
        op.with(|s| s.token.push_back(op_error(status, wire)));
        let e = c.poll_token("req-1").await.expect_err(wire);
        assert_eq!(e.error_code(), Some(&code), "{wire}");
        assert_eq!(e.code(), wire);
        assert!(!e.is_retryable(), "{wire} must be terminal");
    }
    // 503 without Retry-After is an error, but a retryable one.
    op.with(|s| s.token.push_back(canned(503, "busy")));
    let e = c.poll_token("req-1").await.expect_err("503");
    assert!(e.is_retryable());
}

// ---------------------------------------------------------------------------------------------
// ID token validation
// ---------------------------------------------------------------------------------------------

async fn validate(c: &CibaClient, token: &str, check: IdTokenCheck<'_>) -> Result<(), CibaError> {
    c.validate_id_token(token, &check).await.map(|_| ())
}

#[tokio::test]
async fn id_token_good_yields_evidence() {
    let op = FakeOp::start().await;
    let c = op.client().await;
    let t = mint(
        Algorithm::ES256,
        &keys().ec_pem,
        Some("op-ec"),
        &base_claims(&op.issuer),
    );
    let ev = c
        .validate_id_token(
            &t,
            &IdTokenCheck {
                expected_acr: Some("urn:acr:other urn:acr:mfa"),
                ..IdTokenCheck::default()
            },
        )
        .await
        .expect("valid");
    assert_eq!(ev.subject, "user-123");
    assert_eq!(ev.acr.as_deref(), Some("urn:acr:mfa"));
    assert_eq!(ev.amr, ["hwk", "user"]);
    assert!(ev.auth_time.is_some_and(|t| (t - (now() - 5)).abs() <= 2));
    assert_eq!(ev.issuer, op.issuer);
}

#[tokio::test]
async fn id_token_each_signature_alg() {
    let op = FakeOp::start().await;
    op.with(|s| {
        s.jwks = json!({"keys": [
            jwk(Algorithm::ES256, &keys().ec_pem, "op-ec"),
            jwk(Algorithm::RS256, &keys().rsa_pem, "op-rsa"),
            jwk(Algorithm::PS256, &keys().rsa_pem, "op-rsa-pss"),
            jwk(Algorithm::EdDSA, &keys().ed_pem, "op-ed"),
        ]})
    });
    let c = op.client().await;
    for (alg, kid) in [
        (Algorithm::ES256, "op-ec"),
        (Algorithm::RS256, "op-rsa"),
        (Algorithm::PS256, "op-rsa-pss"),
        (Algorithm::EdDSA, "op-ed"),
    ] {
        let t = mint(alg, pem_for(alg), Some(kid), &base_claims(&op.issuer));
        validate(&c, &t, IdTokenCheck::default())
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
    }
    // A JWK whose "alg" is RS256 must not verify a PS256 token.
    let t = mint(
        Algorithm::PS256,
        &keys().rsa_pem,
        Some("op-rsa"),
        &base_claims(&op.issuer),
    );
    assert!(matches!(
        validate(&c, &t, IdTokenCheck::default()).await,
        Err(CibaError::InvalidIdToken(_))
    ));
}

#[tokio::test]
async fn id_token_rejections() {
    let op = FakeOp::start().await;
    let c = op.client().await;
    let iss = op.issuer.clone();
    let good = || base_claims(&iss);
    let ec = &keys().ec_pem;
    let sign = |claims: &Value| mint(Algorithm::ES256, ec, Some("op-ec"), claims);

    let reject = |name: &'static str, token: String, check: IdTokenCheck<'static>| {
        let c = c.clone();
        async move {
            match validate(&c, &token, check).await {
                Err(CibaError::InvalidIdToken(m)) => {
                    assert!(!m.contains(&token), "{name}: message leaks the token");
                    m
                }
                other => panic!("{name}: expected InvalidIdToken, got {other:?}"),
            }
        }
    };

    // Wrong signature: another key under the OP's kid.
    reject(
        "wrong signature",
        mint(Algorithm::ES256, &keys().ec2_pem, Some("op-ec"), &good()),
        IdTokenCheck::default(),
    )
    .await;
    let mut cl = good();
    cl["iss"] = "https://other.example.com".into();
    reject("wrong issuer", sign(&cl), IdTokenCheck::default()).await;
    let mut cl = good();
    cl["aud"] = "someone-else".into();
    reject("wrong audience", sign(&cl), IdTokenCheck::default()).await;
    let mut cl = good();
    cl["exp"] = (now() - 3600).into();
    reject("expired", sign(&cl), IdTokenCheck::default()).await;
    let mut cl = good();
    cl["iat"] = (now() + 3600).into();
    reject("iat in the future", sign(&cl), IdTokenCheck::default()).await;
    let mut cl = good();
    cl["aud"] = json!([CLIENT_ID, "other"]);
    cl["azp"] = "other".into();
    reject("azp mismatch", sign(&cl), IdTokenCheck::default()).await;
    let mut cl = good();
    cl["aud"] = json!([CLIENT_ID, "other"]);
    reject(
        "several audiences, no azp",
        sign(&cl),
        IdTokenCheck::default(),
    )
    .await;
    let mut cl = good();
    cl["aud"] = json!([CLIENT_ID, "other"]);
    cl["azp"] = CLIENT_ID.into();
    validate(&c, &sign(&cl), IdTokenCheck::default())
        .await
        .expect("azp = client_id with several audiences is fine");
    reject(
        "acr not requested value",
        sign(&good()),
        IdTokenCheck {
            expected_acr: Some("urn:acr:loa4"),
            ..IdTokenCheck::default()
        },
    )
    .await;
    let mut cl = good();
    cl["urn:openid:params:jwt:claim:auth_req_id"] = "other-req".into();
    reject(
        "auth_req_id mismatch (poll)",
        sign(&cl),
        IdTokenCheck {
            auth_req_id: Some("req-1"),
            ..IdTokenCheck::default()
        },
    )
    .await;
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good(),
        &EncodingKey::from_secret(b"secret"),
    )
    .expect("hs");
    reject("HMAC token", hs, IdTokenCheck::default()).await;
    reject("garbage", "not.a.jwt".into(), IdTokenCheck::default()).await;
}

#[tokio::test]
async fn id_token_push_claims() {
    let op = FakeOp::start().await;
    let c = op.client().await;
    let push = |rt: Option<&'static str>| IdTokenCheck {
        auth_req_id: Some("req-1"),
        access_token: Some("at-1"),
        refresh_token: rt,
        push: true,
        expected_acr: None,
    };
    let full = || {
        let mut cl = base_claims(&op.issuer);
        cl["urn:openid:params:jwt:claim:auth_req_id"] = "req-1".into();
        cl["at_hash"] = at_hash("at-1", Algorithm::ES256).expect("hash").into();
        cl["urn:openid:params:jwt:claim:rt_hash"] =
            at_hash("rt-1", Algorithm::ES256).expect("hash").into();
        cl
    };
    let sign = |cl: &Value| mint(Algorithm::ES256, &keys().ec_pem, Some("op-ec"), cl);

    validate(&c, &sign(&full()), push(Some("rt-1")))
        .await
        .expect("complete push token");

    let mut cl = full();
    cl.as_object_mut()
        .expect("obj")
        .remove("urn:openid:params:jwt:claim:auth_req_id");
    assert!(matches!(
        validate(&c, &sign(&cl), push(None)).await,
        Err(CibaError::InvalidIdToken(_))
    ));
    // Poll/ping: the same token is fine.
    validate(&c, &sign(&cl), IdTokenCheck::default())
        .await
        .expect("optional outside push");

    let mut cl = full();
    cl["at_hash"] = at_hash("other", Algorithm::ES256).expect("hash").into();
    assert!(matches!(
        validate(&c, &sign(&cl), push(None)).await,
        Err(CibaError::InvalidIdToken(_))
    ));

    let mut cl = full();
    cl.as_object_mut().expect("obj").remove("at_hash");
    assert!(matches!(
        validate(&c, &sign(&cl), push(None)).await,
        Err(CibaError::InvalidIdToken(_))
    ));

    let mut cl = full();
    cl.as_object_mut()
        .expect("obj")
        .remove("urn:openid:params:jwt:claim:rt_hash");
    assert!(matches!(
        validate(&c, &sign(&cl), push(Some("rt-1"))).await,
        Err(CibaError::InvalidIdToken(_))
    ));
    validate(&c, &sign(&cl), push(None))
        .await
        .expect("no refresh token, no rt_hash needed");

    let mut cl = full();
    cl["urn:openid:params:jwt:claim:rt_hash"] =
        at_hash("rt-2", Algorithm::ES256).expect("h").into();
    assert!(matches!(
        validate(&c, &sign(&cl), push(Some("rt-1"))).await,
        Err(CibaError::InvalidIdToken(_))
    ));
}

#[tokio::test]
async fn push_notification_end_to_end() {
    let op = FakeOp::start().await;
    let c = op.client().await;
    let mut cl = base_claims(&op.issuer);
    cl["urn:openid:params:jwt:claim:auth_req_id"] = "req-9".into();
    cl["at_hash"] = at_hash("at-9", Algorithm::ES256).expect("hash").into();
    let id = mint(Algorithm::ES256, &keys().ec_pem, Some("op-ec"), &cl);
    let body = json!({"auth_req_id": "req-9", "access_token": "at-9", "token_type": "Bearer",
                      "expires_in": 60, "id_token": id});
    let PushNotification::Tokens {
        auth_req_id,
        tokens,
    } = CibaClient::parse_push(body.to_string().as_bytes()).expect("push")
    else {
        panic!("expected tokens");
    };
    let ev = c
        .validate_id_token(
            &tokens.id_token,
            &IdTokenCheck {
                auth_req_id: Some(&auth_req_id),
                access_token: Some(&tokens.access_token),
                refresh_token: tokens.refresh_token.as_deref(),
                push: true,
                expected_acr: None,
            },
        )
        .await
        .expect("valid push");
    assert_eq!(ev.subject, "user-123");
    assert_eq!(
        CibaClient::parse_ping(br#"{"auth_req_id":"req-9"}"#).expect("ping"),
        "req-9"
    );
}

#[tokio::test]
async fn unknown_kid_refreshes_jwks_once_then_fails_closed() {
    let op = FakeOp::start().await;
    let c = op.client().await;
    assert_eq!(op.hits("/jwks"), 1);
    let t = mint(
        Algorithm::ES256,
        &keys().ec2_pem,
        Some("rotated"),
        &base_claims(&op.issuer),
    );
    for _ in 0..3 {
        let e = validate(&c, &t, IdTokenCheck::default()).await;
        assert!(matches!(e, Err(CibaError::InvalidIdToken(_))), "{e:?}");
    }
    assert_eq!(
        op.hits("/jwks"),
        2,
        "exactly one refresh within the rate limit"
    );
    assert_eq!(c.jwks_fetch_count(), 2);
    // Known keys keep working without any fetch.
    let good = mint(
        Algorithm::ES256,
        &keys().ec_pem,
        Some("op-ec"),
        &base_claims(&op.issuer),
    );
    validate(&c, &good, IdTokenCheck::default())
        .await
        .expect("valid");
    assert_eq!(op.hits("/jwks"), 2);
}

#[tokio::test]
async fn unknown_kid_after_key_rotation_is_found_by_refresh() {
    let op = FakeOp::start().await;
    let c = op.client().await;
    op.with(|s| {
        s.jwks = json!({"keys": [op_jwk(), jwk(Algorithm::ES256, &keys().ec2_pem, "rotated")]})
    });
    let t = mint(
        Algorithm::ES256,
        &keys().ec2_pem,
        Some("rotated"),
        &base_claims(&op.issuer),
    );
    validate(&c, &t, IdTokenCheck::default())
        .await
        .expect("found after refresh");
    assert_eq!(op.hits("/jwks"), 2);
}
