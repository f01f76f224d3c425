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

mod process;
mod wire;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use serde_json::{Value, json};
use tokio::process::Command;
use tokio::sync::{Notify, mpsc, watch};

use super::super::upstream::UpstreamError;
use crate::clock::Instant;
use process::{Process, Waiting, backoff, unreachable};
use wire::{log_stderr, read_messages, write_lines};

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

/// Progress notifications held for one agent's answer stream; more are dropped.
const PROGRESS_QUEUE: usize = 32;

type Answer = Pin<Box<dyn Future<Output = Result<Value, UpstreamError>> + Send>>;

/// The upstream metric for one request.
fn measured(name: &str, result: &Result<Value, UpstreamError>, started: Instant) {
    let status = match result {
        Ok(_) => Ok(200),
        Err(UpstreamError::Timeout(_)) => Err("timeout"),
        Err(_) => Err("error"),
    };
    crate::telemetry::metrics::upstream(name, status, started.elapsed());
}

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
    /// (`scope`: the agent's session, for routing its cancellation). Progress the
    /// request asks for is not relayed (`ask_streamed` relays it).
    pub async fn ask(&self, message: Value, scope: &str) -> Result<Value, UpstreamError> {
        let started = crate::clock::now();
        let process = self.running().await?;
        let own = self.next_id.fetch_add(1, Ordering::Relaxed);
        let timeout = self.launch.response_timeout;
        let result = process.ask(own, message, scope, timeout, None).await;
        measured(&self.name, &result, started);
        result
    }

    /// Sends an agent's request that asks for progress: the server's
    /// `notifications/progress` for it, under the agent's token, then its answer (or
    /// why there is none), as one stream that owns the call. Dropping the stream (the
    /// agent went away) cancels the request at the server.
    pub async fn ask_streamed(
        &self,
        message: Value,
        scope: &str,
    ) -> Result<impl Stream<Item = Result<Value, UpstreamError>> + Send + 'static, UpstreamError>
    {
        let started = crate::clock::now();
        let process = self.running().await?;
        let own = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (to, progress) = mpsc::channel(PROGRESS_QUEUE);
        let (name, scope) = (self.name.clone(), scope.to_string());
        let timeout = self.launch.response_timeout;
        let answer: Answer = Box::pin(async move {
            let result = process.ask(own, message, &scope, timeout, Some(to)).await;
            measured(&name, &result, started);
            result
        });
        // Progress first (the server wrote it before its answer), then the answer.
        Ok(futures_util::stream::unfold(
            Some((answer, progress)),
            |state| async move {
                let (mut answer, mut progress) = state?;
                tokio::select! {
                    biased;
                    Some(p) = progress.recv() => Some((Ok(p), Some((answer, progress)))),
                    result = &mut answer => Some((result, None)),
                }
            },
        ))
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
            let answer = process
                .ask(0, initialize, "", self.launch.response_timeout, None)
                .await?;
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

#[cfg(test)]
mod tests;
