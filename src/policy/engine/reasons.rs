//! The value of `deny` as reasons: strings, `{code, message}` objects, or a boolean;
//! anything else fails closed.

use super::*;

/// Turns the value of `deny` into reasons. Set (or array) elements: a string is a
/// `policy_denied` reason, an object gives its own `code` and `message`. A boolean
/// `deny` (someone wrote `deny if ...`) is honoured too. Anything else fails closed.
pub(crate) fn deny_reasons(deny: &Value) -> Result<Vec<Reason>, String> {
    let items: Vec<&Value> = match deny {
        Value::Undefined | Value::Bool(false) | Value::Null => return Ok(Vec::new()),
        Value::Bool(true) => {
            return Ok(vec![Reason {
                code: codes::POLICY_DENIED.to_string(),
                message: "denied by policy".to_string(),
            }]);
        }
        Value::Set(s) => s.iter().collect(),
        Value::Array(a) => a.iter().collect(),
        _ => return Err("rule deny must be a set".to_string()),
    };
    let mut reasons = Vec::with_capacity(items.len());
    for item in items {
        reasons.push(match item {
            Value::String(s) => Reason {
                code: codes::POLICY_DENIED.to_string(),
                message: s.to_string(),
            },
            Value::Object(obj) => {
                let get = |k: &str| match obj.get(&Value::from(k)) {
                    Some(Value::String(s)) => Some(s.to_string()),
                    _ => None,
                };
                let code = get("code").unwrap_or_else(|| codes::POLICY_DENIED.to_string());
                let message =
                    get("message").unwrap_or_else(|| format!("denied by policy ({code})"));
                Reason { code, message }
            }
            other => Reason {
                code: codes::POLICY_DENIED.to_string(),
                message: serde_json::to_string(other).unwrap_or_else(|_| "denied".to_string()),
            },
        });
    }
    Ok(reasons)
}
