//! `http_route`: path hygiene, the route template matcher, path parameters and query
//! arguments of plain HTTP tool APIs.

use serde_json::Value;

use super::split_at_byte;
use crate::proxy::path;
use crate::proxy::routes::{self, PathTemplate, Route};

/// Input: a path template, `\n`, then a request target (path and optional `?query`).
/// Properties:
/// - a template that parses prints back as itself and parses to the same template;
/// - a path `path::check` passes has, decoded once by an independent decoder, no dot
///   segment, no empty inner segment, no backslash or control character, and no encoded
///   separator in its raw form;
/// - a checked path a template matches has one part per template segment, and path
///   parameters that are never `.` or `..`, nor hold `/`, `\` or a control
///   character: encoded traversal never reaches a tool's arguments;
/// - `routes::find` agrees with the template;
/// - query arguments are strings, or arrays of two or more strings for repeated keys,
///   one value per non-empty pair.
pub fn http_route(data: &[u8]) {
    let (template, target) = split_at_byte(data, b'\n');
    let (Ok(template), Ok(target)) = (std::str::from_utf8(template), std::str::from_utf8(target))
    else {
        return;
    };
    let (path_part, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let checked = path::check(path_part).is_ok();
    if checked {
        check_clean(path_part);
    }
    if let Ok(t) = PathTemplate::parse(template) {
        let printed = t.to_string();
        if template != "/" {
            assert_eq!(printed, template, "template prints differently");
        }
        assert_eq!(PathTemplate::parse(&printed).as_ref(), Ok(&t));
        let params = t.matches(path_part);
        let route = Route {
            method: http::Method::GET,
            template: t.clone(),
            tool: "tool".into(),
            opaque_body: false,
        };
        let found = routes::find(std::slice::from_ref(&route), &http::Method::GET, path_part);
        assert_eq!(found.map(|(_, p)| p), params);
        assert!(
            routes::find(std::slice::from_ref(&route), &http::Method::POST, path_part).is_none()
        );
        if let (true, Some(params)) = (checked, params) {
            let names: Vec<&str> = printed
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            assert_eq!(params.len(), names.len());
            for name in names {
                let value = params
                    .get(name)
                    .and_then(Value::as_str)
                    .expect("each parameter is a string");
                assert!(
                    value != "." && value != "..",
                    "parameter {name} = {value:?}"
                );
                assert!(
                    !value.contains(['/', '\\']) && !value.chars().any(char::is_control),
                    "parameter {name} = {value:?}"
                );
            }
        }
    }
    if let Ok(args) = routes::query_arguments(query) {
        let pairs = query.map_or(0, |q| q.split('&').filter(|p| !p.is_empty()).count());
        let mut values = 0;
        for v in args.values() {
            match v {
                Value::String(_) => values += 1,
                Value::Array(items) => {
                    assert!(items.len() >= 2 && items.iter().all(Value::is_string));
                    values += items.len();
                }
                other => panic!("query value {other}"),
            }
        }
        assert_eq!(values, pairs);
    }
}

/// The independent reading of a path `path::check` passed.
fn check_clean(raw: &str) {
    let lower = raw.to_ascii_lowercase();
    assert!(
        !lower.contains("%2f") && !lower.contains("%5c"),
        "encoded separator"
    );
    let decoded = String::from_utf8(percent_decode(raw.as_bytes())).expect("UTF-8 after decoding");
    assert!(
        !decoded.contains('\\') && !decoded.chars().any(char::is_control),
        "backslash or control character"
    );
    let body = decoded.strip_prefix('/').unwrap_or(&decoded);
    if body.is_empty() {
        return;
    }
    let segments: Vec<&str> = body.split('/').collect();
    for (i, s) in segments.iter().enumerate() {
        assert!(*s != "." && *s != "..", "dot segment in {raw:?}");
        assert!(
            !s.is_empty() || i + 1 == segments.len(),
            "empty segment in {raw:?}"
        );
    }
}

/// RFC 3986 percent-decoding, once; a `%` not followed by two hex digits stays.
fn percent_decode(raw: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}
