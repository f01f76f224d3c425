//! Fingerprints of tool calls: SHA-256 over the RFC 8785 canonical JSON form, so the
//! same arguments give the same fingerprint whatever their key order or spacing.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Hex SHA-256 of the canonical JSON of `value` (RFC 8785, JSON Canonicalization Scheme).
pub fn of_json(value: &Value) -> String {
    // Canonicalization fails only for values JSON cannot carry (never for a parsed Value).
    let canonical = serde_json_canonicalizer::to_vec(value).unwrap_or_default();
    hex::encode(Sha256::digest(&canonical))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_spacing_do_not_change_the_fingerprint() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": "s"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(of_json(&a), of_json(&b));
        assert_ne!(
            of_json(&a),
            of_json(&json!({"b": 2, "a": {"x": "s", "y": [1, 2]}}))
        );
        assert_eq!(of_json(&a).len(), 64);
    }

    #[test]
    fn numbers_are_canonical() {
        assert_eq!(
            of_json(&json!({"n": 1.0})),
            of_json(&serde_json::from_str::<Value>(r#"{"n":1}"#).unwrap())
        );
    }
}
