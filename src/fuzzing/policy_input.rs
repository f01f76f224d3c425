//! `policy_input`: the policy input document built from a request head and an MCP body,
//! and the document the Rego engine ends up holding.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::Value;

use super::{same_json, split_at_byte};
use crate::policy::input::{self, POLICY_HEADERS, PolicyInput};
use crate::proxy::mcp::{self, Body};

/// Input: header lines (`name: value`, `\n`-separated) up to a NUL byte, then the body
/// (its first byte picks the revision, as in `mcp_body`). Properties:
/// - only allow-listed headers enter the document, each with the request's own value;
/// - `tool.arguments` is exactly the `tools/call` arguments of the body;
/// - the engine's copy of the document (regorus) converts back to the same document,
///   numbers by value: what policy reads is what the gateway parsed.
pub fn policy_input(data: &[u8]) {
    let (head, rest) = split_at_byte(data, 0);
    let headers = header_map(head);
    let rev = super::mcp::revision(rest.first());
    let body = rest.get(1..).unwrap_or_default();
    let messages = match mcp::parse_body(body, 64, rev) {
        Ok(Body::Single(m)) => vec![m],
        Ok(Body::Batch(items)) => items.into_iter().filter_map(Result::ok).collect(),
        Err(_) => Vec::new(),
    };
    let request = PolicyInput::request_facts(&Method::POST, "/mcp", &headers);
    check_headers(&request.headers, &headers);
    let mut base = PolicyInput::new(
        input::Phase::Request,
        input::Agent {
            id: "agent".into(),
            namespace: None,
        },
        input::Upstream {
            name: "tools".into(),
            kind: "mcp",
            via: None,
        },
    );
    base.request = Some(request);
    check_document(&base, None);
    for msg in messages {
        let mut doc = base.clone();
        doc.mcp = Some(input::Mcp {
            method: msg.method.clone(),
            kind: msg.kind.as_str(),
            protocol_version: rev.map(str::to_string),
            session: None,
        });
        let call = msg.tool_call().ok().flatten();
        if let Some(call) = &call {
            doc.tool = Some(input::Tool {
                name: call.name.clone(),
                upstream_name: None,
                arguments: Some(call.arguments.clone()),
                annotations: None,
            });
        }
        check_document(&doc, call.as_ref().map(|c| &c.arguments));
    }
}

fn header_map(head: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    headers
}

fn check_headers(facts: &serde_json::Map<String, Value>, headers: &HeaderMap) {
    for (name, value) in facts {
        assert!(
            POLICY_HEADERS.contains(&name.as_str()),
            "{name} entered the input"
        );
        let sent = headers.get(name.as_str()).and_then(|v| v.to_str().ok());
        assert_eq!(value.as_str(), sent, "header {name} changed on its way in");
    }
    for name in POLICY_HEADERS {
        if headers.get(name).is_some_and(|v| v.to_str().is_ok()) {
            assert!(facts.contains_key(name), "allow-listed {name} is missing");
        }
    }
}

fn check_document(doc: &PolicyInput, arguments: Option<&Value>) {
    let value = doc.to_value();
    assert!(value.is_object(), "the document is not an object");
    assert_eq!(value["phase"], "request");
    assert_eq!(
        value.get("tool").and_then(|t| t.get("arguments")),
        arguments
    );
    let held = crate::policy::engine_document(&value).expect("the engine takes the document");
    let back = serde_json::to_value(&held).expect("the engine's value serialises");
    assert!(
        same_json(&value, &back),
        "the engine holds another document:\n{value}\n{back}"
    );
}
