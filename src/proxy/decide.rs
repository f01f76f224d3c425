//! Phase 2, decide: put a call to policy. Phase `request` for every call, phase
//! `approved` after a person approved (the same input plus the approver's evidence),
//! phase `list` for each tool in a `tools/list` answer. Only `allow` forwards.

use serde_json::Value;

use super::Gateway;
use super::call::Unit;
use crate::audit::{Required, ShadowEvidence};
use crate::outcome::Reason;
use crate::policy::input::{self, Phase, PolicyInput};
use crate::policy::{Decision, Effect};

/// What policy says about one call.
#[derive(Debug)]
pub enum Verdict {
    Forward,
    /// A person must approve this tool call; the policy's `approval` object.
    Approve(Value),
    Block(Reason),
}

pub fn effect_name(effect: Effect) -> &'static str {
    match effect {
        Effect::Allow => "allow",
        Effect::Deny => "deny",
        Effect::Approve => "approve",
    }
}

fn evaluate_document(gw: &Gateway, phase: Phase, document: &Value) -> Decision {
    let phase = match phase {
        Phase::Request => "request",
        Phase::Approved => "approved",
        Phase::List => "list",
    };
    let span = crate::traced_span!(
        "policy",
        otel.name = %format_args!("policy.{phase}"),
        ciba_gate.policy.phase = phase,
        ciba_gate.policy.effect = tracing::field::Empty,
        ciba_gate.policy.revision = tracing::field::Empty
    );
    let decision = span.in_scope(|| gw.policy.decide(document));
    span.record("ciba_gate.policy.effect", effect_name(decision.effect));
    span.record("ciba_gate.policy.revision", &*decision.revision);
    decision
}

/// Phase `request`: decides `unit` and notes the decision in its evidence record.
pub fn request(gw: &Gateway, unit: &mut Unit) -> Verdict {
    let document = unit.input.to_value();
    let decision = evaluate_document(gw, unit.input.phase, &document);
    tracing::Span::current().record("ciba_gate.decision", effect_name(decision.effect));
    let r = unit.record.get_mut();
    r.decision = effect_name(decision.effect);
    r.policy_revision = decision.revision.to_string();
    if let Some(shadow) = gw.shadow_in_force() {
        r.shadow = shadow_difference("request", &decision, &shadow.decide(&document));
    }
    let verdict = match (decision.effect, decision.approval) {
        (Effect::Allow, _) => Verdict::Forward,
        (Effect::Approve, Some(params)) if unit.approvable.is_some() => Verdict::Approve(params),
        // Anything else policy wants approved (a resource read, an unrouted HTTP
        // request, a notification) cannot be.
        (Effect::Approve, _) => Verdict::Block(Reason::ApprovalUnsupported),
        (Effect::Deny, _) => Verdict::Block(Reason::from_policy(&decision.reasons)),
    };
    // An audit trail that cannot be written is treated like a store that is down.
    let refuse = match gw.evidence_required {
        Required::Off => false,
        Required::Approvals => matches!(verdict, Verdict::Approve(_)),
        Required::All => !matches!(verdict, Verdict::Block(_)),
    };
    if refuse && gw.evidence.failing() {
        return Verdict::Block(Reason::EvidenceUnavailable);
    }
    if !gw.dry_run {
        return verdict;
    }
    // Dry run: what policy would have stopped goes through, and the record says so.
    match verdict {
        Verdict::Forward => Verdict::Forward,
        Verdict::Approve(_) => {
            r.dry_run = Some("approval_required".into());
            Verdict::Forward
        }
        Verdict::Block(reason) => {
            r.dry_run = Some(reason.code().to_string());
            Verdict::Forward
        }
    }
}

/// The shadow decision, when it differs from the enforced one: another effect,
/// another first deny reason, or another approval object. Counted by effect pair.
fn shadow_difference(
    phase: &'static str,
    enforced: &Decision,
    shadow: &Decision,
) -> Option<ShadowEvidence> {
    let same = enforced.effect == shadow.effect
        && match enforced.effect {
            Effect::Allow => true,
            Effect::Deny => enforced.reason_code() == shadow.reason_code(),
            Effect::Approve => enforced.approval == shadow.approval,
        };
    if same {
        return None;
    }
    crate::telemetry::metrics::shadow_difference(
        effect_name(enforced.effect),
        effect_name(shadow.effect),
    );
    let reason = match shadow.effect {
        Effect::Allow => None,
        Effect::Deny => shadow.reason_code().map(str::to_string),
        Effect::Approve => shadow
            .approval
            .as_ref()
            .and_then(|a| a.get("action"))
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    Some(ShadowEvidence {
        phase,
        decision: effect_name(shadow.effect),
        reason,
        revision: shadow.revision.to_string(),
        tools: Vec::new(),
    })
}

/// Phase `approved`: separate approval from execution. Policy decides again with the
/// approver's evidence; `Ok` only on `allow`. The shadow set (if any) decides too;
/// its difference is returned for a record that has none from phase `request`.
pub fn approved(
    gw: &Gateway,
    input: &mut PolicyInput,
    approvals: Vec<input::Approval>,
) -> (
    Result<(), Reason>,
    std::sync::Arc<str>,
    Option<ShadowEvidence>,
) {
    input.phase = Phase::Approved;
    // `input.approval` keeps its one-approver shape; `input.approvals` lists them all.
    input.approval = approvals.first().cloned();
    input.approvals = Some(approvals);
    let document = input.to_value();
    let decision = evaluate_document(gw, Phase::Approved, &document);
    let shadow = gw
        .shadow_in_force()
        .and_then(|s| shadow_difference("approved", &decision, &s.decide(&document)));
    let revision = decision.revision.clone();
    let verdict = match decision.effect {
        Effect::Allow => Ok(()),
        Effect::Approve => Err(Reason::ApprovalNotSufficient(
            "it asks for approval again".into(),
        )),
        Effect::Deny => Err(match Reason::from_policy(&decision.reasons) {
            Reason::Policy { code, message } => Reason::BlockedAfterApproval { code, message },
            other => other,
        }),
    };
    (verdict, revision, shadow)
}

/// The tools of one `tools/list` answer the shadow set shows or hides differently.
#[derive(Debug, Default)]
pub struct ListShadow {
    pub tools: Vec<String>,
    /// The shadow's effect on the first of them, and its revision.
    pub first: Option<(&'static str, String)>,
}

impl ListShadow {
    /// The evidence for a `tools/list` record, when the shadow differed.
    pub fn evidence(&self) -> Option<ShadowEvidence> {
        let (decision, revision) = self.first.clone()?;
        Some(ShadowEvidence {
            phase: "list",
            decision,
            reason: None,
            revision,
            tools: self.tools.clone(),
        })
    }
}

/// Phase `list`: whether a tool in a `tools/list` answer may be shown. A deny (or a
/// policy error, which is a deny) hides it. The shadow set decides it too; a tool it
/// would show or hide differently is noted in `shadow` and counted.
pub fn list_shows(
    gw: &Gateway,
    base: &PolicyInput,
    tool: &Value,
    own_name: Option<&str>,
    shadow: &std::sync::Mutex<ListShadow>,
) -> bool {
    let Some(name) = tool.get("name").and_then(Value::as_str) else {
        return false;
    };
    let mut input = PolicyInput::new(Phase::List, base.agent.clone(), base.upstream.clone());
    input.mcp = base.mcp.as_ref().map(|m| input::Mcp {
        method: Some(super::mcp::methods::name_of(super::mcp::methods::Role::ToolCall).into()),
        kind: "request",
        protocol_version: m.protocol_version.clone(),
        session: m.session.clone(),
    });
    input.tool = Some(input::Tool {
        name: name.to_string(),
        upstream_name: own_name.map(str::to_string),
        arguments: None,
        annotations: tool.get("annotations").cloned(),
    });
    let document = input.to_value();
    let enforced = gw.policy.decide(&document).effect;
    if let Some(set) = gw.shadow_in_force() {
        let other = set.decide(&document);
        if (enforced == Effect::Deny) != (other.effect == Effect::Deny) {
            crate::telemetry::metrics::shadow_difference(
                effect_name(enforced),
                effect_name(other.effect),
            );
            if let Ok(mut s) = shadow.lock() {
                s.tools.push(name.to_string());
                s.first
                    .get_or_insert((effect_name(other.effect), other.revision.to_string()));
            }
        }
    }
    enforced != Effect::Deny
}
