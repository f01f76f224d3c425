//! A running server process: the requests waiting on it, by the gateway's own id, and
//! how it is written to and stopped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::{EXIT_GRACE, FIRST_RETRY, MAX_RETRY};
use crate::clock::Instant;
use crate::proxy::upstream::UpstreamError;

/// A running server process.
pub(super) struct Process {
    /// Lines to the server's stdin; taken (so stdin closes) on shutdown.
    pub(super) outbox: Mutex<Option<mpsc::Sender<Bytes>>>,
    pub(super) waiting: Arc<Waiting>,
    /// The revision the server agreed to.
    pub(super) revision: String,
    pub(super) started: Instant,
    pub(super) failures: u32,
    /// Set to how it ended once the process has exited.
    pub(super) exited: watch::Receiver<Option<String>>,
    /// Ends the process (SIGKILL) when it will not go.
    pub(super) kill: Arc<Notify>,
    pub(super) pid: Option<u32>,
    pub(super) max_pending: usize,
}

/// The requests sent and not yet answered, by the gateway's id.
#[derive(Default)]
pub(super) struct Waiting {
    pub(super) calls: Mutex<Pending>,
}

#[derive(Default)]
pub(super) struct Pending {
    pub(super) calls: HashMap<u64, Call>,
    /// The server's stdout ended: nothing more will be answered.
    pub(super) closed: bool,
}

pub(super) struct Call {
    pub(super) reply: oneshot::Sender<Value>,
    /// The agent's session (empty: none) and the agent's own id: what its
    /// `notifications/cancelled` names.
    pub(super) scope: String,
    pub(super) agent_id: Value,
    /// Where the server's progress for it goes, when the agent asked for progress.
    pub(super) progress: Option<Progress>,
}

/// The agent's progress token, and the agent's answer stream it is relayed to.
pub(super) struct Progress {
    pub(super) token: Value,
    pub(super) to: mpsc::Sender<Value>,
}

impl Waiting {
    pub(super) fn add(&self, own: u64, call: Call, max: usize) -> Result<(), UpstreamError> {
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

    pub(super) fn take(&self, own: u64) -> Option<Call> {
        let mut p = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        p.calls.remove(&own)
    }

    /// The gateway's id of the agent's request `agent_id` in `scope`.
    pub(super) fn find(&self, scope: &str, agent_id: &Value) -> Option<u64> {
        let p = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        p.calls
            .iter()
            .find(|(_, c)| c.scope == scope && &c.agent_id == agent_id)
            .map(|(own, _)| *own)
    }

    /// Relays the server's `notifications/progress` to the call it is for (its token is
    /// the gateway's id of the request), under the agent's own token. Progress no one
    /// waits for, or more than the agent's stream holds, is dropped.
    pub(super) fn relay_progress(&self, mut message: Value) {
        let Some(own) = message
            .pointer("/params/progressToken")
            .and_then(Value::as_u64)
        else {
            return;
        };
        let p = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(progress) = p.calls.get(&own).and_then(|c| c.progress.as_ref()) {
            message["params"]["progressToken"] = progress.token.clone();
            let _ = progress.to.try_send(message);
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).closed
    }

    /// Fails everything waiting (their senders drop) and refuses what comes later.
    pub(super) fn close(&self) {
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

pub(super) fn unreachable(why: impl Into<String>) -> UpstreamError {
    UpstreamError::Connect(why.into())
}

/// How long to wait before the next start after `failures` failures in a row.
pub(super) fn backoff(failures: u32) -> Duration {
    let doubled = FIRST_RETRY.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(MAX_RETRY)
}

impl Process {
    /// Queues one message for the server's stdin. Serialised compactly, so a newline
    /// inside a string is escaped and one message is always one line.
    pub(super) fn send(&self, message: &Value) -> Result<(), UpstreamError> {
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
    /// carries the agent's id again. The agent's progress token is replaced by the
    /// gateway's id when its progress goes to `progress`, and removed otherwise (two
    /// agents' tokens could meet, as their ids could).
    pub(super) async fn ask(
        &self,
        own: u64,
        mut message: Value,
        scope: &str,
        timeout: Duration,
        progress: Option<mpsc::Sender<Value>>,
    ) -> Result<Value, UpstreamError> {
        let agent_id = std::mem::replace(&mut message["id"], json!(own));
        let token = message
            .pointer_mut("/params/_meta")
            .and_then(Value::as_object_mut)
            .and_then(|meta| meta.remove("progressToken"));
        let progress = match (token, progress) {
            (Some(token), Some(to)) => {
                message["params"]["_meta"]["progressToken"] = json!(own);
                Some(Progress { token, to })
            }
            _ => None,
        };
        let (reply, answer) = oneshot::channel();
        let call = Call {
            reply,
            scope: scope.to_string(),
            agent_id: agent_id.clone(),
            progress,
        };
        self.waiting.add(own, call, self.max_pending)?;
        let mut pending = Unanswered {
            process: self,
            own,
            answered: false,
        };
        self.send(&message)?;
        let answer = tokio::time::timeout(timeout, answer)
            .await
            .map_err(|_| UpstreamError::Timeout(timeout))?;
        pending.answered = true;
        let mut answer = answer.map_err(|_| unreachable(self.exit_reason()))?;
        answer["id"] = agent_id;
        Ok(answer)
    }

    pub(super) fn exit_reason(&self) -> String {
        match self.exited.borrow().as_deref() {
            Some(how) => format!("the server process {how}"),
            None => "the server process stopped answering".into(),
        }
    }

    pub(super) fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    /// Closes stdin; then SIGTERM; then SIGKILL, each after `EXIT_GRACE`.
    pub(super) async fn stop(&self) {
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
