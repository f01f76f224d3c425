//! `id_token`: ID token checks after the key lookup (signature, standard claims, the
//! CIBA bindings), on tokens signed by a fixed Ed25519 test key.

use std::sync::OnceLock;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::Value;

use crate::ciba::{
    ClientAuth, ClientConfig, DeliveryMode, IdTokenCheck, ProviderMetadata, at_hash,
};

const ISSUER: &str = "https://op.example";
const CLIENT: &str = "gate";
const AUTH_REQ_ID: &str = "req-1";
const ACCESS: &str = "at-value";
const REFRESH: &str = "rt-value";
const ACRS: &str = "urn:loa:2 urn:loa:3";
/// Leeway of the default client configuration (60 s), plus slack for the time a run takes.
const SKEW: i64 = 60 + 5;
const CLAIMS: [&str; 13] = [
    "iss",
    "sub",
    "aud",
    "azp",
    "exp",
    "nbf",
    "iat",
    "auth_time",
    "acr",
    "amr",
    "at_hash",
    "urn:openid:params:jwt:claim:rt_hash",
    "urn:openid:params:jwt:claim:auth_req_id",
];

fn keys() -> &'static (EncodingKey, DecodingKey) {
    static KEYS: OnceLock<(EncodingKey, DecodingKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        // A fixed seed: runs are reproducible; the key signs nothing outside this target.
        let pair = Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).expect("seed");
        let pkcs8 = pair.to_pkcs8().expect("pkcs8");
        (
            EncodingKey::from_ed_der(pkcs8.as_ref()),
            DecodingKey::from_ed_der(pair.public_key().as_ref()),
        )
    })
}

/// Input: a flag byte, two bytes of tampering position, then the claims text, signed
/// as it is after replacing `$NOW` (the current time), `$AT` and `$RT` (the hashes of
/// the access and refresh tokens). Flags: 1 push, 2 access token given, 4 refresh token
/// given, 8 `acr_values` requested, 16 the text is the whole token (unsigned), 32..224
/// tamper with one byte of the signed token. Properties:
/// - an unsigned or tampered token never validates;
/// - a validated token names this issuer, an audience with this client (and `azp`
///   when there are several), a non-empty subject, an unexpired `exp`, an `iat` not in
///   the future, a requested `acr`, and every binding (`auth_req_id`, `at_hash`,
///   `rt_hash`) that push mode requires or the token carries;
/// - no claim the gateway reads appears twice in a validated token;
/// - the evidence repeats the token's own `sub`, `acr` and `amr`.
pub fn id_token(data: &[u8]) {
    let [flags, p0, p1, text @ ..] = data else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let (encoding, decoding) = keys();
    let check = IdTokenCheck {
        auth_req_id: Some(AUTH_REQ_ID),
        access_token: (flags & 2 != 0).then_some(ACCESS),
        refresh_token: (flags & 4 != 0).then_some(REFRESH),
        push: flags & 1 != 0,
        expected_acr: (flags & 8 != 0).then_some(ACRS),
    };
    let cfg = ClientConfig::new(
        ISSUER,
        CLIENT,
        ClientAuth::SecretBasic {
            secret: "s".to_string().into(),
        },
        DeliveryMode::Poll,
    );
    let meta = ProviderMetadata {
        issuer: ISSUER.into(),
        backchannel_authentication_endpoint: format!("{ISSUER}/bc"),
        token_endpoint: format!("{ISSUER}/token"),
        jwks_uri: format!("{ISSUER}/jwks"),
        backchannel_token_delivery_modes_supported: vec!["poll".into()],
        backchannel_authentication_request_signing_alg_values_supported: Vec::new(),
        backchannel_user_code_parameter_supported: false,
        token_endpoint_auth_methods_supported: Vec::new(),
        id_token_signing_alg_values_supported: vec!["EdDSA".into()],
        grant_types_supported: Vec::new(),
    };
    let verify = |token: &str| {
        crate::ciba::verify_id_token(token, Algorithm::EdDSA, decoding, &cfg, &meta, &check)
    };
    if flags & 16 != 0 {
        assert!(verify(text).is_err(), "an unsigned token validated");
        return;
    }
    let now = crate::ciba::now_secs();
    let payload = text
        .replace("$NOW", &now.to_string())
        .replace(
            "$AT",
            &at_hash(ACCESS, Algorithm::EdDSA).unwrap_or_default(),
        )
        .replace(
            "$RT",
            &at_hash(REFRESH, Algorithm::EdDSA).unwrap_or_default(),
        );
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"EdDSA"}"#),
        URL_SAFE_NO_PAD.encode(payload.as_bytes())
    );
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), encoding, Algorithm::EdDSA).expect("sign");
    let token = format!("{message}.{signature}");
    let result = verify(&token);

    if flags >> 5 != 0 {
        let mut bytes = token.clone().into_bytes();
        let at = usize::from(u16::from_le_bytes([*p0, *p1])) % bytes.len();
        bytes[at] = match flags >> 5 {
            1 => bytes[at] ^ 1,
            2 => b'A',
            3 => b'.',
            4 => b'_',
            5 => b'-',
            6 => b'=',
            _ => bytes[at].wrapping_add(1),
        };
        if let Ok(tampered) = String::from_utf8(bytes)
            && tampered != token
        {
            assert!(
                verify(&tampered).is_err(),
                "a tampered token validated: {tampered}"
            );
        }
    }

    let Ok(evidence) = result else {
        return;
    };
    assert_no_repeated_claims(&payload);
    let claims: Value = serde_json::from_str(&payload).expect("validated claims are JSON");
    let text_of = |k: &str| claims.get(k).and_then(Value::as_str);
    let number = |k: &str| claims.get(k).and_then(Value::as_f64);
    assert_eq!(text_of("iss"), Some(ISSUER));
    assert_eq!(evidence.issuer, ISSUER);
    assert_eq!(text_of("sub"), Some(evidence.subject.as_str()));
    assert!(!evidence.subject.is_empty());
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        other => panic!("validated with aud {other:?}"),
    };
    assert!(audiences.contains(&CLIENT));
    match text_of("azp") {
        Some(azp) => assert_eq!(azp, CLIENT),
        None => assert!(audiences.len() == 1 && claims.get("azp").is_none_or(Value::is_null)),
    }
    let now = now as f64;
    let exp = number("exp").expect("validated without exp");
    assert!(exp >= now - SKEW as f64, "expired token validated");
    let iat = number("iat").expect("validated without iat");
    assert!(iat <= now + SKEW as f64, "iat in the future");
    if let Some(nbf) = number("nbf") {
        assert!(nbf <= now + SKEW as f64, "token not yet valid");
    }
    if check.expected_acr.is_some() {
        let acr = text_of("acr").expect("acr requested but absent");
        assert!(ACRS.split(' ').any(|a| a == acr));
    }
    assert_eq!(evidence.acr.as_deref(), text_of("acr"));
    let amr: Vec<&str> = claims
        .get("amr")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(evidence.amr, amr);
    let binding = text_of("urn:openid:params:jwt:claim:auth_req_id");
    assert!(binding.is_none_or(|b| b == AUTH_REQ_ID));
    let at = text_of("at_hash");
    let rt = text_of("urn:openid:params:jwt:claim:rt_hash");
    if check.push {
        assert_eq!(
            binding,
            Some(AUTH_REQ_ID),
            "push without the auth_req_id binding"
        );
        assert!(at.is_some(), "push without at_hash");
        if check.refresh_token.is_some() {
            assert!(rt.is_some(), "push with a refresh token but no rt_hash");
        }
    }
    if let (Some(h), Some(t)) = (at, check.access_token) {
        assert_eq!(Some(h.to_string()), at_hash(t, Algorithm::EdDSA));
    }
    if let (Some(h), Some(t)) = (rt, check.refresh_token) {
        assert_eq!(Some(h.to_string()), at_hash(t, Algorithm::EdDSA));
    }
}

/// The top-level members of `payload`, read independently: none the gateway reads twice.
fn assert_no_repeated_claims(payload: &str) {
    let pairs: Vec<(String, serde::de::IgnoredAny)> = match serde_json::from_str::<Pairs>(payload) {
        Ok(Pairs(p)) => p,
        Err(e) => panic!("validated claims are not a JSON object: {e}"),
    };
    for name in CLAIMS {
        let count = pairs.iter().filter(|(k, _)| k == name).count();
        assert!(
            count <= 1,
            "claim {name} appears {count} times in a validated token"
        );
    }
}

/// An object's members in order, duplicates kept.
struct Pairs(Vec<(String, serde::de::IgnoredAny)>);

impl<'de> serde::Deserialize<'de> for Pairs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Pairs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Pairs, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    out.push((k, m.next_value::<serde::de::IgnoredAny>()?));
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(V)
    }
}
