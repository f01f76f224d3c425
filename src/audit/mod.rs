//! Evidence records: one JSON line per decision, written off the hot path by a
//! dedicated thread. A record is emitted on every return path — including a cancelled
//! request — because `PendingRecord` writes itself when dropped.
//! Never carries credentials, tokens, user codes, raw user identifiers or raw arguments:
//! arguments appear only as a fingerprint.

use crate::clock::Instant;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use serde::Serialize;

use crate::outcome::{Disposition, Reason};
use crate::secret::SecretSource;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub mod chain;
pub mod http_sink;

/// `evidence:` — where evidence records go.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceConfig {
    #[serde(default)]
    pub sink: SinkKind,
    /// File to append to when `sink: file`. Relative to the config file.
    #[serde(default)]
    pub path: Option<std::path::PathBuf>,
    /// Hash-chain every line (tamper evidence; see `ciba-gate evidence verify`).
    #[serde(default = "default_chain")]
    pub chain: bool,
    /// Ed25519 private key (PEM PKCS#8) that signs checkpoints of the chain.
    #[serde(default)]
    pub signing_key: Option<SecretSource>,
    /// Records between two signed checkpoints (one is also written when the writer
    /// goes idle for a second, and when it closes).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// `sink: file`: rotate when the file reaches this many bytes (`path` → `path.1`
    /// → … → `path.<keep>`); the chain continues in the new file.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Rotated files kept.
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// What is refused while evidence cannot be written: `off`, `approvals` (calls
    /// that need a person's approval) or `all`.
    #[serde(default)]
    pub required: Required,
    /// `sink: http`: where batches of records are POSTed.
    #[serde(default)]
    pub http: Option<http_sink::HttpSinkConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Required {
    #[default]
    Off,
    Approvals,
    All,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        EvidenceConfig {
            sink: SinkKind::default(),
            path: None,
            chain: default_chain(),
            signing_key: None,
            checkpoint_every: default_checkpoint_every(),
            max_bytes: None,
            keep: default_keep(),
            required: Required::default(),
            http: None,
        }
    }
}

fn default_chain() -> bool {
    true
}
fn default_checkpoint_every() -> u64 {
    1000
}
fn default_keep() -> usize {
    5
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    #[default]
    Stdout,
    File,
    /// Batches POSTed to a collector (OPA's decision-log upload format).
    Http,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("signing_key: {0}")]
    Secret(String),
    #[error("signing_key: {0}")]
    Key(#[from] chain::KeyError),
    #[error("signing_key needs chain: true")]
    KeyWithoutChain,
}

impl EvidenceConfig {
    pub fn validate(&self) -> crate::validate::Checked {
        crate::validate::require(
            self.sink != SinkKind::File || self.path.is_some(),
            "path",
            "required when evidence.sink is file",
        )?;
        crate::validate::require(
            (self.sink == SinkKind::Http) == self.http.is_some(),
            "http",
            "give `http: {url}` exactly when evidence.sink is http",
        )?;
        if let Some(h) = &self.http {
            h.validate().map_err(|e| e.under("http"))?;
        }
        crate::validate::require(
            self.signing_key.is_none() || self.chain,
            "signing_key",
            "needs chain: true",
        )?;
        crate::validate::require(
            self.checkpoint_every > 0,
            "checkpoint_every",
            "must be at least 1",
        )?;
        crate::validate::require(
            self.max_bytes.is_none() || self.sink == SinkKind::File,
            "max_bytes",
            "rotation needs sink: file",
        )?;
        crate::validate::require(
            self.max_bytes.is_none_or(|m| m >= 4096),
            "max_bytes",
            "must be at least 4096",
        )
    }

    /// The checkpoint signer, if a key is configured (`base`: the config's directory).
    pub fn signer(&self, base: &Path) -> Result<Option<chain::Signer>, OpenError> {
        let Some(source) = &self.signing_key else {
            return Ok(None);
        };
        if !self.chain {
            return Err(OpenError::KeyWithoutChain);
        }
        let pem = source
            .read_raw(base)
            .map_err(|e| OpenError::Secret(e.to_string()))?;
        Ok(Some(chain::Signer::from_pem(pem.as_bytes())?))
    }

    /// Opens the sink (`path` already resolved against the config file's directory;
    /// `base` resolves the signing key's file).
    pub fn open(&self, base: &Path) -> Result<EvidenceSink, OpenError> {
        let chain = if self.chain {
            Some(chain::Chain::new(self.signer(base)?, self.checkpoint_every))
        } else {
            None
        };
        let out = match (self.sink, &self.path, &self.http) {
            (SinkKind::File, Some(path), _) => Output::file(path, self.max_bytes, self.keep)?,
            (SinkKind::Http, _, Some(http)) => Output::Http(http_sink::HttpSink::new(http.clone())),
            _ => Output::Stream(Box::new(std::io::stdout())),
        };
        Ok(EvidenceSink::spawn_output(out, QUEUE_CAPACITY, chain))
    }
}

/// Where the writer thread's bytes go.
enum Output {
    Stream(Box<dyn Write + Send>),
    /// Batches POSTed to a collector.
    Http(http_sink::HttpSink),
    /// A file it can rotate and reopen.
    File {
        path: std::path::PathBuf,
        file: std::fs::File,
        size: u64,
        max_bytes: Option<u64>,
        keep: usize,
    },
}

impl Output {
    fn file(path: &Path, max_bytes: Option<u64>, keep: usize) -> std::io::Result<Output> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(Output::File {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes,
            keep,
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stream(w) => w.write_all(bytes),
            Output::Http(h) => h.send(bytes),
            Output::File { file, size, .. } => {
                file.write_all(bytes)?;
                *size += bytes.len() as u64;
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Stream(w) => w.flush(),
            Output::Http(_) => Ok(()),
            Output::File { file, .. } => file.flush(),
        }
    }

    /// Whether `more` bytes would take a rotating file past its limit.
    fn rotation_due(&self, more: usize) -> bool {
        matches!(self, Output::File { size, max_bytes: Some(max), .. }
            if *size > 0 && *size + more as u64 > *max)
    }

    /// `path.<keep-1>` → `path.<keep>`, …, `path` → `path.1`, and a new `path`.
    fn rotate(&mut self) -> std::io::Result<()> {
        let Output::File {
            path,
            file,
            size,
            keep,
            ..
        } = self
        else {
            return Ok(());
        };
        file.flush()?;
        let numbered = |i: usize| {
            let mut p = path.as_os_str().to_owned();
            p.push(format!(".{i}"));
            std::path::PathBuf::from(p)
        };
        if *keep == 0 {
            std::fs::remove_file(&*path)?;
        } else {
            let _ = std::fs::remove_file(numbered(*keep));
            for i in (1..*keep).rev() {
                if numbered(i).exists() {
                    std::fs::rename(numbered(i), numbered(i + 1))?;
                }
            }
            std::fs::rename(&*path, numbered(1))?;
        }
        *file = open_append(path)?;
        *size = 0;
        Ok(())
    }

    /// Opens the path again (after an external rotation moved the file away).
    fn reopen(&mut self) -> std::io::Result<()> {
        if let Output::File {
            path, file, size, ..
        } = self
        {
            file.flush()?;
            *file = open_append(path)?;
            *size = file.metadata()?.len();
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Where evidence lines go. Cheap to clone.
#[derive(Clone)]
pub struct EvidenceSink {
    tx: mpsc::SyncSender<EvidenceRecord>,
    state: Arc<SinkState>,
}

/// What the writer thread and the request path share.
#[derive(Default)]
struct SinkState {
    /// False after a write failed, true again after one succeeds.
    failing: AtomicBool,
    /// Set by SIGHUP: reopen the file at its path.
    reopen: AtomicBool,
}

/// Records waiting for the writer, at most. A writer that cannot keep up (a blocked
/// disk, a stopped reader of stdout) must not grow the gateway's memory without bound:
/// past this, records are dropped, counted (`ciba_gate_evidence_dropped_total`) and logged.
pub const QUEUE_CAPACITY: usize = 16 * 1024;

/// How long the writer lingers after a batch before it blocks again. Senders that
/// find it lingering hand over records without a thread wake-up, which is what makes
/// one record per call cheap under load.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// After this long without a record, the writer signs a checkpoint over what it wrote
/// (so the tail of a quiet log is covered within a second).
const IDLE_CHECKPOINT: std::time::Duration = std::time::Duration::from_secs(1);

/// The writer thread's output: lines, sealed into the chain when there is one.
struct Writer {
    out: Output,
    /// Bytes of the lines written since the last flush.
    buf: Vec<u8>,
    /// Records in `buf`.
    buffered: u64,
    chain: Option<chain::Chain>,
    state: Arc<SinkState>,
}

/// Room for the chain member and a newline, when deciding whether a line still fits.
const CHAIN_OVERHEAD: usize = 160;

impl Writer {
    fn record(&mut self, r: &EvidenceRecord) {
        let Ok(mut line) = serde_json::to_vec(r) else {
            return;
        };
        if self
            .out
            .rotation_due(self.buf.len() + line.len() + CHAIN_OVERHEAD)
        {
            // The old file ends covered by a checkpoint; the chain goes on in the new one.
            self.checkpoint();
            self.flush();
            if let Err(e) = self.out.rotate() {
                self.failed(&e);
            }
        }
        if let Some(c) = self.chain.as_mut() {
            c.seal(&mut line);
        }
        self.line(&line);
        self.buffered += 1;
        if self
            .chain
            .as_ref()
            .is_some_and(chain::Chain::checkpoint_due)
        {
            self.checkpoint();
        }
    }

    fn checkpoint(&mut self) {
        if let Some(line) = self
            .chain
            .as_mut()
            .and_then(|c| c.checkpoint(&now_rfc3339()))
        {
            self.line(&line);
        }
    }

    fn line(&mut self, line: &[u8]) {
        self.buf.extend_from_slice(line);
        self.buf.push(b'\n');
    }

    /// Writes what is buffered; a failure is counted, logged and marks the sink as
    /// failing (`evidence.required` refuses calls while it is).
    fn flush(&mut self) {
        if self.state.reopen.swap(false, Ordering::Relaxed) {
            if let Err(e) = self.out.reopen() {
                self.failed(&e);
            } else {
                tracing::info!("evidence file reopened");
            }
        }
        if self.buf.is_empty() {
            return;
        }
        let result = self
            .out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush());
        self.buf.clear();
        let records = std::mem::take(&mut self.buffered);
        match result {
            Ok(()) => {
                crate::telemetry::metrics::evidence_written(records);
                if self.state.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("evidence is being written again");
                }
            }
            Err(e) => {
                crate::telemetry::metrics::evidence_lost(records);
                self.failed(&e);
            }
        }
    }

    fn failed(&mut self, e: &std::io::Error) {
        if !self.state.failing.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %e, "evidence cannot be written; records are being lost");
        }
    }
}

impl EvidenceSink {
    pub fn stdout() -> Self {
        Self::spawn(Box::new(std::io::stdout()))
    }

    /// An unchained file sink (tests and tools; the configured sink is `EvidenceConfig::open`).
    pub fn file(path: &Path) -> std::io::Result<Self> {
        Ok(Self::spawn_output(
            Output::file(path, None, 0)?,
            QUEUE_CAPACITY,
            None,
        ))
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
        (
            EvidenceSink {
                tx,
                state: Arc::default(),
            },
            lines,
        )
    }

    fn spawn(out: Box<dyn Write + Send>) -> Self {
        Self::spawn_with_capacity(out, QUEUE_CAPACITY)
    }

    /// A sink writing to `out` through a queue of `capacity` records.
    pub fn spawn_with_capacity(out: Box<dyn Write + Send>, capacity: usize) -> Self {
        Self::spawn_output(Output::Stream(out), capacity, None)
    }

    /// Like `spawn_with_capacity`, sealing every line into `chain` when given.
    pub fn spawn_chained(
        out: Box<dyn Write + Send>,
        capacity: usize,
        chain: Option<chain::Chain>,
    ) -> Self {
        Self::spawn_output(Output::Stream(out), capacity, chain)
    }

    fn spawn_output(out: Output, capacity: usize, chain: Option<chain::Chain>) -> Self {
        let (tx, rx) = mpsc::sync_channel::<EvidenceRecord>(capacity);
        let state = Arc::new(SinkState::default());
        let shared = state.clone();
        std::thread::Builder::new()
            .name("evidence-writer".into())
            .spawn(move || {
                let mut w = Writer {
                    out,
                    buf: Vec::new(),
                    buffered: 0,
                    chain,
                    state: shared,
                };
                loop {
                    // Block for the first record, then drain and linger while records
                    // keep coming; a quiet second gets a checkpoint.
                    match rx.recv_timeout(IDLE_CHECKPOINT) {
                        Ok(first) => w.record(&first),
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            w.checkpoint();
                            w.flush();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                    loop {
                        let mut any = false;
                        while let Ok(more) = rx.try_recv() {
                            w.record(&more);
                            any = true;
                        }
                        w.flush();
                        if !any {
                            break;
                        }
                        std::thread::sleep(LINGER);
                    }
                }
                w.checkpoint();
                w.flush();
            })
            .expect("spawning the evidence writer thread");
        EvidenceSink { tx, state }
    }

    /// True while the last write failed (`evidence.required` refuses calls then).
    pub fn failing(&self) -> bool {
        self.state.failing.load(Ordering::Relaxed)
    }

    /// Reopens the file at its path before the next write (SIGHUP, after an external
    /// rotation moved it away).
    pub fn request_reopen(&self) {
        self.state.reopen.store(true, Ordering::Relaxed);
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
