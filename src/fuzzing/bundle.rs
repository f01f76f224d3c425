//! `bundle`: policy bundles a hostile bundle server can send (archive, names, manifest,
//! data, signatures).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::Digest;

use crate::policy::bundle::{
    BundleError, SIGNATURES_FILE, Verifier, opa_json_hash_input, read, unpack,
};

/// Unpacked size limit for the target (small: the fuzzer's inputs are small).
const LIMIT: usize = 1 << 20;

/// An Ed25519 signing key from `seed` (reproducible: for tests and fuzzing only) and
/// its public key as SPKI PEM, the form `policy.bundle.signing.public_key_file` takes.
pub fn ed25519_test_key(seed: u8) -> (EncodingKey, String) {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    use base64::Engine;
    let pair = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("seed");
    let pkcs8 = pair.to_pkcs8().expect("pkcs8");
    // SubjectPublicKeyInfo for Ed25519 (RFC 8410): a fixed prefix and the 32-byte key.
    let mut spki = hex::decode("302a300506032b6570032100").expect("hex");
    spki.extend_from_slice(pair.public_key().as_ref());
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    (EncodingKey::from_ed_der(pkcs8.as_ref()), pem)
}

/// The fixed signing key and the verifier for it (a fixed seed: runs are reproducible).
fn keys() -> &'static (EncodingKey, Verifier) {
    static KEYS: OnceLock<(EncodingKey, Verifier)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (key, pem) = ed25519_test_key(5);
        let verifier = Verifier::from_pem(pem.as_bytes(), Algorithm::EdDSA, None, None, vec![])
            .expect("verifier");
        (key, verifier)
    })
}

/// A `.tar.gz` of `files` with the names written into the headers as given.
fn tar_gz(files: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        tar.append(&header, content.as_slice()).expect("append");
    }
    let raw = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).expect("gzip");
    gz.finish().expect("gzip")
}

/// `.signatures.json` over `files` as an OPA signer writes it; `None` when a JSON file
/// is not JSON (OPA cannot sign it either).
fn sign(files: &BTreeMap<String, Vec<u8>>) -> Option<Vec<u8>> {
    let mut listed = Vec::new();
    for (name, content) in files {
        let input = if name.ends_with(".json") || name.rsplit('/').next() == Some(".manifest") {
            opa_json_hash_input(&serde_json::from_slice(content).ok()?)
        } else {
            content.clone()
        };
        listed.push(
            serde_json::json!({"name": name, "hash": hex::encode(sha2::Sha256::digest(&input))}),
        );
    }
    let jws = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &serde_json::json!({ "files": listed }),
        &keys().0,
    )
    .ok()?;
    serde_json::to_vec(&serde_json::json!({ "signatures": [jws] })).ok()
}

/// Input: a byte that picks the bit to flip, two bytes that pick the file and the byte,
/// then `name \0 content \0 name \0 content …` (at most 16 files, names ≤ 100 bytes).
/// Properties:
/// - reading never panics, and what it accepts has only normalised names (no leading
///   `/`, no empty, `.` or `..` segment) and a printable, bounded revision;
/// - a bundle signed over exactly the files it unpacks to verifies;
/// - with any bit of a signed non-JSON file flipped, it never verifies.
pub fn bundle(data: &[u8]) {
    let [bit, which, at, rest @ ..] = data else {
        return;
    };
    let parts: Vec<&[u8]> = rest.split(|b| *b == 0).collect();
    let files: Vec<(Vec<u8>, Vec<u8>)> = parts
        .chunks(2)
        .filter(|c| c.len() == 2 && !c[0].is_empty() && c[0].len() <= 100)
        .map(|c| (c[0].to_vec(), c[1].to_vec()))
        .take(16)
        .collect();
    let archive = tar_gz(&files);

    if let Ok(set) = read(&archive, LIMIT, None, "fuzz") {
        for f in &set.files {
            assert!(
                !f.name.starts_with('/')
                    && f.name
                        .split('/')
                        .all(|s| !s.is_empty() && s != "." && s != ".."),
                "an unnormalised name was accepted: {:?}",
                f.name
            );
        }
        let revision = set.revision();
        assert!(
            revision.len() <= 128 && revision.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "revision {revision:?}"
        );
    }

    let Ok(mut unpacked) = unpack(&archive, LIMIT) else {
        return;
    };
    if unpacked.contains_key(SIGNATURES_FILE) {
        return;
    }
    let Some(sigs) = sign(&unpacked) else {
        return;
    };
    let verifier = &keys().1;
    if let Err(e) = verifier.verify(&sigs, &unpacked) {
        panic!("a bundle signed over exactly its files did not verify: {e}");
    }

    let raw: Vec<String> = unpacked
        .keys()
        .filter(|n| !n.ends_with(".json") && n.rsplit('/').next() != Some(".manifest"))
        .filter(|n| !unpacked[*n].is_empty())
        .cloned()
        .collect();
    if raw.is_empty() {
        return;
    }
    let name = &raw[usize::from(*which) % raw.len()];
    let content = unpacked.get_mut(name).expect("listed");
    let i = usize::from(*at) % content.len();
    content[i] ^= 1 << (bit % 8);
    match verifier.verify(&sigs, &unpacked) {
        Err(BundleError::HashMismatch(n)) => assert_eq!(&n, name),
        other => panic!("a changed {name:?} was not refused: {other:?}"),
    }
}
