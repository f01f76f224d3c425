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
mod collector;
mod config;
pub mod http_sink;
pub mod otlp_sink;
mod record;

pub use config::{EvidenceConfig, OpenError, Required, SinkKind};
use record::warn_dropped;
pub use record::{EvidenceRecord, PendingRecord, ShadowEvidence, now_rfc3339};

/// Where the writer thread's bytes go.
enum Output {
    Stream(Box<dyn Write + Send>),
    /// Batches POSTed to a collector.
    Http(http_sink::HttpSink),
    /// Batches exported to an OpenTelemetry collector as logs.
    Otlp(otlp_sink::OtlpSink),
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
            Output::Otlp(o) => o.send(bytes),
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
            Output::Http(_) | Output::Otlp(_) => Ok(()),
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
    tx: mpsc::SyncSender<Queued>,
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

/// A record on its way to the writer, boxed: the queue allocates all its slots up
/// front, and 16 Ki slots of a whole record were 15 MB of the idle gateway's memory
/// (a box's pointer is 8 bytes).
type Queued = Box<EvidenceRecord>;

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
        let (tx, rx) = mpsc::sync_channel::<Queued>(QUEUE_CAPACITY);
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
        let (tx, rx) = mpsc::sync_channel::<Queued>(capacity);
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
        match self.tx.try_send(Box::new(record)) {
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
