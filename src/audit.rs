//! Evidence records: one JSON line per decision, written off the hot path by a
//! dedicated thread. A record is emitted on every return path — including a cancelled
//! request — because `PendingRecord` writes itself when dropped.
//! Never carries credentials, tokens, user codes, raw user identifiers or raw arguments:
//! arguments appear only as a fingerprint.

use crate::clock::Instant;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use serde::Serialize;

use crate::outcome::{Disposition, Reason};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `evidence:` — where evidence records go.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceConfig {
    #[serde(default)]
    pub sink: SinkKind,
    /// File to append to when `sink: file`. Relative to the config file.
    #[serde(default)]
    pub path: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    #[default]
    Stdout,
    File,
}

impl EvidenceConfig {
    pub fn validate(&self) -> crate::validate::Checked {
        crate::validate::require(
            self.sink != SinkKind::File || self.path.is_some(),
            "path",
            "required when evidence.sink is file",
        )
    }

    /// Opens the sink (`path` already resolved against the config file's directory).
    pub fn open(&self) -> std::io::Result<EvidenceSink> {
        match (self.sink, &self.path) {
            (SinkKind::File, Some(path)) => EvidenceSink::file(path),
            _ => Ok(EvidenceSink::stdout()),
        }
    }
}

/// Where evidence lines go. Cheap to clone.
#[derive(Clone)]
pub struct EvidenceSink {
    tx: mpsc::SyncSender<EvidenceRecord>,
}

/// Records waiting for the writer, at most. A writer that cannot keep up (a blocked
/// disk, a stopped reader of stdout) must not grow the gateway's memory without bound:
/// past this, records are dropped, counted (`ciba_gate_evidence_dropped_total`) and logged.
pub const QUEUE_CAPACITY: usize = 16 * 1024;

/// How long the writer lingers after a batch before it blocks again. Senders that
/// find it lingering hand over records without a thread wake-up, which is what makes
/// one record per call cheap under load.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

impl EvidenceSink {
    pub fn stdout() -> Self {
        Self::spawn(Box::new(std::io::stdout()))
    }

    pub fn file(path: &Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self::spawn(Box::new(f)))
    }

    /// A sink that keeps lines in memory (tests).
    pub fn memory() -> (Self, Arc<std::sync::Mutex<Vec<String>>>) {
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::sync_channel::<EvidenceRecord>(QUEUE_CAPACITY);
        let store = lines.clone();
        std::thread::spawn(move || {
            for record in rx {
                if let (Ok(line), Ok(mut v)) = (serde_json::to_string(&record), store.lock()) {
                    v.push(line);
                }
            }
        });
        (EvidenceSink { tx }, lines)
    }

    fn spawn(out: Box<dyn Write + Send>) -> Self {
        Self::spawn_with_capacity(out, QUEUE_CAPACITY)
    }

    /// A sink writing to `out` through a queue of `capacity` records.
    pub fn spawn_with_capacity(out: Box<dyn Write + Send>, capacity: usize) -> Self {
        let (tx, rx) = mpsc::sync_channel::<EvidenceRecord>(capacity);
        std::thread::Builder::new()
            .name("evidence-writer".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(out);
                let write = |out: &mut std::io::BufWriter<Box<dyn Write + Send>>,
                             r: EvidenceRecord| {
                    if serde_json::to_writer(&mut *out, &r).is_ok() {
                        let _ = out.write_all(b"\n");
                    }
                };
                // Block for the first record, then drain and linger while records keep coming.
                while let Ok(first) = rx.recv() {
                    write(&mut out, first);
                    loop {
                        let mut any = false;
                        while let Ok(more) = rx.try_recv() {
                            write(&mut out, more);
                            any = true;
                        }
                        let _ = out.flush();
                        if !any {
                            break;
                        }
                        std::thread::sleep(LINGER);
                    }
                }
                let _ = out.flush();
            })
            .expect("spawning the evidence writer thread");
        EvidenceSink { tx }
    }

    fn write(&self, record: EvidenceRecord) {
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                crate::telemetry::metrics::evidence_dropped();
                warn_dropped();
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                crate::telemetry::metrics::evidence_dropped();
            }
        }
    }
}

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
fn warn_dropped() {
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
