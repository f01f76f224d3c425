//! `mcp_body`: the MCP POST body parser, message kinds, `tools/call` extraction and the
//! 2026-07-28 mirror headers.

use http::{HeaderMap, HeaderValue};
use serde_json::Value;

use crate::json_strict::{self, Limits};
use crate::proxy::mcp::{self, Body, Message, MessageKind, REV_BATCHES, methods};

/// The revision a body is read under: chosen by the first byte of the input.
pub(crate) fn revision(selector: Option<&u8>) -> Option<&'static str> {
    match selector.map(|b| b % 4) {
        Some(1) => Some(REV_BATCHES),
        Some(2) => Some("2025-06-18"),
        Some(3) => Some(mcp::REV_STATELESS),
        _ => None,
    }
}

/// Properties of [`mcp::parse_body`] (first byte: the revision; the rest: the body):
/// - whatever is accepted is exactly the strict parser's value;
/// - each message's kind follows from its members (request: method and id;
///   notification: method, no id; response: id and exactly one of result / error);
/// - `tools/call` yields the body's own name and arguments, nothing else;
/// - batches exist only where the revision allows them, never empty;
/// - mirror headers copied from the body are accepted, a different method never is;
/// - refusals echo only a string, number or null id.
pub fn mcp_body(data: &[u8]) {
    let rev = revision(data.first());
    let body = data.get(1..).unwrap_or_default();
    let strict = json_strict::parse(body, Limits::default());
    match mcp::parse_body(body, Limits::default().max_depth, rev) {
        Ok(Body::Single(msg)) => {
            let value = strict.expect("accepted body is strict JSON");
            assert_eq!(msg.value, value);
            check_message(&msg);
            check_mirrors(&msg, rev);
        }
        Ok(Body::Batch(members)) => {
            let Ok(Value::Array(items)) = strict else {
                panic!("a batch that is not a strict JSON array");
            };
            assert!(!items.is_empty(), "empty batch accepted");
            assert!(rev.is_none_or(|r| r <= REV_BATCHES), "batch under {rev:?}");
            assert_eq!(items.len(), members.len());
            for (item, member) in items.into_iter().zip(members) {
                let again = Message::parse(item.clone());
                assert_eq!(again.is_ok(), member.is_ok());
                match member {
                    Ok(msg) => {
                        assert_eq!(msg.value, item);
                        check_message(&msg);
                    }
                    Err(e) => assert!(matches!(
                        e.id,
                        Value::Null | Value::String(_) | Value::Number(_)
                    )),
                }
            }
        }
        Err(e) => {
            assert!(matches!(
                e.id,
                Value::Null | Value::String(_) | Value::Number(_)
            ));
            if let Ok(value) = strict {
                let code = e.reason.code();
                match value {
                    Value::Array(items) if items.is_empty() => assert_eq!(code, "empty_batch"),
                    Value::Array(_) => assert_eq!(code, "batch_not_allowed"),
                    _ => assert_eq!(code, "invalid_request"),
                }
            }
        }
    }
}

fn check_message(msg: &Message) {
    let obj = msg.value.as_object().expect("a message is an object");
    assert_eq!(obj.get("jsonrpc"), Some(&Value::String("2.0".into())));
    let id = obj.get("id");
    assert_eq!(msg.id.as_ref(), id);
    assert!(id.is_none_or(|i| i.is_string() || i.is_number()));
    let method = obj.get("method").and_then(Value::as_str);
    assert_eq!(msg.method.as_deref(), method);
    match msg.kind {
        MessageKind::Request => assert!(method.is_some_and(|m| !m.is_empty()) && id.is_some()),
        MessageKind::Notification => {
            assert!(method.is_some_and(|m| !m.is_empty()) && id.is_none())
        }
        MessageKind::Response => {
            assert!(method.is_none() && obj.get("method").is_none() && id.is_some());
            assert!(obj.contains_key("result") != obj.contains_key("error"));
        }
    }
    if let Some(p) = obj.get("params") {
        assert!(msg.kind == MessageKind::Response || p.is_object() || p.is_array());
    }
    match msg.tool_call() {
        Ok(Some(call)) => {
            assert_eq!(msg.kind, MessageKind::Request);
            assert_eq!(method, Some("tools/call"));
            let params = obj["params"].as_object().expect("params object");
            assert_eq!(
                params.get("name").and_then(Value::as_str),
                Some(call.name.as_str())
            );
            assert!(!call.name.is_empty());
            match params.get("arguments") {
                None | Some(Value::Null) => {
                    assert_eq!(call.arguments, Value::Object(Default::default()))
                }
                Some(args) => assert_eq!(&call.arguments, args),
            }
            assert!(call.arguments.is_object());
        }
        Ok(None) => assert!(
            msg.kind != MessageKind::Request
                || methods::lookup(method.unwrap_or("")).role != methods::Role::ToolCall
        ),
        Err(e) => {
            assert_eq!(method, Some("tools/call"));
            assert_eq!(&e.id, id.unwrap_or(&Value::Null));
        }
    }
}

fn check_mirrors(msg: &Message, rev: Option<&str>) {
    let Some(method) = msg.method.as_deref() else {
        // Nothing to mirror: a Mcp-Method header is refused.
        let mut h = HeaderMap::new();
        h.insert("mcp-method", HeaderValue::from_static("ping"));
        assert!(mcp::check_mirror_headers(&h, msg, rev).is_err());
        return;
    };
    let Ok(method_value) = HeaderValue::from_str(method) else {
        return;
    };
    if method_value.to_str().is_err() {
        return;
    }
    let mut h = HeaderMap::new();
    h.insert("mcp-method", method_value);
    let spec = methods::lookup(method);
    let named = spec
        .mirrored_param
        .and_then(|p| msg.params()?.get(p)?.as_str().map(str::to_string));
    if let Some(name) = &named {
        match HeaderValue::from_str(name) {
            Ok(v) if v.to_str().is_ok() => {
                h.insert("mcp-name", v);
            }
            _ => return,
        }
    }
    assert!(
        mcp::check_mirror_headers(&h, msg, rev).is_ok(),
        "mirror headers copied from the body are refused"
    );
    let mut other = h.clone();
    other.insert(
        "mcp-method",
        HeaderValue::from_str(&format!("{method}x")).expect("still a header value"),
    );
    assert!(mcp::check_mirror_headers(&other, msg, rev).is_err());
    if named.is_some() {
        let mut other = h.clone();
        other.append("mcp-name", HeaderValue::from_static("second"));
        assert!(mcp::check_mirror_headers(&other, msg, rev).is_err());
    }
}
