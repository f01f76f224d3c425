//! `json_strict`: the strict parser against serde_json and an independent key check.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::json_strict::{self, Limits};

/// Properties of [`json_strict::parse`] on any bytes:
/// - an accepted body is JSON serde_json reads to the same `Value`;
/// - it has no duplicate keys and no keys equal up to letter case in any object
///   (checked independently, through serde_json's raw values);
/// - its numbers are finite, not negative zero, and integers a double holds exactly;
/// - serialised (compact and pretty) it parses strictly again to the same value;
/// - a body serde_json reads is never a parse error (-32700), only a refusal (-32600);
/// - accepted with case checks on means accepted with them off.
pub fn json_strict(data: &[u8]) {
    let limits = Limits::default();
    let lax = serde_json::from_slice::<Value>(data);
    match json_strict::parse(data, limits) {
        Ok(value) => {
            let lax = lax.expect("accepted by the strict parser but not by serde_json");
            assert_eq!(value, lax, "the strict value differs from serde_json's");
            let mut keys = KeyCheck::default();
            check_keys(data, &mut keys, 0);
            assert!(keys.problem.is_none(), "accepted JSON: {:?}", keys.problem);
            check_numbers(&value);
            for text in [
                serde_json::to_vec(&value).expect("serialise"),
                serde_json::to_vec_pretty(&value).expect("serialise"),
            ] {
                let again = json_strict::parse(&text, limits)
                    .expect("a re-serialised accepted body is accepted");
                assert_eq!(again, value, "re-serialised body reads differently");
            }
            let lenient = Limits {
                refuse_case_variant_keys: false,
                ..limits
            };
            assert_eq!(json_strict::parse(data, lenient).ok(), Some(value));
        }
        Err(error) => {
            if lax.is_ok() {
                assert!(
                    !error.is_parse_error(),
                    "serde_json reads it but it is called not JSON: {error:?}"
                );
            }
            assert_eq!(error.jsonrpc_code() == -32700, error.is_parse_error());
            let pointer = error
                .location()
                .map(|l| l.pointer.clone())
                .unwrap_or_default();
            assert!(
                pointer.is_empty() || pointer.starts_with('/'),
                "bad pointer {pointer:?}"
            );
            assert!(
                !pointer.chars().any(char::is_control),
                "control character in a pointer"
            );
        }
    }
}

/// Numbers a strict body may hold.
fn check_numbers(value: &Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                assert!(f.is_finite(), "non-finite number accepted");
                assert!(!(f == 0.0 && f.is_sign_negative()), "-0 accepted");
            } else if let Some(i) = n.as_i64() {
                assert_eq!(i as f64 as i128, i128::from(i), "inexact integer {i}");
            } else if let Some(u) = n.as_u64() {
                assert_eq!(u as f64 as i128, i128::from(u), "inexact integer {u}");
            }
        }
        Value::Array(items) => items.iter().for_each(check_numbers),
        Value::Object(map) => map.values().for_each(check_numbers),
        _ => {}
    }
}

#[derive(Default)]
struct KeyCheck {
    problem: Option<String>,
}

/// Walks a document through serde_json's `RawValue`s: each object is read as a list of
/// (key, raw value) pairs, keys compared exactly and case-folded, each raw value walked
/// in turn. Shares no code with the strict parser's own checks.
fn check_keys(text: &[u8], out: &mut KeyCheck, depth: usize) {
    if out.problem.is_some() || depth > 200 {
        return;
    }
    let mut de = serde_json::Deserializer::from_slice(text);
    let children = match (&mut de).deserialize_any(RawWalk) {
        Ok(children) => children,
        Err(e) => {
            out.problem = Some(format!("raw walk failed: {e}"));
            return;
        }
    };
    match children {
        Children::Object(pairs) => {
            let mut exact = HashSet::new();
            let mut folded = HashSet::new();
            for (key, _) in &pairs {
                if !exact.insert(key.clone()) {
                    out.problem = Some(format!("duplicate key {key:?}"));
                    return;
                }
                let fold: String = key
                    .chars()
                    .flat_map(char::to_uppercase)
                    .flat_map(char::to_lowercase)
                    .collect();
                if !folded.insert(fold) {
                    out.problem = Some(format!("keys equal up to case: {key:?}"));
                    return;
                }
            }
            for (_, raw) in pairs {
                check_keys(raw.get().as_bytes(), out, depth + 1);
            }
        }
        Children::Array(items) => {
            for raw in items {
                check_keys(raw.get().as_bytes(), out, depth + 1);
            }
        }
        Children::Scalar => {}
    }
}

enum Children {
    Object(Vec<(String, Box<RawValue>)>),
    Array(Vec<Box<RawValue>>),
    Scalar,
}

struct RawWalk;

impl<'de> Visitor<'de> for RawWalk {
    type Value = Children;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Children, E> {
        Ok(Children::Scalar)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Children, E> {
        Ok(Children::Scalar)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Children, E> {
        Ok(Children::Scalar)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Children, E> {
        Ok(Children::Scalar)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Children, E> {
        Ok(Children::Scalar)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Children, E> {
        Ok(Children::Scalar)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Children, A::Error> {
        let mut items = Vec::new();
        while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
            items.push(raw);
        }
        Ok(Children::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Children, A::Error> {
        let mut pairs = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let raw = map.next_value::<Box<RawValue>>()?;
            pairs.push((key, raw));
        }
        Ok(Children::Object(pairs))
    }
}
