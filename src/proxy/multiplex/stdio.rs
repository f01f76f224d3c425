//! A tool server the gateway starts itself and speaks MCP to over the process's stdin
//! and stdout (the MCP stdio transport: one JSON-RPC message per line, stderr free
//! for logging). One process serves every agent: the gateway opens the process's one
//! MCP session, gives every request it sends an id of its own (two agents' `"id": 1`
//! cannot meet), answers the server's pings and logs its stderr.
//!
//! A process that exits fails the calls waiting on it (`upstream_unreachable`) and is
//! started again by the next call, after a backoff that doubles while it keeps failing.
//! The waiting calls are bounded (`max_pending`, then `upstream_busy`). Shutdown closes
//! the server's stdin, then sends SIGTERM, then SIGKILL, as MCP asks of a client.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::{ChildStdin, Command};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder, FramedRead};

use super::super::upstream::UpstreamError;
use crate::clock::Instant;

/// The revision the gateway opens a stdio server's session with.
const REVISION: &str = super::serve::LATEST_WITH_SESSIONS;
/// The first restart waits this long; each further failure doubles it, up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// A call waits out a backoff shorter than this; a longer one fails the call at once.
const WAIT_OUT: Duration = Duration::from_secs(2);
/// A process that ran this long before it exited counts as healthy: backoff starts over.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// How long the server has to exit after its stdin closes, and again after SIGTERM.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Longest stderr line logged; the rest of a longer line is dropped.
const STDERR_LINE: usize = 8 * 1024;
/// Variables a program commonly needs to start, passed on when the gateway has them.
const BASE_ENV: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// How to start the server and what it may hold the gateway to.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The program and its arguments (no shell).
    pub command: Vec<String>,
    /// The server's whole environment: `BASE_ENV`, `pass_env`, then `env`.
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<PathBuf>,
    /// Requests waiting on the server at once.
    pub max_pending: usize,
    pub response_timeout: Duration,
    /// Longest message read from the server's stdout.
    pub max_message: usize,
}

impl Launch {
    /// The launch of an upstream entry with a `command`; relative paths (the working
    /// directory) are relative to `base`.
    pub fn from_config(
        cfg: &crate::proxy::config::UpstreamConfig,
        base: &std::path::Path,
        max_message: usize,
    ) -> Launch {
        let names = BASE_ENV
            .iter()
            .map(|k| k.to_string())
            .chain(cfg.pass_env.iter().cloned());
        let mut env: BTreeMap<String, String> = names
            .filter_map(|k| std::env::var(&k).ok().map(|v| (k, v)))
            .collect();
        env.extend(cfg.env.clone());
        Launch {
            command: cfg.command.clone(),
            env,
            working_dir: cfg.working_dir.as_ref().map(|d| base.join(d)),
            max_pending: cfg.max_pending,
            response_timeout: cfg.response_timeout,
            max_message,
        }
    }
}

/// One stdio server and the process that serves it, when one does.
pub struct StdioServer {
    pub name: String,
    launch: Launch,
    /// Where its list changes go (every agent session's event stream).
    changes: super::changes::Changes,
    state: tokio::sync::Mutex<State>,
    /// The ids the gateway gives the requests it sends (0 is the `initialize`).
    next_id: AtomicU64,
}

enum State {
    Stopped {
        /// Starts that failed in a row (the process did not start, or exited soon).
        failures: u32,
        retry_at: Option<Instant>,
        why: Option<String>,
    },
    Running(Arc<Process>),
    ShutDown,
}

/// A running server process.
struct Process {
    /// Lines to the server's stdin; taken (so stdin closes) on shutdown.
    outbox: Mutex<Option<mpsc::Sender<Bytes>>>,
    waiting: Arc<Waiting>,
    /// The revision the server agreed to.
    revision: String,
    started: Instant,
    failures: u32,
    /// Set to how it ended once the process has exited.
    exited: watch::Receiver<Option<String>>,
    /// Ends the process (SIGKILL) when it will not go.
    kill: Arc<Notify>,
    pid: Option<u32>,
    max_pending: usize,
}

/// The requests sent and not yet answered, by the gateway's id.
#[derive(Default)]
struct Waiting {
    calls: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    calls: HashMap<u64, Call>,
    /// The server's stdout ended: nothing more will be answered.
    closed: bool,
}

struct Call {
    reply: oneshot::Sender<Value>,
    /// The agent's session (empty: none) and the agent's own id: what its
    /// `notifications/cancelled` names.
    scope: String,
    agent_id: Value,
}

impl Waiting {
    fn add(&self, own: u64, call: Call, max: usize) -> Result<(), UpstreamError> {
        let mut p = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        if p.closed {
            return Err(UpstreamError::Connect(
                "the server process has stopped answering".into(),
            ));
        }
        if p.calls.len() >= max {
            return Err(UpstreamError::Busy(max));
        }
        p.calls.insert(own, call);
        Ok(())
    }

    fn take(&self, own: u64) -> Option<Call> {
        let mut p = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        p.calls.remove(&own)
    }

    /// The gateway's id of the agent's request `agent_id` in `scope`.
    fn find(&self, scope: &str, agent_id: &Value) -> Option<u64> {
        let p = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        p.calls
            .iter()
            .find(|(_, c)| c.scope == scope && &c.agent_id == agent_id)
            .map(|(own, _)| *own)
    }

    fn is_closed(&self) -> bool {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).closed
    }

    /// Fails everything waiting (their senders drop) and refuses what comes later.
    fn close(&self) {
        let mut p = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        p.closed = true;
        p.calls.clear();
    }
}

/// Forgets a request that ends unanswered (timed out, or the agent went away) and
/// tells the server it is cancelled.
struct Unanswered<'a> {
    process: &'a Process,
    own: u64,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.answered && self.process.waiting.take(self.own).is_some() {
            let _ = self
                .process
                .send(&cancelled(self.own, "the gateway stopped waiting"));
        }
    }
}

fn cancelled(own: u64, reason: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": own, "reason": reason},
    })
}

fn unreachable(why: impl Into<String>) -> UpstreamError {
    UpstreamError::Connect(why.into())
}

/// How long to wait before the next start after `failures` failures in a row.
fn backoff(failures: u32) -> Duration {
    let doubled = FIRST_RETRY.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(MAX_RETRY)
}

impl Process {
    /// Queues one message for the server's stdin. Serialised compactly, so a newline
    /// inside a string is escaped and one message is always one line.
    fn send(&self, message: &Value) -> Result<(), UpstreamError> {
        let mut line = serde_json::to_vec(message).map_err(|e| {
            UpstreamError::Protocol(format!("the message could not be written: {e}"))
        })?;
        line.push(b'\n');
        let outbox = self
            .outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| unreachable("the server process is shutting down"))?;
        outbox.try_send(Bytes::from(line)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => UpstreamError::Busy(self.max_pending),
            mpsc::error::TrySendError::Closed(_) => {
                unreachable("the server process no longer reads its input")
            }
        })
    }

    /// Sends a request and waits for its answer, under the gateway's own id; the answer
    /// carries the agent's id again.
    async fn ask(
        &self,
        own: u64,
        mut message: Value,
        scope: &str,
        launch: &Launch,
    ) -> Result<Value, UpstreamError> {
        let agent_id = std::mem::replace(&mut message["id"], json!(own));
        let (reply, answer) = oneshot::channel();
        let call = Call {
            reply,
            scope: scope.to_string(),
            agent_id: agent_id.clone(),
        };
        self.waiting.add(own, call, launch.max_pending)?;
        let mut pending = Unanswered {
            process: self,
            own,
            answered: false,
        };
        self.send(&message)?;
        let answer = tokio::time::timeout(launch.response_timeout, answer)
            .await
            .map_err(|_| UpstreamError::Timeout(launch.response_timeout))?;
        pending.answered = true;
        let mut answer = answer.map_err(|_| unreachable(self.exit_reason()))?;
        answer["id"] = agent_id;
        Ok(answer)
    }

    fn exit_reason(&self) -> String {
        match self.exited.borrow().as_deref() {
            Some(how) => format!("the server process {how}"),
            None => "the server process stopped answering".into(),
        }
    }

    fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    /// Closes stdin; then SIGTERM; then SIGKILL, each after `EXIT_GRACE`.
    async fn stop(&self) {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut exited = self.exited.clone();
        let gone = |rx: &mut watch::Receiver<Option<String>>| {
            let mut rx = rx.clone();
            async move {
                tokio::time::timeout(EXIT_GRACE, rx.wait_for(Option::is_some))
                    .await
                    .is_ok()
            }
        };
        if gone(&mut exited).await {
            return;
        }
        if let Some(pid) = self
            .pid
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            if gone(&mut exited).await {
                return;
            }
        }
        self.kill.notify_one();
        let _ = exited.wait_for(Option::is_some).await;
    }
}

impl StdioServer {
    pub fn new(name: String, launch: Launch, changes: super::changes::Changes) -> StdioServer {
        StdioServer {
            name,
            launch,
            changes,
            state: tokio::sync::Mutex::new(State::Stopped {
                failures: 0,
                retry_at: None,
                why: None,
            }),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn response_timeout(&self) -> Duration {
        self.launch.response_timeout
    }

    /// The revision the running server agreed to (starting it if need be).
    pub async fn revision(&self) -> Result<String, UpstreamError> {
        Ok(self.running().await?.revision.clone())
    }

    /// Sends a request of the gateway's or an agent's and returns the server's answer
    /// (`scope`: the agent's session, for routing its cancellation).
    pub async fn ask(&self, message: Value, scope: &str) -> Result<Value, UpstreamError> {
        let started = crate::clock::now();
        let process = self.running().await?;
        let own = self.next_id.fetch_add(1, Ordering::Relaxed);
        let result = process.ask(own, message, scope, &self.launch).await;
        let status = match &result {
            Ok(_) => Ok(200),
            Err(UpstreamError::Timeout(_)) => Err("timeout"),
            Err(_) => Err("error"),
        };
        crate::telemetry::metrics::upstream(&self.name, status, started.elapsed());
        result
    }

    /// Sends a notification. An agent's `notifications/cancelled` is passed on under
    /// the gateway's id of the request it names (one the server never got ends here).
    pub async fn tell(&self, mut message: Value, scope: &str) -> Result<(), UpstreamError> {
        let process = self.running().await?;
        if message.get("method").and_then(Value::as_str) == Some("notifications/cancelled") {
            let Some(own) = message
                .pointer("/params/requestId")
                .and_then(|id| process.waiting.find(scope, id))
            else {
                return Ok(());
            };
            message["params"]["requestId"] = json!(own);
        }
        process.send(&message)
    }

    /// The running process, started (with its session opened) when there is none. A
    /// short backoff is waited out; a longer one fails the call with why it stopped.
    async fn running(&self) -> Result<Arc<Process>, UpstreamError> {
        let mut state = self.state.lock().await;
        loop {
            let (failures, retry_at, why) = match &*state {
                State::ShutDown => return Err(unreachable("the gateway is shutting down")),
                State::Running(p) if !p.has_exited() && !p.waiting.is_closed() => {
                    return Ok(p.clone());
                }
                State::Running(p) => {
                    // Its output ended: whether or not it has exited yet, it is done.
                    p.kill.notify_one();
                    let failures = if p.started.elapsed() >= HEALTHY_RUN {
                        1
                    } else {
                        p.failures + 1
                    };
                    *state = State::Stopped {
                        failures,
                        retry_at: Some(crate::clock::now() + backoff(failures)),
                        why: Some(p.exit_reason()),
                    };
                    continue;
                }
                State::Stopped {
                    failures,
                    retry_at,
                    why,
                } => (*failures, *retry_at, why.clone()),
            };
            if let Some(at) = retry_at {
                let wait = at.saturating_duration_since(crate::clock::now());
                if wait > WAIT_OUT {
                    return Err(unreachable(format!(
                        "{}; it is started again in {} s",
                        why.unwrap_or_else(|| "the server process stopped".into()),
                        wait.as_secs().max(1)
                    )));
                }
                tokio::time::sleep(wait).await;
            }
            match self.start(failures).await {
                Ok(p) => {
                    tracing::info!(server = %self.name, revision = %p.revision, "stdio server started");
                    *state = State::Running(Arc::new(p));
                }
                Err(e) => {
                    tracing::warn!(server = %self.name, error = %e, "stdio server could not be started");
                    *state = State::Stopped {
                        failures: failures + 1,
                        retry_at: Some(crate::clock::now() + backoff(failures + 1)),
                        why: Some(e.to_string()),
                    };
                    return Err(e);
                }
            }
        }
    }

    /// Starts the process and opens its session (`initialize`, then
    /// `notifications/initialized`).
    async fn start(&self, failures: u32) -> Result<Process, UpstreamError> {
        let (program, args) = self
            .launch
            .command
            .split_first()
            .ok_or_else(|| unreachable("no command is configured"))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(&self.launch.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &self.launch.working_dir {
            command.current_dir(dir);
        }
        let mut child = command
            .spawn()
            .map_err(|e| unreachable(format!("could not start {program:?}: {e}")))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(unreachable("the server process has no stdin/stdout"));
        };
        let pid = child.id();
        let (outbox, lines) = mpsc::channel(self.launch.max_pending + 16);
        let waiting = Arc::new(Waiting::default());
        let (exit_tx, exited) = watch::channel(None);
        let kill = Arc::new(Notify::new());
        tokio::spawn(write_lines(stdin, lines));
        tokio::spawn(read_messages(
            self.name.clone(),
            self.changes.clone(),
            stdout,
            waiting.clone(),
            outbox.downgrade(),
            self.launch.max_message,
            kill.clone(),
        ));
        tokio::spawn(log_stderr(self.name.clone(), stderr));
        let name = self.name.clone();
        let killer = kill.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                _ = killer.notified() => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let how = match status {
                Ok(s) => format!("exited ({s})"),
                Err(e) => format!("could not be watched: {e}"),
            };
            tracing::warn!(server = %name, how = %how, "stdio server stopped");
            crate::telemetry::metrics::stdio_exit(&name);
            let _ = exit_tx.send(Some(how));
        });
        let mut process = Process {
            outbox: Mutex::new(Some(outbox)),
            waiting,
            revision: String::new(),
            started: crate::clock::now(),
            failures,
            exited,
            kill,
            pid,
            max_pending: self.launch.max_pending,
        };
        let initialize = json!({
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": REVISION,
                // None declared: the server then sends no requests (sampling,
                // elicitation, roots) the gateway would have to route back.
                "capabilities": {},
                "clientInfo": {"name": "ciba-gate", "version": env!("CARGO_PKG_VERSION")},
            },
        });
        let opened = async {
            let answer = process.ask(0, initialize, "", &self.launch).await?;
            let result = answer.get("result").ok_or_else(|| {
                UpstreamError::Protocol(format!(
                    "the server refused to initialize: {}",
                    answer.get("error").cloned().unwrap_or(Value::Null)
                ))
            })?;
            let revision = result
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or(REVISION)
                .to_string();
            process.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))?;
            Ok::<_, UpstreamError>(revision)
        };
        match opened.await {
            Ok(revision) => {
                process.revision = revision;
                Ok(process)
            }
            Err(e) => {
                process.stop().await;
                Err(e)
            }
        }
    }

    /// Stops the process, if one runs, and refuses calls from now on.
    pub async fn shutdown(&self) {
        let mut state = self.state.lock().await;
        if let State::Running(p) = std::mem::replace(&mut *state, State::ShutDown) {
            tracing::info!(server = %self.name, "stopping stdio server");
            p.stop().await;
        }
    }
}

/// One line of the server's output, or the news that one was too long (and dropped).
enum Line {
    Whole(Bytes),
    TooLong,
}

/// Newline-delimited lines of at most a limit. A line over it is dropped up to its
/// newline and reading goes on (a codec's error would end the stream).
struct Lines(AnyDelimiterCodec);

impl Lines {
    fn new(limit: usize) -> Lines {
        Lines(AnyDelimiterCodec::new_with_max_length(
            b"\n".to_vec(),
            Vec::new(),
            limit,
        ))
    }

    fn line(r: Result<Option<Bytes>, AnyDelimiterCodecError>) -> std::io::Result<Option<Line>> {
        match r {
            Ok(line) => Ok(line.map(Line::Whole)),
            Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => Ok(Some(Line::TooLong)),
            Err(AnyDelimiterCodecError::Io(e)) => Err(e),
        }
    }
}

impl Decoder for Lines {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut bytes::BytesMut) -> std::io::Result<Option<Line>> {
        Lines::line(self.0.decode(buf))
    }

    fn decode_eof(&mut self, buf: &mut bytes::BytesMut) -> std::io::Result<Option<Line>> {
        Lines::line(self.0.decode_eof(buf))
    }
}

/// Writes queued lines to the server's stdin; when the queue closes (shutdown) or a
/// write fails, stdin is dropped, which closes it.
async fn write_lines(mut stdin: ChildStdin, mut lines: mpsc::Receiver<Bytes>) {
    while let Some(line) = lines.recv().await {
        if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
            break;
        }
    }
}

/// Reads the server's messages from stdout until it ends: answers go to the calls
/// waiting on them; the server's `ping` is answered; other requests are refused
/// (the gateway declared no client capabilities); list changes go to the agents'
/// event streams, other notifications to the debug log.
async fn read_messages(
    name: String,
    changes: super::changes::Changes,
    stdout: tokio::process::ChildStdout,
    waiting: Arc<Waiting>,
    outbox: mpsc::WeakSender<Bytes>,
    max_message: usize,
    kill: Arc<Notify>,
) {
    let mut lines = FramedRead::new(stdout, Lines::new(max_message));
    while let Some(line) = lines.next().await {
        let line = match line {
            Ok(Line::Whole(line)) => line,
            Ok(Line::TooLong) => {
                crate::telemetry::metrics::limit_exceeded("upstream_answer");
                tracing::warn!(server = %name, limit = max_message, "a message from the stdio server is longer than the gateway reads; dropped");
                continue;
            }
            Err(e) => {
                tracing::warn!(server = %name, error = %e, "reading the stdio server's output failed");
                break;
            }
        };
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(message) = serde_json::from_slice::<Value>(line) else {
            tracing::warn!(server = %name, bytes = line.len(), "a line on the stdio server's stdout is not JSON; ignored");
            continue;
        };
        let method = message.get("method").and_then(Value::as_str);
        match (method, message.get("id")) {
            (None, Some(id)) => match id.as_u64().and_then(|own| waiting.take(own)) {
                Some(call) => {
                    let _ = call.reply.send(message);
                }
                None => {
                    tracing::debug!(server = %name, "an answer to no waiting request; ignored")
                }
            },
            (Some(method), Some(id)) => {
                let answer = if method == "ping" {
                    json!({"jsonrpc": "2.0", "id": id, "result": {}})
                } else {
                    json!({"jsonrpc": "2.0", "id": id, "error": {
                        "code": crate::outcome::jsonrpc::METHOD_NOT_FOUND,
                        "message": format!("{method} is not offered: the gateway declared no client capabilities"),
                    }})
                };
                if let Some(out) = outbox.upgrade() {
                    let mut line = serde_json::to_vec(&answer).unwrap_or_default();
                    line.push(b'\n');
                    let _ = out.try_send(Bytes::from(line));
                }
            }
            (Some(method), None) => match super::changes::kind_of(method) {
                Some(kind) => changes.publish(kind),
                None => {
                    tracing::debug!(server = %name, method, "notification from the stdio server")
                }
            },
            (None, None) => {
                tracing::warn!(server = %name, "a message from the stdio server is not JSON-RPC; ignored")
            }
        }
    }
    // Nothing more will be answered: fail the waiting calls now, and end a process
    // that still runs but no longer speaks MCP, once a closing server would have
    // exited by itself (it is started again on the next call).
    waiting.close();
    tokio::time::sleep(EXIT_GRACE).await;
    kill.notify_one();
}

/// Logs the server's stderr, line by line, at info.
async fn log_stderr(name: String, stderr: tokio::process::ChildStderr) {
    let mut lines = FramedRead::new(stderr, Lines::new(STDERR_LINE));
    while let Some(line) = lines.next().await {
        match line {
            Ok(Line::Whole(line)) => {
                let text = String::from_utf8_lossy(&line);
                tracing::info!(server = %name, stderr = %text.trim_end(), "stdio server");
            }
            Ok(Line::TooLong) => continue,
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stdio MCP server in Python: `echo` answers in pairs, the second request first
    /// (with the id and params it received); `exit` exits; `noise` writes a line that
    /// is not JSON and one too long before its answer; `ask_me` pings the gateway
    /// first and returns the reply; a cancellation of a waiting `echo` answers it with
    /// the id the cancellation named; every method it gets goes to stderr.
    const PEER: &str = r#"
import json, sys
pairs = []
def say(m):
    print(json.dumps(m), flush=True)
for line in sys.stdin:
    m = json.loads(line)
    method = m.get("method")
    sys.stderr.write("got %s %s\n" % (method, json.dumps(m.get("params", {}).get("requestId"))))
    sys.stderr.flush()
    if method == "initialize":
        say({"jsonrpc": "2.0", "id": m["id"], "result": {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": {"name": "peer", "version": "1"}}})
    elif method == "echo":
        pairs.append(m)
        if len(pairs) == 2:
            for p in reversed(pairs):
                say({"jsonrpc": "2.0", "id": p["id"], "result": {"params": p["params"], "seen": p["id"]}})
            pairs = []
    elif method == "notifications/cancelled":
        gone = m["params"]["requestId"]
        for p in [p for p in pairs if p["id"] == gone]:
            say({"jsonrpc": "2.0", "id": p["id"], "result": {"cancelled": gone}})
        pairs = [p for p in pairs if p["id"] != gone]
    elif method == "exit":
        sys.exit(3)
    elif method == "noise":
        print("this is not JSON", flush=True)
        print("x" * 5000, flush=True)
        say({"jsonrpc": "2.0", "id": m["id"], "result": {"after": "noise"}})
    elif method == "ask_me":
        say({"jsonrpc": "2.0", "id": "s1", "method": "ping"})
        reply = json.loads(sys.stdin.readline())
        say({"jsonrpc": "2.0", "id": m["id"], "result": {"reply": reply}})
"#;

    fn peer(max_pending: usize, response_timeout: Duration) -> StdioServer {
        let launch = Launch {
            command: vec!["python3".into(), "-c".into(), PEER.into()],
            env: [(
                "PATH".to_string(),
                std::env::var("PATH").unwrap_or_default(),
            )]
            .into(),
            working_dir: None,
            max_pending,
            response_timeout,
            max_message: 1000,
        };
        StdioServer::new("peer".into(), launch, Default::default())
    }

    fn request(id: Value, method: &str, params: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
    }

    #[test]
    fn backoff_doubles_from_a_quarter_second_to_thirty_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(4), Duration::from_secs(2));
        assert_eq!(backoff(9), MAX_RETRY);
        assert_eq!(backoff(u32::MAX), MAX_RETRY);
    }

    #[tokio::test]
    async fn two_agents_with_the_same_id_each_get_their_own_answer_with_their_id() {
        let server = peer(8, Duration::from_secs(10));
        // A newline inside a string cannot start a second message on the server's stdin.
        let smuggle = "x\"}\n{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"exit\"}\n";
        let (a, b) = tokio::join!(
            server.ask(request(json!(1), "echo", json!({"from": "a"})), "session-a"),
            server.ask(
                request(json!(1), "echo", json!({"from": smuggle})),
                "session-b"
            ),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a["id"], 1);
        assert_eq!(b["id"], 1);
        assert_eq!(a["result"]["params"]["from"], "a");
        assert_eq!(b["result"]["params"]["from"], smuggle);
        assert_ne!(
            a["result"]["seen"], b["result"]["seen"],
            "the server saw two ids"
        );
        assert_eq!(server.revision().await.unwrap(), "2025-06-18");
        server.shutdown().await;
    }

    #[tokio::test]
    async fn an_agents_cancellation_names_the_gateways_id_for_its_request() {
        let server = peer(8, Duration::from_secs(10));
        let waiting = server.ask(request(json!("call-7"), "echo", json!({})), "session-a");
        let cancel = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let note = |scope: &'static str| {
                server.tell(
                    json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                           "params": {"requestId": "call-7"}}),
                    scope,
                )
            };
            // Another session's request of the same id is not this one: nothing is sent.
            note("session-b").await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            note("session-a").await.unwrap();
        };
        let (answer, ()) = tokio::join!(waiting, cancel);
        let answer = answer.unwrap();
        assert_eq!(answer["id"], "call-7");
        let own = &answer["result"]["cancelled"];
        assert!(own.is_u64(), "the server got the gateway's id: {answer}");
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_process_that_exits_fails_its_call_and_is_started_again_for_the_next() {
        let server = peer(8, Duration::from_secs(10));
        let err = server
            .ask(request(json!("x"), "exit", json!({})), "")
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Connect(_)), "{err}");
        // Started again after the first backoff (a quarter second, waited out).
        let (a, b) = tokio::join!(
            server.ask(request(json!(2), "echo", json!({"n": 1})), ""),
            server.ask(request(json!(3), "echo", json!({"n": 2})), ""),
        );
        assert_eq!(a.unwrap()["result"]["params"]["n"], 1);
        assert_eq!(b.unwrap()["result"]["params"]["n"], 2);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn lines_that_are_not_messages_are_skipped_and_the_servers_ping_is_answered() {
        let server = peer(8, Duration::from_secs(10));
        let answer = server
            .ask(request(json!(1), "noise", json!({})), "")
            .await
            .unwrap();
        assert_eq!(answer["result"]["after"], "noise");
        let answer = server
            .ask(request(json!(2), "ask_me", json!({})), "")
            .await
            .unwrap();
        assert_eq!(
            answer["result"]["reply"],
            json!({"jsonrpc": "2.0", "id": "s1", "result": {}})
        );
        server.shutdown().await;
    }

    #[tokio::test]
    async fn waiting_calls_are_bounded_and_an_unanswered_one_times_out() {
        let server = peer(1, Duration::from_millis(500));
        // `echo` waits for a pair: alone it is never answered.
        let first = server.ask(request(json!(1), "echo", json!({})), "");
        let second = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            server.ask(request(json!(2), "echo", json!({})), "").await
        };
        let (first, second) = tokio::join!(first, second);
        assert!(matches!(first, Err(UpstreamError::Timeout(_))), "{first:?}");
        assert!(matches!(second, Err(UpstreamError::Busy(1))), "{second:?}");
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_program_that_cannot_start_is_unreachable_and_tried_again_after_a_backoff() {
        let mut server = peer(8, Duration::from_secs(10));
        server.launch.command = vec!["/nonexistent/stdio-server".into()];
        for _ in 0..2 {
            let err = server
                .ask(request(json!(1), "echo", json!({})), "")
                .await
                .unwrap_err();
            assert!(
                matches!(&err, UpstreamError::Connect(why) if why.contains("could not start")),
                "{err}"
            );
        }
        let State::Stopped { failures, .. } = &*server.state.lock().await else {
            panic!("not stopped");
        };
        assert_eq!(
            *failures, 2,
            "the second call waited out the first backoff and tried again"
        );
    }

    #[tokio::test]
    async fn after_shutdown_no_call_starts_the_server_again() {
        let server = peer(8, Duration::from_secs(10));
        server.revision().await.unwrap();
        server.shutdown().await;
        let err = server
            .ask(request(json!(1), "echo", json!({})), "")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("shutting down"), "{err}");
    }
}
