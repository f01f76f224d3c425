//! OPA's bundle signature format: `.signatures.json` is `{"signatures": ["<JWS>"]}`
//! with one compact JWS whose payload lists the bundle's files:
//! `{"files": [{"name", "hash", "algorithm"}], "keyid"?, "scope"?}`. A JSON file (and
//! the `.manifest`) is hashed over its canonical form, every other file over its bytes.

use std::collections::BTreeMap;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::Digest;

use super::{BundleError, SIGNATURES_FILE};

/// Checks bundles against one public key (RSA, EC or Ed25519, PEM).
pub struct Verifier {
    key: DecodingKey,
    algorithm: Algorithm,
    /// The key's name; a signature that names another key is refused.
    key_id: Option<String>,
    /// When set, the signature's `scope` must be exactly this.
    scope: Option<String>,
    /// Files left out of the signature check (OPA's `exclude_files`).
    exclude: Vec<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Signatures {
    signatures: Vec<String>,
}

#[derive(Deserialize)]
struct Payload {
    files: Vec<SignedFile>,
    #[serde(default)]
    keyid: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct SignedFile {
    name: String,
    hash: String,
    #[serde(default)]
    algorithm: Option<String>,
}

impl Verifier {
    /// A verifier for `pem`, a public key for `algorithm` (`RS256`, `PS256`, `ES256`,
    /// `EdDSA`, ...). HMAC algorithms are refused: the gateway would hold the signing key.
    pub fn from_pem(
        pem: &[u8],
        algorithm: Algorithm,
        key_id: Option<String>,
        scope: Option<String>,
        exclude: Vec<String>,
    ) -> Result<Self, String> {
        use Algorithm::*;
        let key = match algorithm {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => DecodingKey::from_rsa_pem(pem),
            ES256 | ES384 => DecodingKey::from_ec_pem(pem),
            EdDSA => DecodingKey::from_ed_pem(pem),
            _ => {
                return Err(format!(
                    "{algorithm:?} signatures are not accepted: configure a public key (RSA, EC or Ed25519)"
                ));
            }
        }
        .map_err(|e| format!("not a {algorithm:?} public key in PEM: {e}"))?;
        Ok(Verifier {
            key,
            algorithm,
            key_id,
            scope,
            exclude,
        })
    }

    /// Verifies the signature and that it names exactly the files present, each with
    /// the hash of its content.
    pub(crate) fn verify(
        &self,
        signatures: &[u8],
        files: &BTreeMap<String, Vec<u8>>,
    ) -> Result<(), BundleError> {
        let bad = |m: String| BundleError::BadSignature(m);
        let sigs: Signatures = serde_json::from_slice(signatures)
            .map_err(|e| bad(format!("{SIGNATURES_FILE} is not valid: {e}")))?;
        let [jws] = sigs.signatures.as_slice() else {
            return Err(bad(format!(
                "{SIGNATURES_FILE} must hold exactly one signature, it holds {}",
                sigs.signatures.len()
            )));
        };
        let mut validation = Validation::new(self.algorithm);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        let header = jsonwebtoken::decode_header(jws).map_err(|e| bad(e.to_string()))?;
        let token = jsonwebtoken::decode::<Payload>(jws, &self.key, &validation)
            .map_err(|e| bad(e.to_string()))?;
        let payload = token.claims;
        if let Some(want) = &self.key_id {
            for named in [header.kid.as_ref(), payload.keyid.as_ref()]
                .into_iter()
                .flatten()
            {
                if named != want {
                    return Err(bad(format!("signed with key {named:?}, not {want:?}")));
                }
            }
        }
        if let Some(want) = &self.scope
            && payload.scope.as_ref() != Some(want)
        {
            return Err(bad(format!("the signature's scope is not {want:?}")));
        }
        let mut signed = BTreeMap::new();
        for f in &payload.files {
            let name = f.name.trim_start_matches('/').to_string();
            if signed.insert(name.clone(), f).is_some() {
                return Err(bad(format!("{name} is listed twice")));
            }
        }
        for (name, content) in files {
            if name == SIGNATURES_FILE || self.exclude.contains(name) {
                continue;
            }
            let entry = signed
                .remove(name.as_str())
                .ok_or_else(|| BundleError::UnsignedFile(name.clone()))?;
            let digest = hash(entry.algorithm.as_deref(), name, content)
                .map_err(|m| bad(format!("{name}: {m}")))?;
            if !digest.eq_ignore_ascii_case(&entry.hash) {
                return Err(BundleError::HashMismatch(name.clone()));
            }
        }
        match signed.into_keys().find(|n| !self.exclude.contains(n)) {
            Some(missing) => Err(BundleError::MissingFile(missing)),
            None => Ok(()),
        }
    }
}

/// The hex digest OPA signs for one file.
fn hash(algorithm: Option<&str>, name: &str, content: &[u8]) -> Result<String, String> {
    let input = if name.ends_with(".json") || name.rsplit('/').next() == Some(".manifest") {
        let value: serde_json::Value =
            serde_json::from_slice(content).map_err(|e| format!("not JSON: {e}"))?;
        opa_json_hash_input(&value)
    } else {
        content.to_vec()
    };
    Ok(match algorithm.unwrap_or("SHA-256") {
        "SHA-256" => hex::encode(sha2::Sha256::digest(&input)),
        "SHA-384" => hex::encode(sha2::Sha384::digest(&input)),
        "SHA-512" => hex::encode(sha2::Sha512::digest(&input)),
        "SHA-224" => hex::encode(sha2::Sha224::digest(&input)),
        "SHA-512-224" => hex::encode(sha2::Sha512_224::digest(&input)),
        "SHA-512-256" => hex::encode(sha2::Sha512_256::digest(&input)),
        other => return Err(format!("hash algorithm {other:?} is not accepted")),
    })
}

/// The bytes OPA hashes for a JSON document: no whitespace, object keys sorted by
/// their bytes, strings escaped as Go's JSON encoder does with HTML escaping off
/// (`"`, `\`, control characters, U+2028 and U+2029), numbers as serde_json writes
/// them (the same text as OPA's for integers and shortest-form decimals).
pub fn opa_json_hash_input(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_canonical(&map[key], out);
            }
            out.push(b'}');
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            c if (c as u32) < 0x20 => {
                let b = c as u8;
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}
