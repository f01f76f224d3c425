//! The stdio transport's wire: newline-delimited messages of bounded length, the
//! server's stdin fed from a queue, its stdout read into answers and notifications,
//! its stderr into the log.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder, FramedRead};

use super::process::Waiting;
use super::{EXIT_GRACE, STDERR_LINE};
use crate::proxy::multiplex::changes::{Change, Changes};

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
pub(super) async fn write_lines(mut stdin: ChildStdin, mut lines: mpsc::Receiver<Bytes>) {
    while let Some(line) = lines.recv().await {
        if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
            break;
        }
    }
}

/// Reads the server's messages from stdout until it ends: answers go to the calls
/// waiting on them; the server's `ping` is answered; other requests are refused
/// (the gateway declared no client capabilities); progress goes to the call it is
/// for; list changes and resource updates go to the agents' event streams, other
/// notifications to the debug log.
pub(super) async fn read_messages(
    name: String,
    changes: Changes,
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
            (Some("notifications/progress"), None) => waiting.relay_progress(message),
            (Some(method), None) => match Change::of(&name, &message) {
                Some(change) => changes.publish(change),
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
pub(super) async fn log_stderr(name: String, stderr: tokio::process::ChildStderr) {
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
