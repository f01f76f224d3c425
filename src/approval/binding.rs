//! Binding messages: the short text the user sees on the phone and the agent side sees
//! too. Rendered by the policy (deterministic for the same call), checked here against
//! what the configured OpenID Provider accepts, since OPs differ widely.

use serde::Deserialize;

/// What one OP accepts as a binding message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub max_chars: usize,
    pub allowed: Charset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charset {
    /// ASCII letters and digits plus these characters.
    AlnumPlus(&'static str),
    /// Any printable text (no control characters).
    Printable,
}

/// Profiles shipped by name.
pub const PROFILE_NAMES: [&str; 6] = [
    "oidc-provider",
    "okta",
    "keycloak",
    "auth0",
    "curity",
    "ciba-gate-dev",
];

impl Profile {
    pub fn named(name: &str) -> Option<Profile> {
        let (max_chars, allowed) = match name {
            // oidc-provider's default validateBindingMessage; Okta reports the same limit.
            "oidc-provider" | "okta" => (20, Charset::AlnumPlus("-._+/!?#")),
            "keycloak" => (50, Charset::AlnumPlus("-._+/!?#")),
            "auth0" => (64, Charset::AlnumPlus(" +-_.,:#")),
            "curity" => (10_000, Charset::Printable),
            // The development OP of `ciba-gate dev`.
            "ciba-gate-dev" => (64, Charset::AlnumPlus(" -._+/!?#,:")),
            _ => return None,
        };
        Some(Profile {
            name: name.to_string(),
            max_chars,
            allowed,
        })
    }

    /// Checks a message; the error says exactly what does not fit.
    pub fn check(&self, message: &str) -> Result<(), BindingMessageError> {
        let n = message.chars().count();
        if n == 0 {
            return Err(BindingMessageError::Empty);
        }
        if n > self.max_chars {
            return Err(BindingMessageError::TooLong {
                profile: self.name.clone(),
                max: self.max_chars,
                got: n,
            });
        }
        let bad = message.chars().find(|c| match &self.allowed {
            Charset::AlnumPlus(extra) => !(c.is_ascii_alphanumeric() || extra.contains(*c)),
            Charset::Printable => c.is_control(),
        });
        if let Some(c) = bad {
            return Err(BindingMessageError::BadCharacter {
                profile: self.name.clone(),
                character: c,
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingMessageError {
    #[error("the binding message is empty")]
    Empty,
    #[error("the binding message has {got} characters; the {profile} profile allows at most {max}")]
    TooLong {
        profile: String,
        max: usize,
        got: usize,
    },
    #[error(
        "the binding message contains {character:?}, which the {profile} profile does not allow"
    )]
    BadCharacter { profile: String, character: char },
}

/// A profile in config: a shipped name, or explicit limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ProfileConfig {
    Named(String),
    Custom {
        max_chars: usize,
        /// Characters allowed besides ASCII letters and digits; omit for any printable text.
        #[serde(default)]
        extra_chars: Option<String>,
    },
}

impl ProfileConfig {
    pub fn resolve(&self) -> Result<Profile, String> {
        match self {
            ProfileConfig::Named(n) => Profile::named(n).ok_or_else(|| {
                format!("unknown profile {n:?}; known: {}", PROFILE_NAMES.join(", "))
            }),
            ProfileConfig::Custom {
                max_chars,
                extra_chars,
            } => {
                if *max_chars == 0 {
                    return Err("max_chars must be greater than 0".into());
                }
                let allowed = match extra_chars {
                    // Leaked once per configuration load: a handful of bytes, for a &'static str.
                    Some(s) => Charset::AlnumPlus(Box::leak(s.clone().into_boxed_str())),
                    None => Charset::Printable,
                };
                Ok(Profile {
                    name: "custom".into(),
                    max_chars: *max_chars,
                    allowed,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_profiles_enforce_their_op_limits() {
        let op = Profile::named("oidc-provider").unwrap();
        assert!(op.check("Deploy-payments-prod").is_ok());
        assert!(matches!(
            op.check("Deploy payments prod"),
            Err(BindingMessageError::BadCharacter { character: ' ', .. })
        ));
        assert!(matches!(
            op.check("Deploy-payments-to-prod"),
            Err(BindingMessageError::TooLong {
                max: 20,
                got: 23,
                ..
            })
        ));
        let kc = Profile::named("keycloak").unwrap();
        assert!(kc.check("Deploy-payments-to-prod").is_ok());
        let a0 = Profile::named("auth0").unwrap();
        assert!(a0.check("Deploy payments to prod: #42").is_ok());
        assert!(a0.check("Deploy/payments").is_err());
        assert!(a0.check(&"x".repeat(65)).is_err());
        let curity = Profile::named("curity").unwrap();
        assert!(curity.check("Überweisung von 20 € freigeben?").is_ok());
        assert!(curity.check("line\nbreak").is_err());
        assert!(Profile::named("dev-null").is_none());
        assert_eq!(op.check(""), Err(BindingMessageError::Empty));
    }

    #[test]
    fn custom_profiles_resolve() {
        let p = ProfileConfig::Custom {
            max_chars: 5,
            extra_chars: Some("-".into()),
        }
        .resolve()
        .unwrap();
        assert!(p.check("a-b").is_ok());
        assert!(p.check("a b").is_err());
        assert!(ProfileConfig::Named("nope".into()).resolve().is_err());
    }
}

/// One sample input whose approval message does not fit the profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleProblem {
    pub file: String,
    pub index: usize,
    pub message: String,
    pub problem: String,
}

/// Evaluates every sample input (`*.sample.json` in the policy directory: one input
/// document or an array of them) and checks each approval's binding message against
/// the profile, so that a message the OP would refuse is found before anyone needs it.
/// Returns the number of approval messages checked and the problems found.
pub fn check_samples(
    engine: &crate::policy::PolicyEngine,
    dir: &std::path::Path,
    profile: &Profile,
) -> Result<(usize, Vec<SampleProblem>), String> {
    let mut checked = 0;
    let mut problems = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(crate::policy::SAMPLE_SUFFIX) && !n.starts_with('.'))
        })
        .collect();
    files.sort();
    for path in files {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
        let inputs = match value {
            serde_json::Value::Array(items) => items,
            one => vec![one],
        };
        for (index, mut input) in inputs.into_iter().enumerate() {
            // As the gateway asks: the input names the configured profile.
            if let Some(doc) = input.as_object_mut() {
                doc.entry("op").or_insert_with(
                    || serde_json::json!({"binding_message_profile": profile.name}),
                );
            }
            let decision = engine.decide(&input);
            let Some(approval) = decision.approval else {
                continue;
            };
            checked += 1;
            let file = path.display().to_string();
            match approval
                .get("binding_message")
                .and_then(serde_json::Value::as_str)
            {
                Some(m) => {
                    if let Err(e) = profile.check(m) {
                        problems.push(SampleProblem {
                            file,
                            index,
                            message: m.to_string(),
                            problem: e.to_string(),
                        });
                    }
                }
                None => problems.push(SampleProblem {
                    file,
                    index,
                    message: String::new(),
                    problem: "the approval has no binding_message".into(),
                }),
            }
        }
    }
    Ok((checked, problems))
}
