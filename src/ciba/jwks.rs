//! The OP's JSON Web Key Set: fetched at discovery, refreshed only when an ID token names an
//! unknown `kid`, and then at most once per [`MIN_REFRESH_INTERVAL`]. Never fetched per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use tokio::sync::Mutex;

use super::error::CibaError;
use super::http;

/// Minimum time between two refreshes triggered by unknown key ids.
pub(crate) const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

pub(crate) struct JwksCache {
    http: reqwest::Client,
    uri: String,
    state: Mutex<State>,
    fetches: AtomicU64,
}

struct State {
    keys: Arc<JwkSet>,
    /// When the last refresh (not the initial load) happened.
    last_refresh: Option<Instant>,
}

impl JwksCache {
    /// Fetches the key set once; fails when it cannot be fetched or parsed.
    pub(crate) async fn load(http: reqwest::Client, uri: String) -> Result<JwksCache, CibaError> {
        let cache = JwksCache {
            http,
            uri,
            state: Mutex::new(State {
                keys: Arc::new(JwkSet { keys: Vec::new() }),
                last_refresh: None,
            }),
            fetches: AtomicU64::new(0),
        };
        let keys = cache
            .fetch()
            .await
            .map_err(|e| CibaError::Discovery(format!("loading the JWKS failed: {e}")))?;
        cache.state.lock().await.keys = Arc::new(keys);
        Ok(cache)
    }

    pub(crate) fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    async fn fetch(&self) -> Result<JwkSet, CibaError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let answer = http::send("jwks", self.http.get(&self.uri)).await?;
        if answer.status != 200 {
            return Err(CibaError::NotJson {
                status: answer.status,
                endpoint: "jwks",
            });
        }
        parse_jwks(&answer.body)
    }

    /// The verification key for a JWS with header `kid` and `alg`. On an unknown `kid`
    /// the set is refreshed (rate-limited) and looked up once more; otherwise fails closed.
    pub(crate) async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<DecodingKey, CibaError> {
        let keys = self.state.lock().await.keys.clone();
        if let Some(key) = select(&keys, kid, alg)? {
            return Ok(key);
        }
        let Some(kid) = kid else {
            return Err(no_key(None));
        };
        // Unknown kid: maybe the OP rotated its keys. Single flight: hold the lock while
        // fetching, and re-check whether someone else refreshed meanwhile.
        let mut state = self.state.lock().await;
        if !Arc::ptr_eq(&state.keys, &keys) {
            if let Some(key) = select(&state.keys, Some(kid), alg)? {
                return Ok(key);
            }
        }
        let due = state
            .last_refresh
            .is_none_or(|t| t.elapsed() >= MIN_REFRESH_INTERVAL);
        if !due {
            return Err(no_key(Some(kid)));
        }
        state.last_refresh = Some(Instant::now());
        match self.fetch().await {
            Ok(fresh) => state.keys = Arc::new(fresh),
            Err(e) => {
                tracing::warn!(uri = %self.uri, error = %e, "refreshing the OP's JWKS failed");
                return Err(no_key(Some(kid)));
            }
        }
        select(&state.keys, Some(kid), alg)?.ok_or_else(|| no_key(Some(kid)))
    }
}

fn no_key(kid: Option<&str>) -> CibaError {
    match kid {
        Some(kid) => CibaError::InvalidIdToken(format!(
            "no key with kid {:?} in the OP's JWKS",
            kid.chars().take(64).collect::<String>()
        )),
        None => CibaError::InvalidIdToken(
            "the token has no kid and the OP's JWKS has no single matching key".into(),
        ),
    }
}

fn parse_jwks(body: &[u8]) -> Result<JwkSet, CibaError> {
    // Parse key by key so that one unsupported key type does not hide the others.
    #[derive(serde::Deserialize)]
    struct Loose {
        keys: Vec<serde_json::Value>,
    }
    let loose: Loose = serde_json::from_slice(body).map_err(|_| CibaError::NotJson {
        status: 200,
        endpoint: "jwks",
    })?;
    let keys = loose
        .keys
        .into_iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
        .filter(|k| {
            matches!(
                k.algorithm,
                AlgorithmParameters::RSA(_)
                    | AlgorithmParameters::EllipticCurve(_)
                    | AlgorithmParameters::OctetKeyPair(_)
            )
        })
        .collect();
    Ok(JwkSet { keys })
}

fn family_matches(jwk: &Jwk, alg: Algorithm) -> bool {
    matches!(
        (&jwk.algorithm, alg.family()),
        (AlgorithmParameters::RSA(_), AlgorithmFamily::Rsa)
            | (AlgorithmParameters::EllipticCurve(_), AlgorithmFamily::Ec)
            | (AlgorithmParameters::OctetKeyPair(_), AlgorithmFamily::Ed)
    )
}

fn alg_matches(jwk: &Jwk, alg: Algorithm) -> bool {
    let Some(key_alg) = jwk.common.key_algorithm else {
        return true;
    };
    let want = match alg {
        Algorithm::RS256 => KeyAlgorithm::RS256,
        Algorithm::RS384 => KeyAlgorithm::RS384,
        Algorithm::RS512 => KeyAlgorithm::RS512,
        Algorithm::PS256 => KeyAlgorithm::PS256,
        Algorithm::PS384 => KeyAlgorithm::PS384,
        Algorithm::PS512 => KeyAlgorithm::PS512,
        Algorithm::ES256 => KeyAlgorithm::ES256,
        Algorithm::ES384 => KeyAlgorithm::ES384,
        Algorithm::EdDSA => KeyAlgorithm::EdDSA,
        _ => return false,
    };
    key_alg == want
}

fn usable(jwk: &Jwk, alg: Algorithm) -> bool {
    !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
        && family_matches(jwk, alg)
        && alg_matches(jwk, alg)
}

/// `Ok(None)` when no key has that kid; an error when the key exists but cannot be used.
pub(crate) fn select(
    keys: &JwkSet,
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<Option<DecodingKey>, CibaError> {
    let jwk = match kid {
        Some(kid) => {
            let Some(jwk) = keys
                .keys
                .iter()
                .find(|k| k.common.key_id.as_deref() == Some(kid))
            else {
                return Ok(None);
            };
            if !usable(jwk, alg) {
                return Err(CibaError::InvalidIdToken(
                    "the key named by kid does not fit the token's algorithm".into(),
                ));
            }
            jwk
        }
        None => {
            let mut candidates = keys.keys.iter().filter(|k| usable(k, alg));
            match (candidates.next(), candidates.next()) {
                (Some(only), None) => only,
                _ => return Ok(None),
            }
        }
    };
    DecodingKey::from_jwk(jwk)
        .map(Some)
        .map_err(|_| CibaError::InvalidIdToken("a key in the OP's JWKS is malformed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: serde_json::Value) -> JwkSet {
        match parse_jwks(v.to_string().as_bytes()) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    const EC: &str = r#"{"kty":"EC","crv":"P-256","kid":"e1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    #[test]
    fn unsupported_keys_are_skipped() {
        let ec: serde_json::Value = serde_json::from_str(EC).unwrap_or_default();
        let s = set(serde_json::json!({"keys": [{"kty": "weird"}, ec]}));
        assert_eq!(s.keys.len(), 1);
    }

    #[test]
    fn selection_rules() {
        let ec: serde_json::Value = serde_json::from_str(EC).unwrap_or_default();
        let s = set(serde_json::json!({ "keys": [ec] }));
        assert!(matches!(
            select(&s, Some("e1"), Algorithm::ES256),
            Ok(Some(_))
        ));
        assert!(matches!(select(&s, None, Algorithm::ES256), Ok(Some(_))));
        assert!(matches!(
            select(&s, Some("nope"), Algorithm::ES256),
            Ok(None)
        ));
        // Right kid, wrong key type for the header's alg.
        assert!(matches!(
            select(&s, Some("e1"), Algorithm::RS256),
            Err(CibaError::InvalidIdToken(_))
        ));
    }
}
