//! Error codes defined by CIBA Core 1.0 (§11, §13) and RFC 6749, and the client's error type.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

/// An OAuth / CIBA error code as sent by an OpenID Provider in the `error` member.
///
/// Unknown codes are kept (sanitised) in [`ErrorCode::Other`] and are treated as terminal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidScope,
    ExpiredLoginHintToken,
    UnknownUserId,
    UnauthorizedClient,
    MissingUserCode,
    InvalidUserCode,
    InvalidBindingMessage,
    InvalidClient,
    AccessDenied,
    AuthorizationPending,
    SlowDown,
    ExpiredToken,
    InvalidGrant,
    TransactionFailed,
    Other(String),
}

const KNOWN: &[(&str, ErrorCode)] = &[
    ("invalid_request", ErrorCode::InvalidRequest),
    ("invalid_scope", ErrorCode::InvalidScope),
    ("expired_login_hint_token", ErrorCode::ExpiredLoginHintToken),
    ("unknown_user_id", ErrorCode::UnknownUserId),
    ("unauthorized_client", ErrorCode::UnauthorizedClient),
    ("missing_user_code", ErrorCode::MissingUserCode),
    ("invalid_user_code", ErrorCode::InvalidUserCode),
    ("invalid_binding_message", ErrorCode::InvalidBindingMessage),
    ("invalid_client", ErrorCode::InvalidClient),
    ("access_denied", ErrorCode::AccessDenied),
    ("authorization_pending", ErrorCode::AuthorizationPending),
    ("slow_down", ErrorCode::SlowDown),
    ("expired_token", ErrorCode::ExpiredToken),
    ("invalid_grant", ErrorCode::InvalidGrant),
    ("transaction_failed", ErrorCode::TransactionFailed),
];

/// Longest unknown error code kept verbatim.
const MAX_OTHER_LEN: usize = 64;

impl ErrorCode {
    /// Parses an `error` value. Never fails: unknown values become [`ErrorCode::Other`],
    /// restricted to the RFC 6749 error character set and 64 characters.
    pub fn parse(s: &str) -> ErrorCode {
        for (name, code) in KNOWN {
            if *name == s {
                return code.clone();
            }
        }
        let ok = !s.is_empty()
            && s.len() <= MAX_OTHER_LEN
            && s.bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\');
        if ok {
            ErrorCode::Other(s.to_owned())
        } else {
            ErrorCode::Other("unrecognized_error".to_owned())
        }
    }

    /// The wire name of the code.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::Other(s) => s.as_str(),
            known => KNOWN
                .iter()
                .find(|(_, c)| c == known)
                .map(|(n, _)| *n)
                .unwrap_or("unrecognized_error"),
        }
    }

    /// The wire name for known codes; `None` for [`ErrorCode::Other`].
    pub fn static_name(&self) -> Option<&'static str> {
        KNOWN.iter().find(|(_, c)| c == self).map(|(n, _)| *n)
    }

    /// Whether a poll answered with this code means "keep waiting" (not terminal).
    pub fn is_pending(&self) -> bool {
        matches!(self, ErrorCode::AuthorizationPending | ErrorCode::SlowDown)
    }

    /// Whether this code is a decision of the user (or the OP on the user's behalf),
    /// as opposed to a configuration or protocol problem.
    pub fn is_user_decision(&self) -> bool {
        matches!(
            self,
            ErrorCode::AccessDenied | ErrorCode::ExpiredToken | ErrorCode::TransactionFailed
        )
    }
}

impl FromStr for ErrorCode {
    type Err = Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ErrorCode::parse(s))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(ErrorCode::parse(&s))
    }
}

/// Everything that can go wrong in the CIBA client. Messages never contain tokens,
/// client secrets, notification tokens, user hints or user codes.
#[derive(Debug, thiserror::Error)]
pub enum CibaError {
    #[error("OpenID Provider discovery failed: {0}")]
    Discovery(String),
    #[error("could not reach the OpenID Provider: {0}")]
    Transport(String),
    #[error(
        "the OpenID Provider's {endpoint} endpoint answered HTTP {status} without a usable JSON body"
    )]
    NotJson { status: u16, endpoint: &'static str },
    #[error("the OpenID Provider's {endpoint} endpoint answered HTTP {status} with error \"{code}\"{}",
        description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Endpoint {
        endpoint: &'static str,
        status: u16,
        code: ErrorCode,
        description: Option<String>,
    },
    #[error("the ID token was rejected: {0}")]
    InvalidIdToken(String),
    #[error("the notification was rejected: {0}")]
    InvalidNotification(String),
    #[error("CIBA client configuration error: {0}")]
    Config(String),
}

impl CibaError {
    /// A stable, machine-readable reason code (for audit records and metrics).
    pub fn code(&self) -> &'static str {
        match self {
            CibaError::Discovery(_) => "op_discovery_failed",
            CibaError::Transport(_) => "op_unreachable",
            CibaError::NotJson { status, .. } if *status >= 500 => "op_unavailable",
            CibaError::NotJson { .. } => "op_bad_response",
            CibaError::Endpoint { code, status, .. } => match code.static_name() {
                Some(name) => name,
                None if *status >= 500 => "op_unavailable",
                None => "op_error",
            },
            CibaError::InvalidIdToken(_) => "invalid_id_token",
            CibaError::InvalidNotification(_) => "invalid_notification",
            CibaError::Config(_) => "config_error",
        }
    }

    /// The OP's error code, when the OP answered with one.
    pub fn error_code(&self) -> Option<&ErrorCode> {
        match self {
            CibaError::Endpoint { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether trying the same operation again later may succeed (network trouble,
    /// OP server errors). Every OP-reported 4xx error is terminal.
    pub fn is_retryable(&self) -> bool {
        match self {
            CibaError::Transport(_) => true,
            CibaError::NotJson { status, .. } | CibaError::Endpoint { status, .. } => {
                *status >= 500 || *status == 429
            }
            _ => false,
        }
    }
}

/// Makes an OP-provided `error_description` safe to show: printable characters only,
/// bounded length, and any value we sent that must not be echoed replaced.
pub(crate) fn sanitize_description(desc: &str, redact: &[&str]) -> Option<String> {
    let mut s: String = desc.chars().filter(|c| !c.is_control()).take(200).collect();
    for secret in redact {
        if secret.len() >= 3 && s.contains(secret) {
            s = s.replace(secret, "[redacted]");
        }
    }
    let s = s.trim().to_owned();
    if s.is_empty() { None } else { Some(s) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_round_trip() {
        for (name, code) in KNOWN {
            assert_eq!(&ErrorCode::parse(name), code);
            assert_eq!(code.as_str(), *name);
            assert_eq!(code.to_string(), *name);
        }
    }

    #[test]
    fn unknown_codes_are_kept_or_replaced() {
        assert_eq!(
            ErrorCode::parse("temporarily_unavailable"),
            ErrorCode::Other("temporarily_unavailable".into())
        );
        assert_eq!(
            ErrorCode::parse("bad\ncode"),
            ErrorCode::Other("unrecognized_error".into())
        );
        assert_eq!(
            ErrorCode::parse(&"x".repeat(100)),
            ErrorCode::Other("unrecognized_error".into())
        );
        assert_eq!(
            "slow_down".parse::<ErrorCode>().ok(),
            Some(ErrorCode::SlowDown)
        );
    }

    #[test]
    fn reason_codes() {
        let e = CibaError::Endpoint {
            endpoint: "token",
            status: 403,
            code: ErrorCode::AccessDenied,
            description: None,
        };
        assert_eq!(e.code(), "access_denied");
        assert!(!e.is_retryable());
        let e = CibaError::Endpoint {
            endpoint: "token",
            status: 502,
            code: ErrorCode::Other("x".into()),
            description: None,
        };
        assert_eq!(e.code(), "op_unavailable");
        assert!(e.is_retryable());
        assert_eq!(CibaError::Transport("x".into()).code(), "op_unreachable");
    }

    #[test]
    fn descriptions_are_sanitized() {
        assert_eq!(
            sanitize_description("user alice@example.com\nunknown", &["alice@example.com"]),
            Some("user [redacted]unknown".into())
        );
        assert_eq!(sanitize_description("  \n ", &[]), None);
        assert_eq!(
            sanitize_description(&"a".repeat(500), &[]).map(|s| s.len()),
            Some(200)
        );
    }

    #[test]
    fn display_has_no_debug_noise() {
        let e = CibaError::Endpoint {
            endpoint: "backchannel authentication",
            status: 400,
            code: ErrorCode::InvalidScope,
            description: Some("openid missing".into()),
        };
        assert_eq!(
            e.to_string(),
            "the OpenID Provider's backchannel authentication endpoint answered HTTP 400 with error \"invalid_scope\": openid missing"
        );
    }
}
