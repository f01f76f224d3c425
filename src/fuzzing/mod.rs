//! Property checks for the fuzz targets in `fuzz/` and for `tests/fuzz_corpus.rs`, which
//! replays the committed corpora through the same functions on stable Rust. Each
//! function takes the fuzzer's bytes and panics when a property fails; "no panic" alone
//! is never the property. Not an API: hidden from the docs, free to change.

pub mod bundle;
pub mod callback;
pub mod config;
pub mod id_token;
pub mod json;
pub mod mcp;
pub mod policy_input;
pub mod request_state;
pub mod routes;

/// A target's property check: panics when a property fails on the input.
pub type Property = fn(&[u8]);

/// Every target: its name (as in `fuzz/fuzz_targets/` and `fuzz/corpus/`) and property.
pub const TARGETS: &[(&str, Property)] = &[
    ("json_strict", json::json_strict),
    ("mcp_body", mcp::mcp_body),
    ("policy_input", policy_input::policy_input),
    ("http_route", routes::http_route),
    ("callback", callback::callback),
    ("id_token", id_token::id_token),
    ("request_state", request_state::request_state),
    ("config", config::config),
    ("bundle", bundle::bundle),
];

/// Whether two JSON values are the same document, numbers compared by value (`1.0` and
/// `1` are one number; serde keeps them apart as f64 and u64).
pub fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => same_number(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

fn same_number(x: &serde_json::Number, y: &serde_json::Number) -> bool {
    let int = |n: &serde_json::Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (int(x), int(y)) {
        (Some(a), Some(b)) => a == b,
        // An integer and a float: equal when the float is that integer exactly.
        (Some(a), None) | (None, Some(a)) => {
            let f = x.as_f64().filter(|_| int(x).is_none()).or(y.as_f64());
            f.is_some_and(|f| f.fract() == 0.0 && f.abs() < 1e38 && f as i128 == a)
        }
        (None, None) => x.as_f64() == y.as_f64(),
    }
}

/// Splits `data` at the first `sep`: (before, after); all of it when there is none.
pub(crate) fn split_at_byte(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match memchr::memchr(sep, data) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
