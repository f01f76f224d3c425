//! Prometheus metrics (`/metrics` on the admin listener). One process-wide registry;
//! the hot path only touches atomics (and the family's read lock to find a series).
//! Every label value comes from a small fixed set or from the configuration (upstream
//! names): never tool arguments, user hints, tokens or anything an agent sends.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Content type of the OpenMetrics exposition (what Prometheus asks for when scraping).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text format (for clients that do not accept
/// OpenMetrics, e.g. `curl` or `promtool check metrics`).
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub effect: &'static str,
    pub outcome: &'static str,
    pub reason: &'static str,
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApprovalLabels {
    pub outcome: &'static str,
    pub delivery_mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    pub enforced: &'static str,
    pub shadow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartyLabels {
    pub party: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevisionLabels {
    revision: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets (seconds) for in-process work: policy evaluation.
const FAST_BUCKETS: [f64; 12] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
];
/// Buckets for a tool server's answer.
const UPSTREAM_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Buckets for a person answering on their phone.
const HUMAN_BUCKETS: [f64; 10] = [1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];

fn upstream_histogram() -> Histogram {
    Histogram::new(UPSTREAM_BUCKETS)
}

/// Every metric the gateway keeps.
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    approvals: Family<ApprovalLabels, Counter>,
    approvals_pending: Gauge,
    approval_duration: Histogram,
    policy_evaluation: Histogram,
    policy_errors: Counter,
    upstream_duration: HistogramFamily<UpstreamLabels>,
    store_errors: Counter,
    op_errors: Family<CodeLabels, Counter>,
    limits_exceeded: Family<LimitLabels, Counter>,
    evidence_dropped: Counter,
    evidence_written: Counter,
    evidence_lost: Counter,
    token_requests_deferred: Family<PartyLabels, Counter>,
    shadow_differences: Family<ShadowLabels, Counter>,
    bundle_polls: Family<BundlePollLabels, Counter>,
    stdio_exits: Family<ServerLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BundlePollLabels {
    set: &'static str,
    result: &'static str,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "ciba_gate_decisions",
            "Decisions on agent requests, by policy effect (allow, deny, approve; reject for malformed input), outcome (forwarded, blocked, parked, rejected, upstream_failed, cancelled), reason code (policy-defined codes count as \"policy\") and upstream",
            decisions.clone(),
        );
        let approvals = Family::<ApprovalLabels, Counter>::default();
        registry.register(
            "ciba_gate_approvals",
            "CIBA approval requests ended, by outcome (granted, denied, expired, failed) and delivery mode",
            approvals.clone(),
        );
        let approvals_pending = Gauge::default();
        registry.register(
            "ciba_gate_approvals_pending",
            "CIBA approval requests this process has sent and is waiting on",
            approvals_pending.clone(),
        );
        let approval_duration = Histogram::new(HUMAN_BUCKETS);
        registry.register_with_unit(
            "ciba_gate_approval_duration",
            "Time from an approval request's creation to its result",
            Unit::Seconds,
            approval_duration.clone(),
        );
        let policy_evaluation = Histogram::new(FAST_BUCKETS);
        registry.register_with_unit(
            "ciba_gate_policy_evaluation_duration",
            "Time to evaluate the policy for one input document",
            Unit::Seconds,
            policy_evaluation.clone(),
        );
        let policy_errors = Counter::default();
        registry.register(
            "ciba_gate_policy_errors",
            "Policy evaluations that failed (built-in error, rule conflict, limit hit, malformed rule value) and so ended in a policy_error deny",
            policy_errors.clone(),
        );
        let upstream_duration: HistogramFamily<UpstreamLabels> =
            Family::new_with_constructor(upstream_histogram);
        registry.register_with_unit(
            "ciba_gate_upstream_duration",
            "Time until a tool server's response headers, by upstream and status class (2xx..5xx, timeout, error)",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "ciba_gate_store_errors",
            "Approval store operations that failed (unreachable, timed out, corrupt data)",
            store_errors.clone(),
        );
        let op_errors = Family::<CodeLabels, Counter>::default();
        registry.register(
            "ciba_gate_op_errors",
            "Failed exchanges with the OpenID Provider, by reason code",
            op_errors.clone(),
        );
        let limits_exceeded = Family::<LimitLabels, Counter>::default();
        registry.register(
            "ciba_gate_limits_exceeded",
            "Inputs refused or cut because they passed a configured limit, by limit (request_body, request_body_time, sse_event, upstream_answer, evidence_queue, callback_body)",
            limits_exceeded.clone(),
        );
        let evidence_dropped = Counter::default();
        registry.register(
            "ciba_gate_evidence_dropped",
            "Evidence records dropped because the writer's queue was full",
            evidence_dropped.clone(),
        );
        let token_requests_deferred = Family::<PartyLabels, Counter>::default();
        registry.register(
            "ciba_gate_token_requests_deferred",
            "Token requests not made because another party (a ping handler, a poll loop, another replica) held the approval's redemption claim, by the party that deferred (ping, poll)",
            token_requests_deferred.clone(),
        );
        let shadow_differences = Family::<ShadowLabels, Counter>::default();
        registry.register(
            "ciba_gate_shadow_differences",
            "Calls the shadow policy set (policy.shadow) decided differently from the enforcing one, by effect pair (enforced, shadow); never enforced",
            shadow_differences.clone(),
        );
        let evidence_written = Counter::default();
        registry.register(
            "ciba_gate_evidence_written",
            "Evidence records written to the sink",
            evidence_written.clone(),
        );
        let evidence_lost = Counter::default();
        registry.register(
            "ciba_gate_evidence_write_failed",
            "Evidence records lost because writing them to the sink failed",
            evidence_lost.clone(),
        );
        let bundle_polls = Family::<BundlePollLabels, Counter>::default();
        registry.register(
            "ciba_gate_policy_bundle_polls",
            "Polls of a policy bundle server, by policy set (enforcing, shadow) and result (ok: new bundle in force or not modified; download_failed, malformed, verification_failed, compile_failed: the last good bundle stays in force)",
            bundle_polls.clone(),
        );
        let stdio_exits = Family::<ServerLabels, Counter>::default();
        registry.register(
            "ciba_gate_stdio_server_exits",
            "Processes of stdio tool servers that exited (each is started again on the next call, after a backoff), by upstream",
            stdio_exits.clone(),
        );
        Metrics {
            stdio_exits,
            bundle_polls,
            registry,
            evidence_written,
            evidence_lost,
            shadow_differences,
            token_requests_deferred,
            limits_exceeded,
            evidence_dropped,
            decisions,
            approvals,
            approvals_pending,
            approval_duration,
            policy_evaluation,
            policy_errors,
            upstream_duration,
            store_errors,
            op_errors,
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Counts records the evidence writer wrote.
pub fn evidence_written(records: u64) {
    METRICS.evidence_written.inc_by(records);
}

/// Counts records lost to a failed write.
pub fn evidence_lost(records: u64) {
    METRICS.evidence_lost.inc_by(records);
}

/// Counts one poll of a bundle server (`set`: enforcing or shadow; `result` from a
/// fixed set).
pub fn bundle_poll(set: &'static str, result: &'static str) {
    METRICS
        .bundle_polls
        .get_or_create(&BundlePollLabels { set, result })
        .inc();
}

/// Counts one call the shadow policy set decided differently.
pub fn shadow_difference(enforced: &'static str, shadow: &'static str) {
    METRICS
        .shadow_differences
        .get_or_create(&ShadowLabels { enforced, shadow })
        .inc();
}

/// Counts one evidence record (every decision writes exactly one).
pub fn decision(effect: &'static str, outcome: &'static str, reason: &'static str, upstream: &str) {
    let effect = if effect.is_empty() { "none" } else { effect };
    METRICS
        .decisions
        .get_or_create(&DecisionLabels {
            effect,
            outcome,
            reason,
            upstream: upstream.to_string(),
        })
        .inc();
}

/// Counts one approval request's result (once, by whoever recorded it).
pub fn approval_resolved(outcome: &'static str, delivery_mode: &'static str) {
    METRICS
        .approvals
        .get_or_create(&ApprovalLabels {
            outcome,
            delivery_mode,
        })
        .inc();
}

/// An approval request in flight in this process: counted in the pending gauge until
/// dropped, when its time to decision is observed.
pub struct PendingApproval {
    created_at_ms: u64,
}

impl PendingApproval {
    pub fn start(created_at_ms: u64) -> Self {
        METRICS.approvals_pending.inc();
        PendingApproval { created_at_ms }
    }
}

impl Drop for PendingApproval {
    fn drop(&mut self) {
        METRICS.approvals_pending.dec();
        let ms = crate::clock::now_ms().saturating_sub(self.created_at_ms);
        METRICS.approval_duration.observe(ms as f64 / 1000.0);
    }
}

pub fn policy_evaluation(d: Duration) {
    METRICS.policy_evaluation.observe(d.as_secs_f64());
}

/// `status`: the response status, or `Err("timeout" | "error")`.
pub fn upstream(upstream: &str, status: Result<u16, &'static str>, d: Duration) {
    let status_class = match status {
        Ok(s) if s < 200 => "1xx",
        Ok(s) if s < 300 => "2xx",
        Ok(s) if s < 400 => "3xx",
        Ok(s) if s < 500 => "4xx",
        Ok(_) => "5xx",
        Err(e) => e,
    };
    METRICS
        .upstream_duration
        .get_or_create(&UpstreamLabels {
            upstream: upstream.to_string(),
            status_class,
        })
        .observe(d.as_secs_f64());
}

/// A stdio tool server's process exited.
pub fn stdio_exit(upstream: &str) {
    METRICS
        .stdio_exits
        .get_or_create(&ServerLabels {
            upstream: upstream.to_string(),
        })
        .inc();
}

/// A policy evaluation failed and was answered with a `policy_error` deny.
pub fn policy_error() {
    METRICS.policy_errors.inc();
}

/// An input passed one of the gateway's limits (`limit` is a fixed name).
pub fn limit_exceeded(limit: &'static str) {
    METRICS
        .limits_exceeded
        .get_or_create(&LimitLabels { limit })
        .inc();
}

/// An evidence record could not be queued for writing.
pub fn evidence_dropped() {
    METRICS.evidence_dropped.inc();
    limit_exceeded("evidence_queue");
}

/// A token request was not made: another party holds the redemption claim (`party`:
/// ping or poll).
pub fn token_request_deferred(party: &'static str) {
    METRICS
        .token_requests_deferred
        .get_or_create(&PartyLabels { party })
        .inc();
}

pub fn store_error() {
    METRICS.store_errors.inc();
}

/// `code` is a `CibaError::code()` (a fixed set of static names).
pub fn op_error(code: &'static str) {
    METRICS.op_errors.get_or_create(&CodeLabels { code }).inc();
}

/// What the policy engine reports at scrape time (read by the caller: metrics knows
/// nothing of the engine).
pub struct PolicyState<'a> {
    pub reloads: u64,
    pub reload_failures: u64,
    /// The revision in force.
    pub revision: &'a str,
}

/// The exposition: the process-wide registry plus the policy engine's state.
pub fn render(policy: Option<PolicyState<'_>>) -> String {
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    let mut out = String::with_capacity(8 * 1024);
    let _ = encode_registry(&mut out, &METRICS.registry);
    if let Some(policy) = policy {
        let mut scrape = Registry::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        reloads
            .get_or_create(&ResultLabels { result: "success" })
            .inc_by(policy.reloads);
        reloads
            .get_or_create(&ResultLabels { result: "failure" })
            .inc_by(policy.reload_failures);
        scrape.register(
            "ciba_gate_policy_reloads",
            "Policy reloads since start, by result (a failed reload keeps the previous policy in force)",
            reloads,
        );
        let revision = Family::<RevisionLabels, Gauge>::default();
        revision
            .get_or_create(&RevisionLabels {
                revision: policy.revision.to_string(),
            })
            .set(1);
        scrape.register(
            "ciba_gate_policy_revision_info",
            "The policy revision in force (content hash; \"none\" when no policy is loaded)",
            revision,
        );
        let _ = encode_registry(&mut out, &scrape);
    }
    let _ = encode_eof(&mut out);
    out
}

/// The same exposition in the classic Prometheus text format 0.0.4: counters are
/// described under their `_total` sample name, no `# UNIT` / `# EOF` lines.
pub fn to_text_004(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let described = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        if let Some((kind, rest)) = described {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(&format!("{kind}{name}_total {tail}\n"));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}
