use std::collections::BTreeMap;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::*;

const POLICY: &str = "package ciba_gate\nallow if input.tool.name == \"list\"\n";

/// A `.tar.gz` of `files`, names written as given (the tar builder would refuse or
/// rewrite `/x`, `./x` and `..`, which a hostile server can send).
fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        let bytes = name.as_bytes();
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        header.set_cksum();
        tar.append(&header, *content).unwrap();
    }
    let raw = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    gz.finish().unwrap()
}

/// An Ed25519 key from `seed`: the signer's key and the public key as SPKI PEM.
fn ed25519_pair_from(seed: u8) -> (EncodingKey, Vec<u8>) {
    let (key, pem) = crate::fuzzing::bundle::ed25519_test_key(seed);
    (key, pem.into_bytes())
}

fn ed25519_pair() -> (EncodingKey, Vec<u8>) {
    ed25519_pair_from(7)
}

fn sign(key: &EncodingKey, files: &[(&str, &[u8])], scope: Option<&str>) -> Vec<u8> {
    let listed: Vec<_> = files
        .iter()
        .map(|(name, content)| {
            let input = if name.ends_with(".json") || *name == ".manifest" {
                opa_json_hash_input(&serde_json::from_slice(content).unwrap())
            } else {
                content.to_vec()
            };
            use sha2::Digest;
            json!({"name": name, "hash": hex::encode(sha2::Sha256::digest(&input)), "algorithm": "SHA-256"})
        })
        .collect();
    let mut claims = json!({"files": listed, "keyid": "global_key"});
    if let Some(s) = scope {
        claims["scope"] = json!(s);
    }
    let jws = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, key).unwrap();
    serde_json::to_vec(&json!({"signatures": [jws]})).unwrap()
}

fn verifier(public: &[u8]) -> Verifier {
    Verifier::from_pem(
        public,
        Algorithm::EdDSA,
        Some("global_key".into()),
        None,
        vec![],
    )
    .unwrap()
}

#[test]
fn a_bundle_holds_its_modules_its_namespaced_data_and_its_revision() {
    let files: &[(&str, &[u8])] = &[
        ("/policy.rego", POLICY.as_bytes()),
        ("roles/data.json", br#"{"admins": ["a"]}"#),
        ("data.yaml", b"limits: {max: 3}\n"),
        ("policy_test.rego", b"package x\n"),
        ("README.md", b"not policy"),
        (".manifest", br#"{"revision": "v42", "roots": [""]}"#),
    ];
    let set = read(&archive(files), 1 << 20, None, "test").unwrap();
    assert_eq!(set.revision(), "v42");
    let names: Vec<&str> = set.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["data.yaml", "policy.rego", "roles/data.json"]);
    let data = crate::policy::files::merge_data(&set).unwrap();
    assert_eq!(data["roles"]["admins"], json!(["a"]));
    assert_eq!(data["limits"]["max"], json!(3));
}

#[test]
fn a_signed_bundle_verifies_and_any_change_to_it_is_refused() {
    let (private, public) = ed25519_pair();
    let files: &[(&str, &[u8])] = &[
        ("policy.rego", POLICY.as_bytes()),
        ("data.json", br#"{"b": 1, "a": "x<y"}"#),
        (".manifest", br#"{"revision": "r1"}"#),
    ];
    let sigs = sign(&private, files, None);
    let mut signed = files.to_vec();
    signed.push((SIGNATURES_FILE, &sigs));
    let v = verifier(&public);
    assert!(read(&archive(&signed), 1 << 20, Some(&v), "t").is_ok());

    // An edited module.
    let mut tampered = signed.clone();
    tampered[0] = ("policy.rego", b"package ciba_gate\nallow := true\n");
    assert_eq!(
        read(&archive(&tampered), 1 << 20, Some(&v), "t").unwrap_err(),
        BundleError::HashMismatch("policy.rego".into())
    );
    // A file added after signing.
    let mut added = signed.clone();
    added.push(("extra.rego", b"package ciba_gate\nallow := true\n"));
    assert_eq!(
        read(&archive(&added), 1 << 20, Some(&v), "t").unwrap_err(),
        BundleError::UnsignedFile("extra.rego".into())
    );
    // A signed file removed.
    let removed: Vec<_> = signed
        .iter()
        .copied()
        .filter(|(n, _)| *n != "data.json")
        .collect();
    assert_eq!(
        read(&archive(&removed), 1 << 20, Some(&v), "t").unwrap_err(),
        BundleError::MissingFile("data.json".into())
    );
    // No signature at all.
    assert_eq!(
        read(&archive(files), 1 << 20, Some(&v), "t").unwrap_err(),
        BundleError::Unsigned
    );
    // Signed by another key.
    let (other, _) = ed25519_pair_from(9);
    let forged = sign(&other, files, None);
    let mut by_other = files.to_vec();
    by_other.push((SIGNATURES_FILE, &forged));
    assert!(matches!(
        read(&archive(&by_other), 1 << 20, Some(&v), "t").unwrap_err(),
        BundleError::BadSignature(_)
    ));
}

#[test]
fn a_required_scope_must_be_the_signatures() {
    let (private, public) = ed25519_pair();
    let files: &[(&str, &[u8])] = &[("policy.rego", POLICY.as_bytes())];
    let sigs = sign(&private, files, Some("read"));
    let mut signed = files.to_vec();
    signed.push((SIGNATURES_FILE, &sigs));
    let v = Verifier::from_pem(
        &public,
        Algorithm::EdDSA,
        None,
        Some("write".into()),
        vec![],
    )
    .unwrap();
    assert!(matches!(
        read(&archive(&signed), 1 << 20, Some(&v), "t").unwrap_err(),
        BundleError::BadSignature(m) if m.contains("scope")
    ));
}

#[test]
fn unsafe_names_duplicates_and_bombs_are_refused() {
    for name in ["../x.rego", "a/../../x.rego", "a//b.rego", "a\\b.rego"] {
        let err = read(&archive(&[(name, b"x")]), 1 << 20, None, "t").unwrap_err();
        assert!(matches!(err, BundleError::UnsafeName(_)), "{name}: {err}");
    }
    let dup = archive(&[("a.rego", b"package a\n"), ("./a.rego", b"package b\n")]);
    assert_eq!(
        read(&dup, 1 << 20, None, "t").unwrap_err(),
        BundleError::DuplicateFile("a.rego".into())
    );
    let zeros = vec![0u8; 4 << 20];
    let bomb = archive(&[("data.json", &zeros)]);
    assert!(bomb.len() < 64 << 10, "compressed to {}", bomb.len());
    assert_eq!(
        read(&bomb, 1 << 20, None, "t").unwrap_err(),
        BundleError::TooLarge(1 << 20)
    );
    assert!(matches!(
        read(b"not gzip", 1 << 20, None, "t").unwrap_err(),
        BundleError::Archive(_)
    ));
}

#[test]
fn a_manifest_revision_is_printable_and_bounded() {
    for bad in [
        r#"{"revision": "a b"}"#,
        r#"{"revision": 7}"#,
        r#"{"revision": "none"}"#,
    ] {
        let files: &[(&str, &[u8])] = &[(".manifest", bad.as_bytes())];
        assert!(matches!(
            read(&archive(files), 1 << 20, None, "t").unwrap_err(),
            BundleError::Manifest(_)
        ));
    }
    let long = format!(r#"{{"revision": "{}"}}"#, "r".repeat(200));
    let files: &[(&str, &[u8])] = &[(".manifest", long.as_bytes())];
    assert!(read(&archive(files), 1 << 20, None, "t").is_err());
}

#[test]
fn json_is_hashed_over_opas_canonical_form() {
    let v: serde_json::Value = serde_json::from_str(
        "{\"b\": [1, 2.5, true, null], \"a\": \"<&>\\u2028\\n\\u0001\", \"B\": {}}",
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(opa_json_hash_input(&v)).unwrap(),
        "{\"B\":{},\"a\":\"<&>\\u2028\\n\\u0001\",\"b\":[1,2.5,true,null]}"
    );
    let _ = BTreeMap::<String, Vec<u8>>::new();
}
