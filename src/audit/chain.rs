//! Tamper-evident evidence: every line written carries its place in a hash chain
//! (`"chain": {"id", "seq", "prev"}`, `prev` the SHA-256 of the previous line of the
//! same chain), and with a signing key the writer adds a signed checkpoint line every
//! `checkpoint_every` records, when it goes idle, and when it closes. A chain is one
//! writer's run over one file: a restart starts a new chain (new `id`, `seq` 0).
//!
//! `verify` reads lines back and reports the first one that breaks the chain: an
//! edited line (the next line's `prev` no longer matches), a deleted one (a gap in
//! `seq`), an inserted or reordered one (a `seq` out of order), a forged checkpoint;
//! and how many records at the end of each chain no signed checkpoint covers (those
//! could be cut off unnoticed: the chain alone cannot tell a truncated tail).

use std::collections::BTreeMap;

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use sha2::{Digest, Sha256};

/// What the signature of a checkpoint covers: its time and its own place in its
/// chain (and so, through `prev`, every line before it).
fn checkpoint_message(id: &str, seq: u64, prev: &str, time: &str) -> Vec<u8> {
    format!("ciba-gate evidence checkpoint v1\n{id}\n{seq}\n{prev}\n{time}").into_bytes()
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM PKCS#8 Ed25519 private key ({0})")]
    Private(String),
    #[error("not a PEM Ed25519 public key (SubjectPublicKeyInfo)")]
    Public,
}

/// The checkpoint signing key.
pub struct Signer {
    pair: Ed25519KeyPair,
    /// First 16 hex digits of SHA-256 over the public key: names the key in checkpoints.
    key_id: String,
}

impl Signer {
    /// From a PEM `PRIVATE KEY` (PKCS#8, as `openssl genpkey -algorithm ed25519` writes).
    pub fn from_pem(pem: &[u8]) -> Result<Signer, KeyError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|e| KeyError::Private(e.to_string()))?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| KeyError::Private(e.to_string()))?;
        let key_id = key_id(pair.public_key().as_ref());
        Ok(Signer { pair, key_id })
    }

    /// The public key as PEM (`PUBLIC KEY`), for `evidence verify --key`.
    pub fn public_key_pem(&self) -> String {
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.pair.public_key().as_ref());
        let b64 = STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }
}

fn key_id(public: &[u8]) -> String {
    hex::encode(&Sha256::digest(public)[..8])
}

/// A verification key, from a PEM `PUBLIC KEY`.
pub struct VerifyingKey {
    raw: Vec<u8>,
    key_id: String,
}

impl VerifyingKey {
    pub fn from_pem(pem: &[u8]) -> Result<VerifyingKey, KeyError> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem).map_err(|_| KeyError::Public)?;
        let raw = der
            .as_ref()
            .strip_prefix(&ED25519_SPKI_PREFIX[..])
            .filter(|k| k.len() == 32)
            .ok_or(KeyError::Public)?
            .to_vec();
        Ok(VerifyingKey {
            key_id: key_id(&raw),
            raw,
        })
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.raw)
            .verify(message, signature)
            .is_ok()
    }
}

/// The writer's side: seals each line into the chain.
pub struct Chain {
    id: String,
    seq: u64,
    prev: String,
    signer: Option<Signer>,
    every: u64,
    since_checkpoint: u64,
}

impl Chain {
    pub fn new(signer: Option<Signer>, checkpoint_every: u64) -> Chain {
        Chain {
            id: format!("{:032x}", rand::random::<u128>()),
            seq: 0,
            prev: "0".repeat(64),
            signer,
            every: checkpoint_every.max(1),
            since_checkpoint: 0,
        }
    }

    /// Adds the chain member to one serialized JSON object (`{…}` in `line`) and
    /// advances the chain. A line that is not an object is left as it is.
    pub fn seal(&mut self, line: &mut Vec<u8>) {
        if line.last() != Some(&b'}') {
            return;
        }
        line.pop();
        if line.len() > 1 {
            line.push(b',');
        }
        line.extend_from_slice(
            format!(
                "\"chain\":{{\"id\":\"{}\",\"seq\":{},\"prev\":\"{}\"}}}}",
                self.id, self.seq, self.prev
            )
            .as_bytes(),
        );
        self.prev = hex::encode(Sha256::digest(&line[..]));
        self.seq += 1;
        self.since_checkpoint += 1;
    }

    /// True when `checkpoint_every` records were sealed since the last checkpoint.
    pub fn checkpoint_due(&self) -> bool {
        self.signer.is_some() && self.since_checkpoint >= self.every
    }

    /// A signed checkpoint line (sealed into the chain) if there is a key and any
    /// record since the last one.
    pub fn checkpoint(&mut self, time: &str) -> Option<Vec<u8>> {
        let signer = self.signer.as_ref()?;
        if self.since_checkpoint == 0 {
            return None;
        }
        let signature = signer
            .pair
            .sign(&checkpoint_message(&self.id, self.seq, &self.prev, time));
        let mut line = format!(
            "{{\"time\":\"{time}\",\"checkpoint\":{{\"key_id\":\"{}\",\"signature\":\"{}\"}}}}",
            signer.key_id,
            STANDARD.encode(signature.as_ref())
        )
        .into_bytes();
        self.seal(&mut line);
        self.since_checkpoint = 0;
        Some(line)
    }
}

/// Where a line came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    pub file: String,
    pub line: usize,
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// The first thing that breaks the evidence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Tamper {
    #[error("{0}: not a chained evidence record (inserted, damaged, or written without a chain)")]
    NotChained(At),
    #[error("{at}: chain {chain} starts at record {seq}: records 0..{seq} are missing (deleted)")]
    MissingStart { at: At, chain: String, seq: u64 },
    #[error("{at}: records {from}..{to} of chain {chain} are missing (deleted)")]
    Deleted {
        at: At,
        chain: String,
        from: u64,
        to: u64,
    },
    #[error("{at}: record {seq} of chain {chain} should come here but is at {found} (reordered)")]
    Reordered {
        at: At,
        chain: String,
        seq: u64,
        found: At,
    },
    #[error(
        "{at}: record {seq} of chain {chain} comes after record {after} (inserted or reordered)"
    )]
    OutOfOrder {
        at: At,
        chain: String,
        seq: u64,
        after: u64,
    },
    #[error(
        "{edited}: this record was edited (the next record of its chain, at {noticed}, holds another hash for it)"
    )]
    Edited { edited: At, noticed: At },
    #[error(
        "{0}: the checkpoint's signature does not verify with the given key (forged or edited)"
    )]
    BadCheckpoint(At),
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Verified {
    pub records: u64,
    pub chains: usize,
    pub checkpoints: u64,
    /// Per chain: records after its last verified checkpoint (all of them without a key).
    pub uncovered: BTreeMap<String, u64>,
    /// Chains whose first line (the first line of a file) is record N > 0: what came
    /// before is not in the files given (rotated away, or cut off).
    pub starts_later: BTreeMap<String, u64>,
    pub tamper: Option<Tamper>,
}

struct ChainState {
    next: u64,
    last_hash: String,
    last_at: At,
    uncovered: u64,
}

/// Checks lines (in file order, files in the order given) against the chain, and
/// checkpoints against `key` when one is given. Stops at the first problem.
pub fn verify(lines: &[(At, &str)], key: Option<&VerifyingKey>) -> Verified {
    let mut out = Verified::default();
    let mut chains: BTreeMap<String, ChainState> = BTreeMap::new();
    for (index, (at, text)) in lines.iter().enumerate() {
        let (at, text) = (at.clone(), *text);
        if text.trim().is_empty() {
            continue;
        }
        let Some((id, seq, prev, checkpoint)) = parse(text) else {
            out.tamper = Some(Tamper::NotChained(at));
            break;
        };
        let hash = hex::encode(Sha256::digest(text.as_bytes()));
        match chains.get_mut(&id) {
            None => {
                if seq != 0 {
                    // A file may begin mid-chain (the files before it rotated away);
                    // anywhere else a chain must start at 0.
                    if at.line != 1 {
                        out.tamper = Some(Tamper::MissingStart { at, chain: id, seq });
                        break;
                    }
                    out.starts_later.insert(id.clone(), seq);
                }
                chains.insert(
                    id.clone(),
                    ChainState {
                        next: seq + 1,
                        last_hash: hash,
                        last_at: at.clone(),
                        uncovered: 1,
                    },
                );
            }
            Some(state) => {
                if seq > state.next {
                    // Further on: moved (reordered); nowhere: deleted.
                    let found = lines[index + 1..].iter().find(|(_, l)| {
                        parse(l).is_some_and(|(i, s, _, _)| i == id && s == state.next)
                    });
                    if let Some((found, _)) = found {
                        out.tamper = Some(Tamper::Reordered {
                            at,
                            chain: id,
                            seq: state.next,
                            found: found.clone(),
                        });
                        break;
                    }
                    out.tamper = Some(Tamper::Deleted {
                        at,
                        chain: id,
                        from: state.next,
                        to: seq,
                    });
                    break;
                }
                if seq < state.next {
                    out.tamper = Some(Tamper::OutOfOrder {
                        at,
                        chain: id,
                        seq,
                        after: state.next - 1,
                    });
                    break;
                }
                if prev != state.last_hash {
                    out.tamper = Some(Tamper::Edited {
                        edited: state.last_at.clone(),
                        noticed: at,
                    });
                    break;
                }
                state.next += 1;
                state.last_hash = hash;
                state.last_at = at.clone();
                state.uncovered += 1;
            }
        }
        out.records += 1;
        if let (Some((key_id, signature, time)), Some(key)) = (checkpoint, key) {
            let message = checkpoint_message(&id, seq, &prev, &time);
            let ok = key_id == key.key_id
                && STANDARD
                    .decode(signature)
                    .is_ok_and(|sig| key.verifies(&message, &sig));
            if !ok {
                out.tamper = Some(Tamper::BadCheckpoint(at));
                break;
            }
            out.checkpoints += 1;
            if let Some(state) = chains.get_mut(&id) {
                state.uncovered = 0;
            }
        }
    }
    out.chains = chains.len();
    out.uncovered = chains
        .into_iter()
        .filter(|(_, s)| s.uncovered > 0)
        .map(|(id, s)| (id, s.uncovered))
        .collect();
    out
}

/// The chain member of a line, and its checkpoint (key id, signature, time) if it is one.
#[allow(clippy::type_complexity)]
fn parse(text: &str) -> Option<(String, u64, String, Option<(String, String, String)>)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let c = v.get("chain")?;
    let id = c.get("id")?.as_str()?.to_string();
    let seq = c.get("seq")?.as_u64()?;
    let prev = c.get("prev")?.as_str()?.to_string();
    let checkpoint = v.get("checkpoint").map(|k| {
        (
            k["key_id"].as_str().unwrap_or_default().to_string(),
            k["signature"].as_str().unwrap_or_default().to_string(),
            v["time"].as_str().unwrap_or_default().to_string(),
        )
    });
    Some((id, seq, prev, checkpoint))
}
