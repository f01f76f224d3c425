//! One evidence record: what was decided about one call and why, written exactly once
//! on every path (a record dropped unanswered writes itself as `cancelled`).

use super::*;

/// One decision, as written.
#[derive(Debug, Clone, Serialize, Default)]
pub struct EvidenceRecord {
    pub time: String,
    pub request_id: String,
    pub agent: String,
    pub upstream: String,
    /// The HTTP method of the agent's request.
    pub http_method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The tool's own name at its server, when a virtual server showed it under
    /// another (`tool` is the name the agent used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_tool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_fingerprint: Option<String>,
    pub decision: &'static str,
    pub reason: String,
    pub policy_revision: String,
    /// What happened to the call: forwarded, blocked, rejected (bad input), cancelled.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden_tools: Option<usize>,
    /// The approval behind an `approve` decision (no tokens, hints or user codes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<crate::approval::ApprovalEvidence>,
    /// `policy.dry_run`: the call was forwarded although policy said `decision`,
    /// for this reason (a deny code, `approval_required`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<String>,
    /// What the shadow policy set decided, when it differs from `decision`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowEvidence>,
}

/// The shadow policy set's decision of a call, never enforced.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ShadowEvidence {
    /// The first phase where it differed: `request`, `approved` (after a person
    /// approved, with their evidence), or `list` (which tools a `tools/list` shows).
    pub phase: &'static str,
    pub decision: &'static str,
    /// The first deny reason's code, or the approval's `action`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub revision: String,
    /// Phase `list`: the tools the shadow set would show or hide differently.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
}

/// A record being filled in; it is written exactly once, at `finish` or on drop.
pub struct PendingRecord {
    sink: EvidenceSink,
    started: Instant,
    record: Option<EvidenceRecord>,
}

impl PendingRecord {
    pub fn new(sink: &EvidenceSink, started: Instant, record: EvidenceRecord) -> Self {
        PendingRecord {
            sink: sink.clone(),
            started,
            record: Some(record),
        }
    }

    pub fn get_mut(&mut self) -> &mut EvidenceRecord {
        self.record.get_or_insert_with(EvidenceRecord::default)
    }

    /// Writes the record: what happened to the request and why. The reason's code is
    /// the one the agent's answer carries; the metric gets its bounded label.
    pub fn conclude(
        mut self,
        disposition: Disposition,
        reason: &Reason,
        upstream_status: Option<u16>,
    ) {
        let label = reason.metric_label();
        let r = self.get_mut();
        r.reason = reason.code().to_string();
        if r.decision.is_empty() || reason.source() == crate::outcome::Source::Agent {
            r.decision = reason_decision(reason);
        }
        self.emit(disposition, label, upstream_status);
    }

    fn emit(
        &mut self,
        disposition: Disposition,
        label: &'static str,
        upstream_status: Option<u16>,
    ) {
        if let Some(mut r) = self.record.take() {
            r.time = now_rfc3339();
            r.outcome = disposition.as_str();
            r.upstream_status = upstream_status;
            r.latency_ms =
                (self.started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
            crate::telemetry::metrics::decision(r.decision, r.outcome, label, &r.upstream);
            self.sink.write(r);
        }
    }
}

/// The decision word for a record no policy decided (bad input is `reject`).
fn reason_decision(reason: &Reason) -> &'static str {
    match reason.source() {
        crate::outcome::Source::Agent => "reject",
        _ => reason.decision(),
    }
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        // The request went away before an answer was recorded (client gone, timeout).
        self.emit(Disposition::Cancelled, "cancelled", None);
    }
}

/// Logs dropped evidence at most once a second (the metric counts every record).
pub(super) fn warn_dropped() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = crate::store::now_ms();
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 1000
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::error!(
            capacity = QUEUE_CAPACITY,
            "evidence writer cannot keep up; records are being dropped"
        );
    }
}

pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}
