//! MCP Streamable HTTP, as far as the gateway must understand it: parse JSON-RPC
//! messages (single or batch), tell requests, notifications and responses apart, pull
//! out the tool name and arguments of `tools/call`, check the 2026-07-28 mirror headers,
//! and build valid JSON-RPC answers for blocked calls.

use http::HeaderMap;
use serde_json::{Map, Value, json};

/// JSON-RPC error codes the gateway answers with.
pub mod codes {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    /// Blocked by gateway policy (implementation-defined server error range).
    pub const BLOCKED: i64 = -32001;
    /// The gateway could not reach or hear back from the upstream.
    pub const UPSTREAM_UNAVAILABLE: i64 = -32002;
    /// MCP 2026-07-28: `Mcp-Method` / `Mcp-Name` headers disagree with the body.
    pub const HEADER_MISMATCH: i64 = -32020;
}

/// The newest revision whose rules the gateway knows; later ones are treated like it.
pub const REV_STATELESS: &str = "2026-07-28";
/// The last revision that allowed JSON-RPC batches.
pub const REV_BATCHES: &str = "2025-03-26";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Request,
    Notification,
    Response,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Request => "request",
            MessageKind::Notification => "notification",
            MessageKind::Response => "response",
        }
    }
}

/// One JSON-RPC message from the client, checked for shape.
#[derive(Debug, Clone)]
pub struct Message {
    pub kind: MessageKind,
    /// Present for requests and responses.
    pub id: Option<Value>,
    pub method: Option<String>,
    pub value: Value,
}

/// A message that is not valid JSON-RPC 2.0; `id` is echoed when it could be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct InvalidMessage {
    pub id: Value,
    pub message: String,
}

fn invalid(id: Option<&Value>, message: impl Into<String>) -> InvalidMessage {
    InvalidMessage {
        id: id.cloned().filter(valid_id).unwrap_or(Value::Null),
        message: message.into(),
    }
}

fn valid_id(id: &Value) -> bool {
    matches!(id, Value::String(_) | Value::Number(_))
}

impl Message {
    pub fn parse(value: Value) -> Result<Message, InvalidMessage> {
        let Value::Object(obj) = &value else {
            return Err(invalid(None, "a JSON-RPC message must be an object"));
        };
        let id = obj.get("id");
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(invalid(id, "\"jsonrpc\" must be \"2.0\""));
        }
        if let Some(id) = id
            && !valid_id(id)
        {
            return Err(invalid(None, "\"id\" must be a string or a number"));
        }
        match obj.get("method") {
            Some(Value::String(m)) => {
                if m.is_empty() {
                    return Err(invalid(id, "\"method\" must not be empty"));
                }
                if let Some(p) = obj.get("params")
                    && !p.is_object()
                    && !p.is_array()
                {
                    return Err(invalid(id, "\"params\" must be an object or an array"));
                }
                let kind = if id.is_some() {
                    MessageKind::Request
                } else {
                    MessageKind::Notification
                };
                Ok(Message {
                    kind,
                    id: id.cloned(),
                    method: Some(m.clone()),
                    value,
                })
            }
            Some(_) => Err(invalid(id, "\"method\" must be a string")),
            None => {
                let has_result = obj.contains_key("result");
                let has_error = obj.contains_key("error");
                if has_result == has_error || id.is_none() {
                    return Err(invalid(
                        id,
                        "a message needs \"method\", or an \"id\" with exactly one of \"result\" or \"error\"",
                    ));
                }
                Ok(Message {
                    kind: MessageKind::Response,
                    id: id.cloned(),
                    method: None,
                    value,
                })
            }
        }
    }

    pub fn params(&self) -> Option<&Map<String, Value>> {
        self.value.get("params").and_then(Value::as_object)
    }

    /// `tools/call`: the tool name and its arguments (an object; absent means `{}`).
    pub fn tool_call(&self) -> Result<Option<(String, Value)>, InvalidMessage> {
        if self.method.as_deref() != Some("tools/call") || self.kind != MessageKind::Request {
            return Ok(None);
        }
        let params = self
            .params()
            .ok_or_else(|| invalid(self.id.as_ref(), "tools/call needs \"params\" as an object"))?;
        let name = match params.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            _ => {
                return Err(invalid(
                    self.id.as_ref(),
                    "tools/call needs a non-empty string \"params.name\"",
                ));
            }
        };
        let args = match params.get("arguments") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => {
                return Err(invalid(
                    self.id.as_ref(),
                    "tools/call \"params.arguments\" must be an object",
                ));
            }
        };
        Ok(Some((name, args)))
    }

    /// The name MCP 2026-07-28 mirrors in `Mcp-Name` for this method, if any.
    fn mirrored_name(&self) -> Option<&str> {
        let params = self.params()?;
        match self.method.as_deref()? {
            "tools/call" | "prompts/get" => params.get("name")?.as_str(),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                params.get("uri")?.as_str()
            }
            _ => None,
        }
    }

    /// The protocol revision the message itself declares (2026-07-28 puts it in `_meta`;
    /// `initialize` carries the requested one).
    pub fn declared_revision(&self) -> Option<&str> {
        let params = self.params()?;
        if let Some(v) = params
            .get("_meta")
            .and_then(|m| m.get("io.modelcontextprotocol/protocolVersion"))
            .and_then(Value::as_str)
        {
            return Some(v);
        }
        if self.method.as_deref() == Some("initialize") {
            return params.get("protocolVersion").and_then(Value::as_str);
        }
        None
    }
}

/// A POST body: one message or a batch.
#[derive(Debug)]
pub enum Body {
    Single(Message),
    /// Elements in order; invalid ones keep their error so the answer can say so.
    Batch(Vec<Result<Message, InvalidMessage>>),
}

/// Errors that stop the whole POST before any message is considered.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body is not valid JSON: {0}")]
    Parse(String),
    #[error("JSON nesting deeper than {0} levels")]
    TooDeep(usize),
    #[error("an empty batch is not a valid JSON-RPC request")]
    EmptyBatch,
    #[error("JSON-RPC batches are not allowed in protocol revision {0}")]
    BatchNotAllowed(String),
    #[error(transparent)]
    Invalid(#[from] InvalidMessage),
}

impl BodyError {
    pub fn code(&self) -> i64 {
        match self {
            BodyError::Parse(_) => codes::PARSE_ERROR,
            _ => codes::INVALID_REQUEST,
        }
    }
    pub fn reason(&self) -> &'static str {
        match self {
            BodyError::Parse(_) => "parse_error",
            BodyError::TooDeep(_) => "json_too_deep",
            BodyError::EmptyBatch => "empty_batch",
            BodyError::BatchNotAllowed(_) => "batch_not_allowed",
            BodyError::Invalid(_) => "invalid_request",
        }
    }
    pub fn id(&self) -> Value {
        match self {
            BodyError::Invalid(e) => e.id.clone(),
            _ => Value::Null,
        }
    }
}

/// Parses a POST body. `revision` is the `MCP-Protocol-Version` header, if any.
pub fn parse_body(
    bytes: &[u8],
    max_depth: usize,
    revision: Option<&str>,
) -> Result<Body, BodyError> {
    // Depth is checked on the raw bytes first so a hostile body never reaches the
    // recursive parser's own limit (or the stack).
    if json_depth_exceeds(bytes, max_depth) {
        return Err(BodyError::TooDeep(max_depth));
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| BodyError::Parse(e.to_string()))?;
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(BodyError::EmptyBatch);
            }
            if let Some(rev) = revision
                && rev > REV_BATCHES
            {
                return Err(BodyError::BatchNotAllowed(rev.to_string()));
            }
            Ok(Body::Batch(items.into_iter().map(Message::parse).collect()))
        }
        other => Ok(Body::Single(Message::parse(other)?)),
    }
}

/// True if the JSON text nests arrays/objects deeper than `max`. Strings are skipped
/// so brackets inside them do not count.
pub fn json_depth_exceeds(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// MCP 2026-07-28 mirrors the method (and the tool/prompt/resource name) in headers;
/// a proxy must reject a request whose headers disagree with its body, since routing
/// by header and deciding by body must see the same call. Policy always reads the body.
pub fn check_mirror_headers(
    headers: &HeaderMap,
    msg: &Message,
    revision: Option<&str>,
) -> Result<(), String> {
    let header = |name: &str| -> Result<Option<&str>, String> {
        let mut values = headers.get_all(name).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(format!("{name} header appears more than once"));
        }
        first
            .map(|v| {
                v.to_str()
                    .map_err(|_| format!("{name} header is not visible ASCII"))
            })
            .transpose()
    };
    let method_h = header("mcp-method")?;
    let name_h = header("mcp-name")?;
    let stateless = revision.is_some_and(|r| r >= REV_STATELESS);
    let body_method = msg.method.as_deref();
    match (method_h, body_method) {
        (Some(h), Some(b)) if h != b => {
            return Err(format!(
                "Mcp-Method header {h:?} does not match the body's method {b:?}"
            ));
        }
        (Some(_), None) => {
            return Err("Mcp-Method header is set on a message without a method".into());
        }
        (None, Some(_)) if stateless => {
            return Err(format!(
                "protocol revision {REV_STATELESS} requires the Mcp-Method header"
            ));
        }
        _ => {}
    }
    match (name_h, msg.mirrored_name()) {
        (Some(h), Some(b)) if h != b => Err(format!(
            "Mcp-Name header {h:?} does not match the body's {b:?}"
        )),
        (Some(_), None) => Err("Mcp-Name header is set but the body names nothing".into()),
        (None, Some(_)) if stateless => Err(format!(
            "protocol revision {REV_STATELESS} requires the Mcp-Name header"
        )),
        _ => Ok(()),
    }
}

/// A JSON-RPC error response.
pub fn error_response(id: Value, code: i64, message: &str, reason: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": code, "message": message, "data": {"reason": reason}},
    })
}

/// A `tools/call` blocked by the gateway, as a tool-execution error the model can read
/// and adapt to, with the machine-readable decision beside it in `_meta`.
pub fn blocked_tool_result(
    id: Value,
    decision: &str,
    reason: &str,
    text: &str,
    stateless: bool,
) -> Value {
    let mut result = json!({
        "content": [{"type": "text", "text": text}],
        "isError": true,
        "_meta": {"ciba-gate/decision": decision, "ciba-gate/reason": reason},
    });
    if stateless {
        result["resultType"] = json!("complete");
    }
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// Renders one SSE event carrying a JSON-RPC message.
pub fn sse_event(message: &Value) -> String {
    format!("event: message\ndata: {message}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(v: Value) -> Message {
        Message::parse(v).unwrap()
    }

    #[test]
    fn tools_call_yields_name_and_arguments() {
        let m = msg(
            json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"deploy_service","arguments":{"env":"prod"}}}),
        );
        assert_eq!(m.kind, MessageKind::Request);
        assert_eq!(
            m.tool_call().unwrap(),
            Some(("deploy_service".into(), json!({"env":"prod"})))
        );
        let no_args =
            msg(json!({"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"t"}}));
        assert_eq!(no_args.tool_call().unwrap(), Some(("t".into(), json!({}))));
    }

    #[test]
    fn malformed_tools_call_is_invalid_with_its_id() {
        let bad = msg(json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":5}}));
        assert_eq!(bad.tool_call().unwrap_err().id, json!(3));
        let bad_args = msg(
            json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"x","arguments":[1]}}),
        );
        assert!(bad_args.tool_call().is_err());
    }

    #[test]
    fn kinds_are_told_apart() {
        assert_eq!(
            msg(json!({"jsonrpc":"2.0","method":"notifications/initialized"})).kind,
            MessageKind::Notification
        );
        assert_eq!(
            msg(json!({"jsonrpc":"2.0","id":1,"result":{}})).kind,
            MessageKind::Response
        );
        for bad in [
            json!({"jsonrpc":"1.0","id":1,"method":"x"}),
            json!({"id":1,"method":"x"}),
            json!({"jsonrpc":"2.0","id":{},"method":"x"}),
            json!({"jsonrpc":"2.0","id":1,"method":7}),
            json!({"jsonrpc":"2.0","id":1}),
            json!({"jsonrpc":"2.0","id":1,"result":{},"error":{}}),
            json!({"jsonrpc":"2.0","id":1,"method":"x","params":"s"}),
            json!([1]),
            json!("x"),
        ] {
            assert!(Message::parse(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn depth_is_counted_outside_strings_only() {
        assert!(!json_depth_exceeds(br#"{"a":"[[[[[[[[[["}"#, 2));
        assert!(json_depth_exceeds(b"[[[1]]]", 2));
        assert!(!json_depth_exceeds(b"[[1],[2]]", 2));
        assert!(!json_depth_exceeds(br#"{"a":"\"[[["}"#, 1));
    }

    #[test]
    fn batches_follow_the_revision() {
        let b = br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"bad":1}]"#;
        match parse_body(b, 64, None).unwrap() {
            Body::Batch(items) => {
                assert!(items[0].is_ok());
                assert!(items[1].is_err());
            }
            Body::Single(_) => panic!("expected a batch"),
        }
        assert!(parse_body(b, 64, Some("2025-03-26")).is_ok());
        assert!(matches!(
            parse_body(b, 64, Some("2025-06-18")),
            Err(BodyError::BatchNotAllowed(_))
        ));
        assert!(matches!(
            parse_body(b"[]", 64, None),
            Err(BodyError::EmptyBatch)
        ));
        assert!(matches!(
            parse_body(b"{", 64, None),
            Err(BodyError::Parse(_))
        ));
        assert!(matches!(
            parse_body(&[0xff, 0xfe], 64, None),
            Err(BodyError::Parse(_))
        ));
    }

    #[test]
    fn mirror_headers_must_agree_with_the_body() {
        let m = msg(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}}));
        let mut h = HeaderMap::new();
        h.insert("mcp-method", "tools/call".parse().unwrap());
        h.insert("mcp-name", "a".parse().unwrap());
        assert!(check_mirror_headers(&h, &m, Some(REV_STATELESS)).is_ok());
        h.insert("mcp-name", "b".parse().unwrap());
        assert!(check_mirror_headers(&h, &m, Some(REV_STATELESS)).is_err());
        h.insert("mcp-name", "a".parse().unwrap());
        h.insert("mcp-method", "tools/list".parse().unwrap());
        assert!(check_mirror_headers(&h, &m, None).is_err());
        // Older revisions need no headers; 2026-07-28 does.
        assert!(check_mirror_headers(&HeaderMap::new(), &m, Some("2025-06-18")).is_ok());
        assert!(check_mirror_headers(&HeaderMap::new(), &m, Some(REV_STATELESS)).is_err());
    }
}
