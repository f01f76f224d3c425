//! The policy's `approval` object, checked: who is asked, the binding message the phone
//! shows (against the OP's profile), scope, ACR values, expiry and wait mode.

use serde::Serialize;
use serde_json::Value;

use super::{Approvals, Approvers, Mode, identity};
use crate::outcome::Reason;

/// What the policy asked for, checked.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalParams {
    /// Whose phones are asked (never serialized: they hold the raw hints).
    #[serde(skip)]
    pub approvers: Approvers,
    pub action: String,
    pub binding_message: String,
    pub scope: String,
    pub acr_values: Option<String>,
    pub requested_expiry: Option<u64>,
    pub mode: Option<Mode>,
}

impl Approvals {
    /// Checks the policy's approval object against the OP's limits.
    pub fn parse_params(
        &self,
        params: &Value,
        identity: Option<&identity::Identity>,
    ) -> Result<ApprovalParams, Reason> {
        let s = |k: &str| params.get(k).and_then(Value::as_str).map(str::to_string);
        let approvers = self.approvers(params, identity)?;
        let binding_message = s("binding_message").ok_or_else(|| {
            Reason::ApprovalMisconfigured("the approval has no binding_message".into())
        })?;
        self.profile
            .check(&binding_message)
            .map_err(|e| Reason::InvalidBindingMessage(e.to_string()))?;
        let mut scope = s("scope").unwrap_or_else(|| "openid".into());
        if !scope.split(' ').any(|x| x == "openid") {
            scope = format!("openid {scope}");
        }
        let acr_values = match params.get("acr_values") {
            Some(Value::String(a)) if !a.is_empty() => Some(a.clone()),
            Some(Value::Array(items)) => {
                let v: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                (!v.is_empty()).then(|| v.join(" "))
            }
            _ => None,
        };
        let mode = match params.get("mode").and_then(Value::as_str) {
            Some("hold") => Some(Mode::Hold),
            Some("park") => Some(Mode::Park),
            Some(other) => {
                return Err(Reason::ApprovalMisconfigured(format!(
                    "mode {other:?} is not hold or park"
                )));
            }
            None => None,
        };
        Ok(ApprovalParams {
            approvers,
            action: s("action").unwrap_or_else(|| "approve".into()),
            binding_message,
            scope,
            acr_values,
            requested_expiry: params.get("requested_expiry").and_then(Value::as_u64),
            mode,
        })
    }
}
