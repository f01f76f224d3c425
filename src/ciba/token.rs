//! The token request (CIBA §10.1), its errors (§11), and poll interval bookkeeping.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::client_auth::post_form;
use super::error::{CibaError, ErrorCode};
use super::http;
use super::{CIBA_GRANT_TYPE, ClientConfig, ProviderMetadata};

pub(crate) const ENDPOINT: &str = "token";

/// Tokens issued for an approved request. `Debug` never shows the token values.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct TokenSet {
    pub access_token: String,
    pub token_type: String,
    pub id_token: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &"<redacted>")
            .field("token_type", &self.token_type)
            .field("id_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// The outcome of one token request that is not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenPoll {
    Granted(TokenSet),
    /// `authorization_pending`: ask again after the interval.
    Pending,
    /// `slow_down`: add 5 s to the interval, for good ([`Poller::on_slow_down`]).
    SlowDown,
    /// HTTP 503 with `Retry-After`: wait that long, then resume ([`Poller::on_retry_after`]).
    RetryAfter(Duration),
}

/// Poll interval bookkeeping (CIBA §7.3, §11): default 5 s, `slow_down` adds 5 s to this and
/// every later wait, `Retry-After` stretches the next wait only.
#[derive(Debug, Clone)]
pub struct Poller {
    interval: Duration,
    retry_after: Option<Duration>,
}

impl Poller {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
    pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
    /// Floor for an OP-provided interval (an `interval` of 0 would spin).
    pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

    pub fn new(ack_interval: Option<u64>) -> Poller {
        let interval = match ack_interval {
            Some(s) => Duration::from_secs(s).max(Self::MIN_INTERVAL),
            None => Self::DEFAULT_INTERVAL,
        };
        Poller {
            interval,
            retry_after: None,
        }
    }

    /// The current polling interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn on_slow_down(&mut self) {
        self.interval += Self::SLOW_DOWN_STEP;
    }

    pub fn on_retry_after(&mut self, d: Duration) {
        self.retry_after = Some(d);
    }

    /// Applies a poll outcome to the bookkeeping (Granted leaves it unchanged).
    pub fn observe(&mut self, outcome: &TokenPoll) {
        match outcome {
            TokenPoll::SlowDown => self.on_slow_down(),
            TokenPoll::RetryAfter(d) => self.on_retry_after(*d),
            TokenPoll::Pending | TokenPoll::Granted(_) => {}
        }
    }

    /// How long to wait before the next token request (also before the first one).
    /// A pending `Retry-After` is used once, and never shortens the interval.
    pub fn next_wait(&mut self) -> Duration {
        match self.retry_after.take() {
            Some(d) => d.max(self.interval),
            None => self.interval,
        }
    }
}

pub(crate) async fn poll_token(
    http_client: &reqwest::Client,
    cfg: &ClientConfig,
    meta: &ProviderMetadata,
    auth_req_id: &str,
) -> Result<TokenPoll, CibaError> {
    if auth_req_id.is_empty() {
        return Err(CibaError::Config("auth_req_id is empty".into()));
    }
    let form = vec![
        ("grant_type", CIBA_GRANT_TYPE.to_owned()),
        ("auth_req_id", auth_req_id.to_owned()),
    ];
    let builder = post_form(http_client, &meta.token_endpoint, cfg, &meta.issuer, form)?;
    let answer = http::send(ENDPOINT, builder).await?;
    interpret(&answer)
}

/// RFC 8693 token exchange.
const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Exchanges `subject_token` (an access token the OP issued) for one whose audience is
/// `audience` (RFC 8693 §2.1), authenticating as the CIBA client.
pub(crate) async fn exchange_token(
    http_client: &reqwest::Client,
    cfg: &ClientConfig,
    meta: &ProviderMetadata,
    subject_token: &str,
    audience: &str,
) -> Result<secrecy::SecretString, CibaError> {
    #[derive(Deserialize)]
    struct Exchanged {
        access_token: String,
        #[serde(default)]
        issued_token_type: Option<String>,
    }
    let form = vec![
        ("grant_type", TOKEN_EXCHANGE_GRANT.to_owned()),
        ("subject_token", subject_token.to_owned()),
        ("subject_token_type", ACCESS_TOKEN_TYPE.to_owned()),
        ("requested_token_type", ACCESS_TOKEN_TYPE.to_owned()),
        ("audience", audience.to_owned()),
    ];
    let builder = post_form(http_client, &meta.token_endpoint, cfg, &meta.issuer, form)?;
    let answer = http::send(ENDPOINT, builder).await?;
    if answer.status != 200 {
        return Err(http::error_from_answer(ENDPOINT, &answer, &[]));
    }
    let not_json = CibaError::NotJson {
        status: answer.status,
        endpoint: ENDPOINT,
    };
    let out: Exchanged = serde_json::from_slice(&answer.body).map_err(|_| not_json)?;
    let issued_ok = out
        .issued_token_type
        .as_deref()
        .is_none_or(|t| t == ACCESS_TOKEN_TYPE || t == "urn:ietf:params:oauth:token-type:jwt");
    if out.access_token.is_empty() || !issued_ok {
        return Err(CibaError::NotJson {
            status: answer.status,
            endpoint: ENDPOINT,
        });
    }
    Ok(secrecy::SecretString::from(out.access_token))
}

fn interpret(answer: &http::Answer) -> Result<TokenPoll, CibaError> {
    if answer.status == 200 {
        return parse_tokens(answer.status, &answer.body).map(TokenPoll::Granted);
    }
    if answer.status == 503 {
        if let Some(d) = answer.retry_after {
            return Ok(TokenPoll::RetryAfter(d));
        }
    }
    let err = http::error_from_answer(ENDPOINT, answer, &[]);
    match err.error_code() {
        Some(ErrorCode::AuthorizationPending) if answer.status < 500 => Ok(TokenPoll::Pending),
        Some(ErrorCode::SlowDown) if answer.status < 500 => Ok(TokenPoll::SlowDown),
        _ => Err(err),
    }
}

pub(crate) fn parse_tokens(status: u16, body: &[u8]) -> Result<TokenSet, CibaError> {
    let set: TokenSet = serde_json::from_slice(body).map_err(|_| CibaError::NotJson {
        status,
        endpoint: ENDPOINT,
    })?;
    if set.access_token.is_empty() || set.id_token.is_empty() {
        return Err(CibaError::NotJson {
            status,
            endpoint: ENDPOINT,
        });
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, retry: Option<u64>, body: &str) -> http::Answer {
        http::Answer {
            status,
            retry_after: retry.map(Duration::from_secs),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn poller_intervals() {
        let mut p = Poller::new(None);
        assert_eq!(p.next_wait(), Duration::from_secs(5));
        p.on_slow_down();
        assert_eq!(p.next_wait(), Duration::from_secs(10));
        assert_eq!(p.next_wait(), Duration::from_secs(10));
        p.on_retry_after(Duration::from_secs(30));
        assert_eq!(p.next_wait(), Duration::from_secs(30));
        assert_eq!(p.next_wait(), Duration::from_secs(10));
        p.on_retry_after(Duration::from_secs(1));
        assert_eq!(p.next_wait(), Duration::from_secs(10));
        assert_eq!(Poller::new(Some(0)).interval(), Duration::from_secs(1));
        assert_eq!(Poller::new(Some(2)).interval(), Duration::from_secs(2));
    }

    #[test]
    fn interpret_answers() {
        assert_eq!(
            interpret(&answer(400, None, r#"{"error":"authorization_pending"}"#)).ok(),
            Some(TokenPoll::Pending)
        );
        assert_eq!(
            interpret(&answer(400, None, r#"{"error":"slow_down"}"#)).ok(),
            Some(TokenPoll::SlowDown)
        );
        assert_eq!(
            interpret(&answer(503, Some(7), "")).ok(),
            Some(TokenPoll::RetryAfter(Duration::from_secs(7)))
        );
        assert!(matches!(
            interpret(&answer(503, None, "")),
            Err(CibaError::NotJson { status: 503, .. })
        ));
        assert!(matches!(
            interpret(&answer(400, None, r#"{"error":"expired_token"}"#)),
            Err(CibaError::Endpoint {
                code: ErrorCode::ExpiredToken,
                ..
            })
        ));
        assert!(matches!(
            interpret(&answer(
                200,
                None,
                r#"{"access_token":"a","token_type":"Bearer"}"#
            )),
            Err(CibaError::NotJson { status: 200, .. })
        ));
    }

    #[test]
    fn token_set_debug_redacts() {
        let t = TokenSet {
            access_token: "AT-secret".into(),
            token_type: "Bearer".into(),
            id_token: "ID-secret".into(),
            refresh_token: Some("RT-secret".into()),
            expires_in: Some(60),
        };
        assert!(!format!("{t:?}").contains("secret"));
    }
}
