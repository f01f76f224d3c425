//! OpenID Provider discovery (OIDC Discovery 1.0 §4, CIBA §4) and its checks.

use serde::{Deserialize, Serialize};
use url::Url;

use super::error::CibaError;
use super::http;
use super::{CIBA_GRANT_TYPE, ClientConfig, alg_name, client_auth};

/// The parts of the OP's discovery document the CIBA client uses, after checking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub backchannel_authentication_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    pub backchannel_token_delivery_modes_supported: Vec<String>,
    /// Empty: the OP does not accept signed authentication requests.
    #[serde(default)]
    pub backchannel_authentication_request_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    pub backchannel_user_code_parameter_supported: bool,
    /// Empty: not advertised (the default is `client_secret_basic`).
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default)]
    pub id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    pub grant_types_supported: Vec<String>,
}

#[derive(Deserialize)]
struct RawMetadata {
    issuer: Option<String>,
    backchannel_authentication_endpoint: Option<String>,
    token_endpoint: Option<String>,
    jwks_uri: Option<String>,
    backchannel_token_delivery_modes_supported: Option<Vec<String>>,
    backchannel_authentication_request_signing_alg_values_supported: Option<Vec<String>>,
    backchannel_user_code_parameter_supported: Option<bool>,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    id_token_signing_alg_values_supported: Option<Vec<String>>,
    grant_types_supported: Option<Vec<String>>,
}

/// Checks of the configuration that need no network.
pub(crate) fn check_config(cfg: &ClientConfig) -> Result<(), CibaError> {
    if cfg.client_id.trim().is_empty() {
        return Err(CibaError::Config("client_id is empty".into()));
    }
    if cfg
        .auth
        .secret()
        .is_some_and(|s| secrecy::ExposeSecret::expose_secret(s).is_empty())
    {
        return Err(CibaError::Config("the client secret is empty".into()));
    }
    let url = Url::parse(&cfg.issuer)
        .map_err(|_| CibaError::Config(format!("issuer {:?} is not a URL", cfg.issuer)))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(CibaError::Config(
            "the issuer must not have a query or fragment".into(),
        ));
    }
    check_scheme(&url, cfg.allow_http, "issuer").map_err(CibaError::Config)?;
    Ok(())
}

fn check_scheme(url: &Url, allow_http: bool, what: &str) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http => Ok(()),
        "http" => Err(format!(
            "{what} {url} uses http; https is required (allow_http is for local development only)"
        )),
        other => Err(format!("{what} {url} has unsupported scheme {other:?}")),
    }
}

fn endpoint(value: Option<String>, name: &str, allow_http: bool) -> Result<String, CibaError> {
    let value = value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CibaError::Discovery(format!("the discovery document has no {name}")))?;
    let url =
        Url::parse(&value).map_err(|_| CibaError::Discovery(format!("{name} is not a URL")))?;
    check_scheme(&url, allow_http, name).map_err(CibaError::Discovery)?;
    Ok(value)
}

/// The discovery URL for an issuer (OIDC Discovery §4.1).
pub(crate) fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

pub(crate) async fn fetch(
    http_client: &reqwest::Client,
    cfg: &ClientConfig,
) -> Result<ProviderMetadata, CibaError> {
    let url = discovery_url(&cfg.issuer);
    let answer = http::send("discovery", http_client.get(&url))
        .await
        .map_err(|e| CibaError::Discovery(e.to_string()))?;
    if answer.status != 200 {
        return Err(CibaError::Discovery(format!(
            "{url} answered HTTP {}",
            answer.status
        )));
    }
    let raw: RawMetadata = serde_json::from_slice(&answer.body)
        .map_err(|_| CibaError::Discovery(format!("{url} did not return a JSON object")))?;
    check(raw, cfg)
}

fn check(raw: RawMetadata, cfg: &ClientConfig) -> Result<ProviderMetadata, CibaError> {
    let issuer = raw
        .issuer
        .ok_or_else(|| CibaError::Discovery("the discovery document has no issuer".into()))?;
    if issuer != cfg.issuer {
        return Err(CibaError::Discovery(format!(
            "issuer mismatch: configured {:?}, the OP says {:?}",
            cfg.issuer, issuer
        )));
    }
    let allow_http = cfg.allow_http;
    let backchannel_authentication_endpoint = endpoint(
        raw.backchannel_authentication_endpoint,
        "backchannel_authentication_endpoint",
        allow_http,
    )?;
    let token_endpoint = endpoint(raw.token_endpoint, "token_endpoint", allow_http)?;
    let jwks_uri = endpoint(raw.jwks_uri, "jwks_uri", allow_http)?;

    let modes = raw
        .backchannel_token_delivery_modes_supported
        .unwrap_or_default();
    if !modes.iter().any(|m| m == cfg.delivery.as_str()) {
        return Err(CibaError::Discovery(format!(
            "the OP does not support the {} delivery mode (it supports: {})",
            cfg.delivery,
            if modes.is_empty() {
                "none".to_owned()
            } else {
                modes.join(", ")
            }
        )));
    }

    let grant_types = raw.grant_types_supported.unwrap_or_default();
    if !grant_types.is_empty() && !grant_types.iter().any(|g| g == CIBA_GRANT_TYPE) {
        tracing::warn!(
            issuer = %cfg.issuer,
            "the OP's grant_types_supported does not list the CIBA grant"
        );
    }

    let auth_methods = raw
        .token_endpoint_auth_methods_supported
        .unwrap_or_default();
    let method = cfg.auth.method();
    let method_ok = if auth_methods.is_empty() {
        method == client_auth::DISCOVERY_DEFAULT_METHOD
    } else {
        auth_methods.iter().any(|m| m == method)
    };
    if !method_ok {
        return Err(CibaError::Discovery(format!(
            "the OP does not support client authentication method {method}"
        )));
    }

    let signing_algs = raw
        .backchannel_authentication_request_signing_alg_values_supported
        .unwrap_or_default();
    if let Some(key) = &cfg.request_signing {
        let name = alg_name(key.alg);
        if !signing_algs.iter().any(|a| a == name) {
            return Err(CibaError::Discovery(format!(
                "signed authentication requests with {name} are not supported by the OP"
            )));
        }
    }

    Ok(ProviderMetadata {
        issuer,
        backchannel_authentication_endpoint,
        token_endpoint,
        jwks_uri,
        backchannel_token_delivery_modes_supported: modes,
        backchannel_authentication_request_signing_alg_values_supported: signing_algs,
        backchannel_user_code_parameter_supported: raw
            .backchannel_user_code_parameter_supported
            .unwrap_or(false),
        token_endpoint_auth_methods_supported: auth_methods,
        id_token_signing_alg_values_supported: raw
            .id_token_signing_alg_values_supported
            .unwrap_or_default(),
        grant_types_supported: grant_types,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{ClientAuth, DeliveryMode};
    use super::*;

    fn cfg() -> ClientConfig {
        ClientConfig::new(
            "https://op.example.com",
            "c1",
            ClientAuth::SecretBasic { secret: "s".into() },
            DeliveryMode::Poll,
        )
    }

    fn raw(v: serde_json::Value) -> RawMetadata {
        match serde_json::from_value(v) {
            Ok(r) => r,
            Err(e) => panic!("bad test metadata: {e}"),
        }
    }

    fn good() -> serde_json::Value {
        serde_json::json!({
            "issuer": "https://op.example.com",
            "backchannel_authentication_endpoint": "https://op.example.com/bc",
            "token_endpoint": "https://op.example.com/token",
            "jwks_uri": "https://op.example.com/jwks",
            "backchannel_token_delivery_modes_supported": ["poll", "ping"],
        })
    }

    #[test]
    fn accepts_good_metadata() {
        let m = check(raw(good()), &cfg());
        assert!(m.is_ok(), "{m:?}");
    }

    #[test]
    fn rejects_http_endpoints() {
        let mut v = good();
        v["token_endpoint"] = "http://op.example.com/token".into();
        assert!(matches!(
            check(raw(v), &cfg()),
            Err(CibaError::Discovery(_))
        ));
    }

    #[test]
    fn rejects_unlisted_auth_method() {
        let mut v = good();
        v["token_endpoint_auth_methods_supported"] = serde_json::json!(["private_key_jwt"]);
        assert!(matches!(
            check(raw(v), &cfg()),
            Err(CibaError::Discovery(_))
        ));
        let mut c = cfg();
        c.auth = ClientAuth::SecretPost { secret: "s".into() };
        // Absent list means client_secret_basic only.
        assert!(matches!(
            check(raw(good()), &c),
            Err(CibaError::Discovery(_))
        ));
    }

    #[test]
    fn config_checks() {
        let mut c = cfg();
        c.issuer = "http://op.example.com".into();
        assert!(matches!(check_config(&c), Err(CibaError::Config(_))));
        c.allow_http = true;
        assert!(check_config(&c).is_ok());
        c.issuer = "https://op.example.com?x=1".into();
        assert!(matches!(check_config(&c), Err(CibaError::Config(_))));
        assert_eq!(
            discovery_url("https://op.example.com/realms/a/"),
            "https://op.example.com/realms/a/.well-known/openid-configuration"
        );
    }
}
