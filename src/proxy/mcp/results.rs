//! The JSON-RPC messages the gateway writes itself: errors, tool results for blocked or
//! pending calls, `input_required` for 2026-07-28 clients, progress notifications, and
//! the SSE event that carries any of them. Each result follows the negotiated revision.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::outcome::Reason;

/// `_meta` keys the gateway puts on results it writes.
pub const META_DECISION: &str = "ciba-gate/decision";
pub const META_REASON: &str = "ciba-gate/reason";
pub const META_BINDING: &str = "ciba-gate/binding_message";
pub const META_RETRY: &str = "ciba-gate/retry_after_seconds";
/// The key of the gateway's input request in a 2026-07-28 `input_required` result.
pub const INPUT_KEY: &str = "ciba-gate/approval";

/// A JSON-RPC error response for `reason`.
pub fn error(id: Value, reason: &Reason) -> Value {
    let mut data = json!({"reason": reason.code()});
    if let Some(s) = reason.retry_after() {
        data["retry_after"] = json!(s);
    }
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": reason.jsonrpc_code(), "message": reason.sentence(), "data": data},
    })
}

/// A tool result the model reads: `isError`, the sentence, and the decision in `_meta`.
pub fn tool_result(id: Value, text: &str, meta: Value, stateless: bool) -> Value {
    let mut result = json!({
        "content": [{"type": "text", "text": text}],
        "isError": true,
        "_meta": meta,
    });
    if stateless {
        result["resultType"] = json!("complete");
    }
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A `tools/call` blocked by the gateway, as a tool-execution error the model can read
/// and adapt to, with the machine-readable decision beside it in `_meta`.
pub fn blocked_tool_result(id: Value, tool: &str, reason: &Reason, stateless: bool) -> Value {
    let text = match reason {
        Reason::Policy { code, message } => {
            format!("The tool call {tool} was blocked by policy ({code}): {message}")
        }
        other => format!("The tool call {tool} was not run: {}.", other.sentence()),
    };
    let mut meta = json!({META_DECISION: reason.decision(), META_REASON: reason.code()});
    if let Some(s) = reason.retry_after() {
        meta[META_RETRY] = json!(s);
    }
    tool_result(id, &text, meta, stateless)
}

/// "Waiting for approval" for a client that cannot be held: call again to continue.
pub fn pending_tool_result(id: Value, binding: &str, retry: u64, stateless: bool) -> Value {
    tool_result(
        id,
        &format!(
            "Waiting for approval on your phone: \"{binding}\". Call this tool again with the same arguments in about {retry} second{} to continue.",
            if retry == 1 { "" } else { "s" }
        ),
        json!({
            META_DECISION: "approve",
            META_REASON: Reason::ApprovalPending.code(),
            META_BINDING: binding,
            META_RETRY: retry,
        }),
        stateless,
    )
}

/// MCP 2026-07-28 `input_required`: the client answers the gateway's input request and
/// retries with the sealed `requestState`.
pub fn input_required(id: Value, binding: &str, request_state: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {
            "resultType": "input_required",
            "inputRequests": {
                INPUT_KEY: {
                    "method": "elicitation/create",
                    "params": {
                        "mode": "form",
                        "message": format!("Approve on your phone: \"{binding}\". Continue once you have answered there."),
                        "requestedSchema": {"type": "object", "properties": {}},
                    },
                },
            },
            "requestState": request_state,
            "_meta": {META_DECISION: "approve", META_REASON: Reason::ApprovalPending.code(), META_BINDING: binding},
        },
    })
}

/// A progress notification carrying the binding message.
pub fn progress(token: &Value, n: u64, text: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": token, "progress": n, "message": text},
    })
}

/// One SSE event carrying a JSON-RPC message.
pub fn sse_event(message: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}
