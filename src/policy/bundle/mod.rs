//! Policy bundles in OPA's format: a `.tar.gz` with `*.rego` modules, `data.json` /
//! `data.yaml` documents (namespaced by their directory, as OPA does), an optional
//! `.manifest` (its `revision` becomes the policy revision) and, when signed, a
//! `.signatures.json` whose JWS lists every file with its hash.
//!
//! Reading is strict and bounded: at most `max_bytes` unpacked, regular files only, no
//! absolute paths or `..`, no name twice. With a verification key configured a bundle
//! must be signed by it, and the signed list must name exactly the files present, each
//! with the right hash; anything else refuses the bundle (the last good one stays).

mod signature;
pub(crate) mod source;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use super::files::{FileSet, Kind, SourceFile, kind_of};
pub use signature::{Verifier, opa_json_hash_input};

/// The file that carries a bundle's signatures.
pub const SIGNATURES_FILE: &str = ".signatures.json";
/// The file that carries a bundle's manifest.
pub const MANIFEST_FILE: &str = ".manifest";
/// Most files in one bundle.
const MAX_FILES: usize = 10_000;
/// Longest manifest revision kept (it becomes a metric label and an evidence field).
const MAX_REVISION_LEN: usize = 128;

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("the bundle is not a gzip-compressed tar archive: {0}")]
    Archive(String),
    #[error("the bundle unpacks to more than {0} bytes")]
    TooLarge(usize),
    #[error("the bundle holds more than {MAX_FILES} files")]
    TooManyFiles,
    #[error("the bundle has an unsafe file name: {0:?}")]
    UnsafeName(String),
    #[error("the bundle holds {0:?} twice")]
    DuplicateFile(String),
    #[error("{0} is not UTF-8")]
    NotUtf8(String),
    #[error("the bundle is not signed ({SIGNATURES_FILE} is missing) and a signature is required")]
    Unsigned,
    #[error("the bundle signature is not valid: {0}")]
    BadSignature(String),
    #[error("{0} is in the bundle but not in its signature")]
    UnsignedFile(String),
    #[error("{0} is in the signature but not in the bundle")]
    MissingFile(String),
    #[error("{0} does not match its signed hash")]
    HashMismatch(String),
    #[error("the manifest is not valid: {0}")]
    Manifest(String),
    #[error("{file}: {message}")]
    Data { file: String, message: String },
}

impl BundleError {
    /// A short, stable label for metrics and `/readyz`.
    pub fn kind(&self) -> &'static str {
        match self {
            BundleError::Archive(_)
            | BundleError::TooLarge(_)
            | BundleError::TooManyFiles
            | BundleError::UnsafeName(_)
            | BundleError::DuplicateFile(_)
            | BundleError::NotUtf8(_)
            | BundleError::Manifest(_)
            | BundleError::Data { .. } => "malformed",
            BundleError::Unsigned
            | BundleError::BadSignature(_)
            | BundleError::UnsignedFile(_)
            | BundleError::MissingFile(_)
            | BundleError::HashMismatch(_) => "verification_failed",
        }
    }
}

/// Unpacks `archive` (at most `max_bytes` after decompression), verifies it when a
/// `verifier` is configured, and turns it into a policy file set named `origin`.
pub(crate) fn read(
    archive: &[u8],
    max_bytes: usize,
    verifier: Option<&Verifier>,
    origin: &str,
) -> Result<FileSet, BundleError> {
    let files = unpack(archive, max_bytes)?;
    if let Some(v) = verifier {
        let signatures = files.get(SIGNATURES_FILE).ok_or(BundleError::Unsigned)?;
        v.verify(signatures, &files)?;
    }
    to_file_set(&files, origin)
}

/// The archive's regular files by normalised name (unverified).
pub(crate) fn unpack(
    archive: &[u8],
    max_bytes: usize,
) -> Result<BTreeMap<String, Vec<u8>>, BundleError> {
    // The limit applies to the decompressed stream: a small archive cannot unpack to
    // gigabytes.
    let hit = std::rc::Rc::new(std::cell::Cell::new(false));
    let capped = Capped {
        inner: flate2::read::GzDecoder::new(archive),
        left: max_bytes,
        hit: hit.clone(),
    };
    let archive_error = |e: std::io::Error| {
        if hit.get() {
            BundleError::TooLarge(max_bytes)
        } else {
            BundleError::Archive(e.to_string())
        }
    };
    let mut tar = tar::Archive::new(capped);
    let mut files = BTreeMap::new();
    let mut total = 0usize;
    let entries = tar.entries().map_err(archive_error)?;
    for entry in entries {
        let mut entry = entry.map_err(archive_error)?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if !kind.is_file() {
            return Err(BundleError::UnsafeName(raw));
        }
        let name = normalise(&raw)?;
        let mut content = Vec::new();
        entry.read_to_end(&mut content).map_err(archive_error)?;
        total += content.len();
        if total > max_bytes {
            return Err(BundleError::TooLarge(max_bytes));
        }
        if files.len() >= MAX_FILES {
            return Err(BundleError::TooManyFiles);
        }
        if files.insert(name.clone(), content).is_some() {
            return Err(BundleError::DuplicateFile(name));
        }
    }
    Ok(files)
}

/// A reader that fails (and says so in `hit`) once more than `left` bytes come out.
struct Capped<R> {
    inner: R,
    left: usize,
    hit: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            if self.inner.read(&mut [0u8; 1])? == 0 {
                return Ok(0);
            }
            self.hit.set(true);
            return Err(std::io::Error::other(
                "the bundle unpacks past its size limit",
            ));
        }
        let max = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n;
        Ok(n)
    }
}

/// `/a/b.rego` and `./a/b.rego` are `a/b.rego`; `..`, empty and backslash segments are
/// refused (they would name a file outside the bundle on some reader).
fn normalise(raw: &str) -> Result<String, BundleError> {
    let trimmed = raw.trim_start_matches("./").trim_start_matches('/');
    let ok = !trimmed.is_empty()
        && !trimmed.contains('\\')
        && trimmed
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    if ok {
        Ok(trimmed.to_string())
    } else {
        Err(BundleError::UnsafeName(raw.to_string()))
    }
}

/// The policy set a bundle holds: its modules, its data namespaced by directory
/// (`roles/data.json` is `data.roles`), and its manifest's revision.
fn to_file_set(files: &BTreeMap<String, Vec<u8>>, origin: &str) -> Result<FileSet, BundleError> {
    let text = |name: &str, bytes: &[u8]| {
        String::from_utf8(bytes.to_vec()).map_err(|_| BundleError::NotUtf8(name.to_string()))
    };
    let mut out = Vec::new();
    let mut named_revision = None;
    for (name, bytes) in files {
        let (dir, base) = name.rsplit_once('/').unwrap_or(("", name.as_str()));
        if name == MANIFEST_FILE {
            named_revision = manifest_revision(&text(name, bytes)?)?;
            continue;
        }
        match (base, kind_of(base)) {
            (_, Some(Kind::Rego)) => out.push(SourceFile {
                name: name.clone(),
                kind: Kind::Rego,
                content: text(name, bytes)?,
            }),
            ("data.json" | "data.yaml" | "data.yml", Some(kind)) => {
                let content = text(name, bytes)?;
                let value: serde_json::Value = match kind {
                    Kind::Json => serde_json::from_str(&content).map_err(|e| data_err(name, e))?,
                    _ if content.trim().is_empty() => continue,
                    _ => serde_yaml_ng::from_str(&content).map_err(|e| data_err(name, e))?,
                };
                out.push(SourceFile {
                    name: name.clone(),
                    kind: Kind::Json,
                    content: namespaced(dir, value).to_string(),
                });
            }
            // Tests, signatures, other files: not part of the policy OPA would load.
            _ => {}
        }
    }
    Ok(FileSet {
        dir: PathBuf::from(origin),
        files: out,
        named_revision,
    })
}

fn data_err(file: &str, e: impl std::fmt::Display) -> BundleError {
    BundleError::Data {
        file: file.to_string(),
        message: e.to_string(),
    }
}

/// `value` under the path of its directory: `a/b` and `{"x":1}` give `{"a":{"b":{"x":1}}}`.
fn namespaced(dir: &str, value: serde_json::Value) -> serde_json::Value {
    dir.split('/')
        .filter(|s| !s.is_empty())
        .rev()
        .fold(value, |inner, key| serde_json::json!({ key: inner }))
}

/// The manifest's `revision`, when it names one. It is printed in logs and metric
/// labels, so only printable ASCII of bounded length is accepted.
fn manifest_revision(text: &str) -> Result<Option<String>, BundleError> {
    let manifest: serde_json::Value =
        serde_json::from_str(text).map_err(|e| BundleError::Manifest(e.to_string()))?;
    match manifest.get("revision") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(r)) if r.is_empty() => Ok(None),
        // "none" is what the gateway reports while it has no policy.
        Some(serde_json::Value::String(r)) if r == "none" => Err(BundleError::Manifest(
            "revision \"none\" is reserved (it means no policy is in force)".into(),
        )),
        Some(serde_json::Value::String(r))
            if r.len() <= MAX_REVISION_LEN && r.bytes().all(|b| (0x21..=0x7e).contains(&b)) =>
        {
            Ok(Some(r.clone()))
        }
        Some(_) => Err(BundleError::Manifest(format!(
            "revision must be a string of at most {MAX_REVISION_LEN} printable ASCII characters without spaces"
        ))),
    }
}

#[cfg(test)]
mod tests;
