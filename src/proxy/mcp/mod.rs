//! MCP Streamable HTTP, as far as the gateway must understand it: read a POST body with
//! the strict JSON parser (one reading for every parser), tell requests, notifications
//! and responses apart, pull out the tool name and arguments of `tools/call`, check the
//! 2026-07-28 mirror headers. The results the gateway writes itself are in `results`.

pub mod methods;
pub mod results;
pub mod retry;

use http::HeaderMap;
use serde_json::{Map, Value};

use crate::json_strict;
use crate::outcome::Reason;

/// The newest revision whose rules the gateway knows; later ones are treated like it.
pub const REV_STATELESS: &str = "2026-07-28";
/// The `_meta` key under which a 2026-07-28 request declares the client's capabilities.
pub const CLIENT_CAPABILITIES_KEY: &str = "io.modelcontextprotocol/clientCapabilities";
/// The last revision that allowed JSON-RPC batches.
pub const REV_BATCHES: &str = "2025-03-26";

/// True for revisions without sessions, where every result carries `resultType`.
pub fn is_stateless(revision: Option<&str>) -> bool {
    revision.is_some_and(|r| r >= REV_STATELESS)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum MessageKind {
    Request,
    Notification,
    Response,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        self.into()
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

/// A `tools/call`: the tool the agent named and its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// An object (absent arguments are `{}`).
    pub arguments: Value,
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

    /// This message's row in the method table.
    pub fn spec(&self) -> methods::Method {
        methods::lookup(self.method.as_deref().unwrap_or(""))
    }

    /// True for a request whose answer the gateway filters (`tools/list`).
    pub fn is_tool_list(&self) -> bool {
        self.kind == MessageKind::Request && self.spec().role == methods::Role::ToolList
    }

    /// `tools/call`: the tool name and its arguments.
    pub fn tool_call(&self) -> Result<Option<ToolCall>, InvalidMessage> {
        if self.kind != MessageKind::Request || self.spec().role != methods::Role::ToolCall {
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
        let arguments = match params.get("arguments") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => {
                return Err(invalid(
                    self.id.as_ref(),
                    "tools/call \"params.arguments\" must be an object",
                ));
            }
        };
        Ok(Some(ToolCall { name, arguments }))
    }

    /// `params._meta.progressToken`, when the client asked for progress.
    pub fn progress_token(&self) -> Option<&Value> {
        self.params()?.get("_meta")?.get("progressToken")
    }

    /// `params.requestState` (a 2026-07-28 retry of an `input_required` result).
    pub fn request_state(&self) -> Option<&str> {
        self.params()?.get("requestState")?.as_str()
    }

    /// Whether the request declares (2026-07-28: `_meta` key
    /// `io.modelcontextprotocol/clientCapabilities`) that the client answers a
    /// form-mode elicitation: `elicitation` present, with `form`, or empty (form is
    /// the default when neither mode is named).
    pub fn can_elicit_form(&self) -> bool {
        let Some(Value::Object(e)) = self
            .params()
            .and_then(|p| p.get("_meta"))
            .and_then(|m| m.get(CLIENT_CAPABILITIES_KEY))
            .and_then(|c| c.get("elicitation"))
        else {
            return false;
        };
        e.get("form").is_some_and(Value::is_object)
            || (!e.contains_key("form") && !e.contains_key("url"))
    }

    /// The name MCP 2026-07-28 mirrors in `Mcp-Name` for this method, if any.
    fn mirrored_name(&self) -> Option<&str> {
        let param = self.spec().mirrored_param?;
        self.params()?.get(param)?.as_str()
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

/// A body that stops the whole POST before any message is considered, with the id to
/// echo when one could be read.
#[derive(Debug)]
pub struct BodyError {
    pub reason: Reason,
    pub id: Value,
}

impl From<Reason> for BodyError {
    fn from(reason: Reason) -> Self {
        BodyError {
            reason,
            id: Value::Null,
        }
    }
}

/// Parses a POST body. `revision` is the `MCP-Protocol-Version` header, if any.
pub fn parse_body(
    bytes: &[u8],
    max_depth: usize,
    revision: Option<&str>,
) -> Result<Body, BodyError> {
    let value = json_strict::parse(
        bytes,
        json_strict::Limits {
            max_depth,
            ..Default::default()
        },
    )
    .map_err(|e| BodyError::from(strict_reason(&e, max_depth)))?;
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(Reason::EmptyBatch.into());
            }
            if let Some(rev) = revision
                && rev > REV_BATCHES
            {
                return Err(Reason::BatchNotAllowed(format!(
                    "JSON-RPC batches are not allowed in protocol revision {rev}"
                ))
                .into());
            }
            Ok(Body::Batch(items.into_iter().map(Message::parse).collect()))
        }
        other => Message::parse(other)
            .map(Body::Single)
            .map_err(|e| BodyError {
                id: e.id.clone(),
                reason: Reason::InvalidRequest(e.message),
            }),
    }
}

/// What a strict-parser refusal means for the caller: malformed JSON is a parse error;
/// JSON that two parsers could read differently is refused as ambiguous.
pub fn strict_reason(e: &json_strict::StrictJsonError, max_depth: usize) -> Reason {
    match e.reason() {
        "too_deep" => Reason::JsonTooDeep(max_depth),
        _ if e.is_parse_error() => Reason::ParseError(format!("body is not valid JSON: {e}")),
        code => Reason::AmbiguousJson {
            code,
            message: format!("the body can be read more than one way: {e}"),
        },
    }
}

/// The revision from `MCP-Protocol-Version`, checked for shape.
pub fn revision_header(headers: &HeaderMap) -> Result<Option<String>, Reason> {
    let mut all = headers.get_all("mcp-protocol-version").iter();
    let Some(v) = all.next() else { return Ok(None) };
    let bad = |why: &str| Reason::BadHeader(why.to_string());
    if all.next().is_some() {
        return Err(bad("MCP-Protocol-Version appears more than once"));
    }
    let s = v
        .to_str()
        .map_err(|_| bad("MCP-Protocol-Version is not visible ASCII"))?;
    if s.is_empty()
        || s.len() > 32
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(bad("MCP-Protocol-Version is not a protocol revision"));
    }
    Ok(Some(s.to_string()))
}

/// MCP 2026-07-28 mirrors the method (and the tool/prompt/resource name) in headers;
/// a proxy must reject a request whose headers disagree with its body, since routing
/// by header and deciding by body must see the same call. Policy always reads the body.
pub fn check_mirror_headers(
    headers: &HeaderMap,
    msg: &Message,
    revision: Option<&str>,
) -> Result<(), Reason> {
    let mismatch = |m: String| Reason::HeaderMismatch(m);
    let header = |name: &str| -> Result<Option<&str>, Reason> {
        let mut values = headers.get_all(name).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(mismatch(format!("{name} header appears more than once")));
        }
        first
            .map(|v| {
                v.to_str()
                    .map_err(|_| mismatch(format!("{name} header is not visible ASCII")))
            })
            .transpose()
    };
    let method_h = header("mcp-method")?;
    let name_h = header("mcp-name")?;
    let stateless = is_stateless(revision);
    match (method_h, msg.method.as_deref()) {
        (Some(h), Some(b)) if h != b => {
            return Err(mismatch(format!(
                "Mcp-Method header {h:?} does not match the body's method {b:?}"
            )));
        }
        (Some(_), None) => {
            return Err(mismatch(
                "Mcp-Method header is set on a message without a method".into(),
            ));
        }
        (None, Some(_)) if stateless => {
            return Err(mismatch(format!(
                "protocol revision {REV_STATELESS} requires the Mcp-Method header"
            )));
        }
        _ => {}
    }
    match (name_h, msg.mirrored_name()) {
        (Some(h), Some(b)) if h != b => Err(mismatch(format!(
            "Mcp-Name header {h:?} does not match the body's {b:?}"
        ))),
        (Some(_), None) => Err(mismatch(
            "Mcp-Name header is set but the body names nothing".into(),
        )),
        (None, Some(_)) if stateless => Err(mismatch(format!(
            "protocol revision {REV_STATELESS} requires the Mcp-Name header"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
            Some(ToolCall {
                name: "deploy_service".into(),
                arguments: json!({"env":"prod"})
            })
        );
        let no_args =
            msg(json!({"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"t"}}));
        assert_eq!(no_args.tool_call().unwrap().unwrap().arguments, json!({}));
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
    fn form_elicitation_is_what_the_request_declares() {
        let with = |caps: Value| {
            msg(
                json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t",
                "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",
                         "io.modelcontextprotocol/clientCapabilities": caps}}}),
            )
            .can_elicit_form()
        };
        assert!(with(json!({"elicitation": {}})));
        assert!(with(json!({"elicitation": {"form": {}}})));
        assert!(with(json!({"elicitation": {"form": {}, "url": {}}})));
        assert!(!with(json!({"elicitation": {"url": {}}})));
        assert!(!with(json!({})));
        assert!(!with(json!({"elicitation": true})));
        let none = msg(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}));
        assert!(!none.can_elicit_form());
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
        let code = |b: &[u8], rev| {
            parse_body(b, 64, rev)
                .unwrap_err()
                .reason
                .code()
                .to_string()
        };
        assert_eq!(code(b, Some("2025-06-18")), "batch_not_allowed");
        assert_eq!(code(b"[]", None), "empty_batch");
        assert_eq!(code(b"{", None), "parse_error");
        assert_eq!(code(&[0xff, 0xfe], None), "parse_error");
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
