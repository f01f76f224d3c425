//! Who is asked: the configured user, the person the agent's verified identity names,
//! or the people the policy's approval object names (`approval.user`,
//! `approval.approvers`). Raw hints go only to the OP; everything else sees keyed hashes.

use serde_json::Value;

use super::{Approvals, identity, keyed_hash};
use crate::ciba::UserHint;
use crate::outcome::Reason;

/// Who is asked to approve: the configured user, or the one the policy names for this
/// call (`approval.user`). The raw hint goes only to the OP; everything else (store,
/// throttles, evidence) sees its keyed hash.
#[derive(Debug, Clone)]
pub struct Approver {
    pub hint: UserHint,
    /// Keyed hash of the hint.
    pub key: String,
    /// False when the policy (or the agent's verified identity) named this approver.
    pub configured: bool,
    /// The keyed hash of the person's ID-token issuer and subject, when it is known
    /// before asking (a verified identity): the approving ID token must name them.
    pub subject_hash: Option<String>,
}

/// Who must approve a call: one person, or (two-person rule) `required` distinct
/// people out of those `asked`, each with a CIBA request of their own.
#[derive(Debug, Clone)]
pub struct Approvers {
    pub asked: Vec<Approver>,
    pub required: usize,
}

impl Approvers {
    fn one(approver: Approver) -> Self {
        Approvers {
            asked: vec![approver],
            required: 1,
        }
    }

    /// More than one person is asked: the call waits for a quorum.
    pub fn is_quorum(&self) -> bool {
        self.asked.len() > 1
    }

    /// The first person asked (named in the evidence's top-level fields).
    pub fn primary(&self) -> &Approver {
        &self.asked[0]
    }
}

/// Longest approver hint a policy may give (a `login_hint_token` is a JWT).
const MAX_POLICY_HINT: usize = 8192;
/// Most people one call may ask (each gets a CIBA request of their own).
pub const MAX_APPROVERS: usize = 10;

impl Approvals {
    /// The person a verified identity names, asked with their ID token as
    /// `id_token_hint`: keyed on their subject, so every token they hold is one person
    /// to throttles, fingerprints and evidence.
    fn identified(&self, person: &identity::Identity) -> Approver {
        Approver {
            hint: UserHint::IdTokenHint(person.token().to_string()),
            key: keyed_hash(&self.key, "user", &person.stable_name()),
            configured: false,
            subject_hash: Some(self.subject_hash(&person.issuer, &person.subject)),
        }
    }

    /// The hint type of the configured user.
    pub fn hint_type(&self) -> &'static str {
        self.user.hint.param()
    }

    /// Who this approval object asks: `approval.user` (one person), `approval.approvers`
    /// (a list: all of them; or `{"from": [...], "count": N}`: N distinct people of
    /// those), or, with neither, the person the agent's verified identity names, else the
    /// configured user. Each person is
    /// `{"hint_type": "login_hint" | "login_hint_token", "value": "…"}` or a plain
    /// string (a `login_hint`). Anything malformed is a misconfiguration (blocked),
    /// never a fallback to the configured user.
    pub fn approvers(
        &self,
        params: &Value,
        identity: Option<&identity::Identity>,
    ) -> Result<Approvers, Reason> {
        let bad = |why: String| Reason::ApprovalMisconfigured(why);
        match (params.get("user"), params.get("approvers")) {
            (Some(_), Some(_)) => Err(bad(
                "approval: name the approver with user or approvers, not both".into(),
            )),
            (None, None) => Ok(Approvers::one(match identity {
                Some(person) => self.identified(person),
                None => self.user.clone(),
            })),
            (Some(user), None) => Ok(Approvers::one(self.parse_user(user, "approval.user")?)),
            (None, Some(group)) => {
                let field = "approval.approvers";
                let (list, count) = match group {
                    Value::Array(list) => (list, None),
                    Value::Object(o) => {
                        if let Some(k) = o.keys().find(|k| !["from", "count"].contains(&k.as_str()))
                        {
                            return Err(bad(format!("{field}: unknown field {k:?}")));
                        }
                        let Some(Value::Array(list)) = o.get("from") else {
                            return Err(bad(format!("{field}.from must be a list of approvers")));
                        };
                        let count = o.get("count").map(|c| {
                            c.as_u64()
                                .ok_or_else(|| bad(format!("{field}.count must be a whole number")))
                        });
                        (list, count.transpose()?)
                    }
                    _ => {
                        return Err(bad(format!(
                            "{field} must be a list, or an object with from and count"
                        )));
                    }
                };
                if list.is_empty() || list.len() > MAX_APPROVERS {
                    return Err(bad(format!(
                        "{field} must name 1 to {MAX_APPROVERS} approvers (it names {})",
                        list.len()
                    )));
                }
                let mut asked: Vec<Approver> = Vec::with_capacity(list.len());
                for (i, user) in list.iter().enumerate() {
                    let a = self.parse_user(user, &format!("{field}[{i}]"))?;
                    if asked.iter().any(|b| b.key == a.key) {
                        return Err(bad(format!("{field}[{i}] names an approver twice")));
                    }
                    asked.push(a);
                }
                let required = count.map_or(asked.len() as u64, |c| c);
                if required == 0 || required > asked.len() as u64 {
                    return Err(bad(format!(
                        "{field}.count must be between 1 and the {} approvers listed",
                        asked.len()
                    )));
                }
                Ok(Approvers {
                    asked,
                    required: required as usize,
                })
            }
        }
    }

    /// One approver named by policy. An ID token cannot come from policy (it expires and
    /// must be the user's own).
    fn parse_user(&self, user: &Value, field: &str) -> Result<Approver, Reason> {
        let bad = |why: &str| Reason::ApprovalMisconfigured(format!("{field}: {why}"));
        let (hint_type, value) = match user {
            Value::String(v) => (None, v),
            Value::Object(user) => {
                if let Some(k) = user
                    .keys()
                    .find(|k| !["hint_type", "value"].contains(&k.as_str()))
                {
                    return Err(bad(&format!("unknown field {k:?}")));
                }
                let Some(Value::String(value)) = user.get("value") else {
                    return Err(bad("value must be a non-empty string"));
                };
                let hint_type = match user.get("hint_type") {
                    None => None,
                    Some(Value::String(t)) => Some(t.as_str()),
                    Some(_) => return Err(bad("hint_type must be a string")),
                };
                (hint_type, value)
            }
            _ => return Err(bad("not an object with hint_type and value")),
        };
        if value.is_empty() {
            return Err(bad("value must be a non-empty string"));
        }
        if value.len() > MAX_POLICY_HINT || value.chars().any(char::is_control) {
            return Err(bad("value is too long or holds control characters"));
        }
        let hint = match hint_type {
            Some("login_hint") | None => UserHint::LoginHint(value.clone()),
            Some("login_hint_token") => UserHint::LoginHintToken(value.clone()),
            Some("id_token_hint") => {
                return Err(bad("id_token_hint cannot come from policy"));
            }
            Some(_) => return Err(bad("hint_type must be login_hint or login_hint_token")),
        };
        let key = keyed_hash(&self.key, "user", hint.value());
        Ok(Approver {
            configured: key == self.user.key && hint.param() == self.user.hint.param(),
            hint,
            key,
            subject_hash: None,
        })
    }
}
