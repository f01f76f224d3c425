//! The `approvals:` section: the OpenID Provider, the user asked, binding-message limits,
//! hold/park timing, throttles and the callback listener. Schema and validation here;
//! `resolve` reads the secrets and keys and builds what the approval subsystem runs on.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;

use super::binding::{Profile, ProfileConfig};
use super::{Limit, Mode, Settings};
use crate::ciba::{ClientAuth, ClientConfig, DeliveryMode, SigningKey, UserHint};
use crate::secret::SecretSource;
use crate::validate::{Checked, FieldError, require};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    pub op: OpConfig,
    /// The user this agent acts for: whose phone is asked.
    pub user: UserConfig,
    /// What the OP accepts as a binding message: a shipped profile name
    /// (oidc-provider, okta, keycloak, auth0, curity, ciba-gate-dev) or
    /// `{max_chars, extra_chars}`.
    #[serde(default = "default_profile")]
    pub binding_message_profile: ProfileConfig,
    /// `hold` (default) keeps the call open until the answer; `park` answers "pending" at once.
    #[serde(default = "default_mode")]
    pub mode: Mode,
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
    /// Longest hold without a stream for keep-alives; longer waits are parked.
    #[serde(default = "default_plain_wait", with = "humantime_serde")]
    pub max_plain_wait: Duration,
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    pub keepalive: Duration,
    #[serde(default = "default_progress", with = "humantime_serde")]
    pub progress_interval: Duration,
    #[serde(default = "default_retry_after", with = "humantime_serde")]
    pub park_retry_after: Duration,
    /// Ping mode: poll this often anyway, for OPs that never retry a lost ping.
    #[serde(default = "default_fallback_poll", with = "humantime_serde")]
    pub ping_fallback_poll: Duration,
    /// How long a denied / expired / failed answer is kept for the agent's retry.
    #[serde(default = "default_result_ttl", with = "humantime_serde")]
    pub result_ttl: Duration,
    #[serde(default)]
    pub throttle: ThrottleConfig,
    /// Where the OP's ping/push notifications arrive (required for ping and push).
    #[serde(default)]
    pub callback: Option<CallbackConfig>,
    /// Key for requestState MACs and pseudonymous user hashes. Replicas must share it.
    /// Without it a random per-process key is used (single replica, memory store only).
    #[serde(default)]
    pub state_key: Option<SecretSource>,
    /// Send RFC 9396 `authorization_details` with the tool and action (e.g. Auth0).
    #[serde(default)]
    pub authorization_details: bool,
    /// Accept the end user's ID token in `x-ciba-gate-identity`: verified against the
    /// OP, it makes that person the call's default approver (asked by `id_token_hint`).
    #[serde(default)]
    pub accept_identity: bool,
}

fn default_profile() -> ProfileConfig {
    ProfileConfig::Named("oidc-provider".into())
}
fn default_mode() -> Mode {
    Mode::Hold
}
fn default_max_wait() -> Duration {
    Duration::from_secs(300)
}
fn default_plain_wait() -> Duration {
    Duration::from_secs(50)
}
fn default_keepalive() -> Duration {
    Duration::from_secs(15)
}
fn default_progress() -> Duration {
    Duration::from_secs(10)
}
fn default_retry_after() -> Duration {
    Duration::from_secs(5)
}
fn default_fallback_poll() -> Duration {
    Duration::from_secs(30)
}
fn default_result_ttl() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpConfig {
    /// The OP's issuer; discovery is fetched from `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    pub client_auth: ClientAuthConfig,
    pub delivery: DeliveryMode,
    /// Sign authentication requests (FAPI-CIBA).
    #[serde(default)]
    pub request_signing: Option<KeyConfig>,
    /// Allow an `http://` issuer: development and tests on loopback only.
    #[serde(default)]
    pub allow_insecure_http: bool,
    #[serde(default = "default_skew", with = "humantime_serde")]
    pub clock_skew: Duration,
    #[serde(default = "default_http_timeout", with = "humantime_serde")]
    pub http_timeout: Duration,
}

fn default_skew() -> Duration {
    Duration::from_secs(60)
}
fn default_http_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `approvals.op.client_auth`: the method (`ClientAuth`, the one place a method is
/// defined) with where its secret or key is read from.
pub type ClientAuthConfig = ClientAuth<SecretSource, KeyConfig>;

/// A signing key: PEM file and algorithm.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// RS256, PS256 or ES256.
    pub alg: SigningAlg,
    #[serde(default)]
    pub kid: Option<String>,
    /// PEM private key file. Relative to the config file.
    pub file: PathBuf,
}

/// The client signing algorithms the gateway supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SigningAlg {
    RS256,
    PS256,
    ES256,
}

impl From<SigningAlg> for jsonwebtoken::Algorithm {
    fn from(a: SigningAlg) -> Self {
        match a {
            SigningAlg::RS256 => jsonwebtoken::Algorithm::RS256,
            SigningAlg::PS256 => jsonwebtoken::Algorithm::PS256,
            SigningAlg::ES256 => jsonwebtoken::Algorithm::ES256,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HintType {
    LoginHint,
    IdTokenHint,
    LoginHintToken,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    #[serde(default = "default_hint_type")]
    pub hint_type: HintType,
    /// The hint itself, inline (it identifies the user; it is not a credential).
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// The user's CIBA `user_code` (a secret the user chose at the OP), for OPs and
    /// client registrations that require it. Never inline.
    #[serde(default)]
    pub user_code: Option<SecretSource>,
}

fn default_hint_type() -> HintType {
    HintType::LoginHint
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    #[serde(default)]
    pub per_agent: Option<Limit>,
    #[serde(default)]
    pub per_user: Option<Limit>,
    #[serde(default)]
    pub per_action: Option<Limit>,
    /// After a denial, no new request for the same user for this long.
    #[serde(default, with = "humantime_serde")]
    pub denial_cooldown: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackConfig {
    pub listen: SocketAddr,
    #[serde(default = "default_callback_path")]
    pub path: String,
    /// Certificate and key files (PEM), reloaded when they change.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Serve plain HTTP. Only for development on loopback or behind a TLS-terminating proxy.
    #[serde(default)]
    pub insecure_http: bool,
}

fn default_callback_path() -> String {
    "/ciba/callback".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Shortest `approvals.state_key` accepted, in bytes.
pub const MIN_STATE_KEY_BYTES: usize = 32;

impl ApprovalsConfig {
    /// `shared_store`: the approval store is shared by replicas (Redis).
    pub fn validate(&self, shared_store: bool) -> Checked {
        self.binding_message_profile
            .resolve()
            .map_err(|e| FieldError::new("binding_message_profile", e))?;
        require(
            !self.op.client_id.is_empty(),
            "op.client_id",
            "must not be empty",
        )?;
        match url::Url::parse(&self.op.issuer) {
            Ok(u) if u.scheme() == "https" => {}
            Ok(u) if u.scheme() == "http" && self.op.allow_insecure_http => {}
            Ok(_) => {
                return Err(FieldError::new(
                    "op.issuer",
                    "must be an https:// URL (allow_insecure_http is for development only)",
                ));
            }
            Err(e) => return Err(FieldError::new("op.issuer", format!("not a URL: {e}"))),
        }
        if let Some(secret) = self.op.client_auth.secret() {
            secret
                .validate()
                .map_err(|e| e.under("op.client_auth.secret"))?;
        }
        let given = [
            self.user.value.is_some(),
            self.user.env.is_some(),
            self.user.file.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        require(
            given == 1,
            "user",
            "give exactly one of `value`, `env` or `file`",
        )?;
        let needs_callback = self.op.delivery != DeliveryMode::Poll;
        match (&self.callback, needs_callback) {
            (None, true) => {
                return Err(FieldError::new(
                    "callback",
                    "ping and push delivery need a callback listener",
                ));
            }
            (Some(cb), _) => {
                require(
                    cb.path.starts_with('/'),
                    "callback.path",
                    "must start with '/'",
                )?;
                match (&cb.tls, cb.insecure_http) {
                    (None, false) => {
                        return Err(FieldError::new(
                            "callback.tls",
                            "required unless insecure_http: true",
                        ));
                    }
                    (Some(_), true) => {
                        return Err(FieldError::new(
                            "callback",
                            "give tls or insecure_http, not both",
                        ));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        require(
            !self.max_wait.is_zero(),
            "max_wait",
            "must be greater than 0",
        )?;
        // Replicas sharing a store must agree on the key: the sealed requestState of a
        // parked call and the pseudonyms in shared records are made with it.
        if self.state_key.is_none() && shared_store {
            return Err(FieldError::new(
                "state_key",
                "required when the approval store is shared (store.kind: redis): give every replica the same key of at least 32 random bytes",
            ));
        }
        Ok(())
    }

    /// Reads every secret and key (relative paths from `base`, the config file's
    /// directory) and builds what the approval subsystem runs on.
    pub fn resolve(&self, base: &Path) -> Checked<ResolvedApprovals> {
        let load_key = |k: &KeyConfig, key: &str| -> Checked<SigningKey> {
            let path = base.join(&k.file);
            let pem = std::fs::read(&path).map_err(|e| {
                FieldError::new(
                    format!("{key}.file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            SigningKey::from_pem(k.alg.into(), k.kid.clone(), &pem)
                .map_err(|e| FieldError::new(format!("{key}.file"), e.to_string()))
        };
        let auth = self.op.client_auth.load(
            |secret| {
                secret
                    .read(base)
                    .map_err(|e| e.under("op.client_auth.secret"))
            },
            |key| load_key(key, "op.client_auth.key"),
        )?;
        let mut client = ClientConfig::new(
            self.op.issuer.clone(),
            self.op.client_id.clone(),
            auth,
            self.op.delivery,
        );
        client.allow_http = self.op.allow_insecure_http;
        client.clock_skew = self.op.clock_skew;
        client.http_timeout = self.op.http_timeout;
        if let Some(k) = &self.op.request_signing {
            client.request_signing = Some(load_key(k, "op.request_signing")?);
        }
        let raw_hint = match &self.user.value {
            Some(v) => v.clone(),
            None => SecretSource {
                env: self.user.env.clone(),
                file: self.user.file.clone(),
            }
            .read_raw(base)
            .map_err(|e| e.under("user"))?,
        };
        require(!raw_hint.is_empty(), "user", "the user hint is empty")?;
        let hint = match self.user.hint_type {
            HintType::LoginHint => UserHint::LoginHint(raw_hint),
            HintType::IdTokenHint => UserHint::IdTokenHint(raw_hint),
            HintType::LoginHintToken => UserHint::LoginHintToken(raw_hint),
        };
        let profile = self
            .binding_message_profile
            .resolve()
            .map_err(|e| FieldError::new("binding_message_profile", e))?;
        let state_key = match &self.state_key {
            Some(s) => {
                let key = s.read(base).map_err(|e| e.under("state_key"))?;
                let key = key.expose_secret().as_bytes().to_vec();
                check_state_key(&key).map_err(|e| FieldError::new("state_key", e))?;
                key
            }
            None => rand::random::<[u8; 32]>().to_vec(),
        };
        let user_code = match &self.user.user_code {
            Some(r) => Some(
                r.read(base)
                    .map_err(|e| e.under("user.user_code"))?
                    .expose_secret()
                    .to_string(),
            ),
            None => None,
        };
        let mut callback = self.callback.clone();
        if let Some(tls) = callback.as_mut().and_then(|cb| cb.tls.as_mut()) {
            tls.cert_file = base.join(&tls.cert_file);
            tls.key_file = base.join(&tls.key_file);
        }
        Ok(ResolvedApprovals {
            client,
            hint,
            user_code,
            profile,
            settings: self.settings(),
            state_key,
            callback,
        })
    }

    /// The timing and throttle settings.
    pub fn settings(&self) -> Settings {
        Settings {
            mode: self.mode,
            max_wait: self.max_wait,
            max_plain_wait: self.max_plain_wait,
            keepalive: self.keepalive,
            progress_interval: self.progress_interval,
            park_retry_after: self.park_retry_after,
            ping_fallback_poll: self.ping_fallback_poll,
            result_ttl: self.result_ttl,
            per_agent: self.throttle.per_agent,
            per_user: self.throttle.per_user,
            per_action: self.throttle.per_action,
            denial_cooldown: self.throttle.denial_cooldown.unwrap_or_default(),
            send_authorization_details: self.authorization_details,
            accept_identity: self.accept_identity,
            // Set by the app when an upstream takes approvers' tokens.
            keep_access_tokens: false,
        }
    }
}

/// A MAC key must be long and not an obvious pattern (its value is never echoed).
fn check_state_key(key: &[u8]) -> Result<(), String> {
    if key.len() < MIN_STATE_KEY_BYTES {
        return Err(format!(
            "is {} bytes; at least {MIN_STATE_KEY_BYTES} random bytes are required (e.g. `openssl rand -hex 32`)",
            key.len()
        ));
    }
    let distinct = key.iter().collect::<HashSet<_>>().len();
    if distinct < 8 {
        return Err(format!(
            "has only {distinct} distinct bytes; use a random key (e.g. `openssl rand -hex 32`)"
        ));
    }
    Ok(())
}

/// The approval settings with their secrets read.
pub struct ResolvedApprovals {
    pub client: ClientConfig,
    pub hint: UserHint,
    pub user_code: Option<String>,
    pub profile: Profile,
    pub settings: Settings,
    pub state_key: Vec<u8>,
    pub callback: Option<CallbackConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_or_patterned_state_key_is_refused() {
        assert!(check_state_key(b"short").is_err());
        assert!(check_state_key(&[b'a'; 64]).is_err());
        assert!(check_state_key(b"9c41f0e2b7d35a8864e1c0f92ab7d3e56f08a1c4b2e9d7f3").is_ok());
    }
}
