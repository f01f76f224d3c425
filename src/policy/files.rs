//! Reading a policy directory: which files belong to the policy set, their content
//! hash, and the merged data document.
//!
//! Kubernetes ConfigMap volumes look like this:
//! `x.rego -> ..data/x.rego`, `..data -> ..2024_01_01_00_00_00.123`, and the real files
//! in the timestamped directory. Only visible top-level entries are read (following
//! symlinks); every name starting with `.` is skipped, so nothing is loaded twice.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::PolicyError;

/// Deepest directory nesting followed (guards against symlink loops).
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Rego,
    Test,
    Json,
    Yaml,
}

#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    /// Path relative to the policy directory, `/`-separated.
    pub name: String,
    pub kind: Kind,
    pub content: String,
}

#[derive(Debug, Clone)]
pub(crate) struct FileSet {
    pub dir: PathBuf,
    /// Sorted by name.
    pub files: Vec<SourceFile>,
    /// The revision a bundle's manifest names (else the content hash is the revision).
    pub named_revision: Option<String>,
}

impl FileSet {
    /// The bundle's own revision, or a short content hash over names and contents of
    /// all files in the set.
    pub fn revision(&self) -> String {
        match &self.named_revision {
            Some(named) => named.clone(),
            None => self.content_hash(),
        }
    }

    /// Short content hash over names and contents of all files in the set: what
    /// decides whether a set is new (a bundle rebuilt under the same revision is).
    pub fn content_hash(&self) -> String {
        let mut h = Sha256::new();
        for f in &self.files {
            h.update((f.name.len() as u64).to_le_bytes());
            h.update(f.name.as_bytes());
            h.update((f.content.len() as u64).to_le_bytes());
            h.update(f.content.as_bytes());
        }
        let digest = h.finalize();
        hex::encode(&digest[..6])
    }
}

/// Sample input documents (`*.sample.json`) sit beside the policies for `check` and
/// binding-message validation; they are not data.
pub const SAMPLE_SUFFIX: &str = ".sample.json";

pub(crate) fn kind_of(name: &str) -> Option<Kind> {
    if name.ends_with(SAMPLE_SUFFIX) {
        None
    } else if name.ends_with("_test.rego") {
        Some(Kind::Test)
    } else if name.ends_with(".rego") {
        Some(Kind::Rego)
    } else if name.ends_with(".json") {
        Some(Kind::Json)
    } else if name.ends_with(".yaml") || name.ends_with(".yml") {
        Some(Kind::Yaml)
    } else {
        None
    }
}

/// Reads the policy set under `dir`. Test files are included only when `with_tests`.
pub(crate) fn scan(dir: &Path, with_tests: bool) -> Result<FileSet, PolicyError> {
    let mut files = Vec::new();
    walk(dir, "", 0, with_tests, &mut files)?;
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(FileSet {
        dir: dir.to_path_buf(),
        files,
        named_revision: None,
    })
}

/// Adds files named on the command line (`policy eval --data`): a directory's policy
/// files and data, or one `.rego`, `.json` or `.yaml` file. Their data merges with the
/// set's; a leaf set twice is an error naming both files.
pub(crate) fn add_extra(set: &mut FileSet, path: &Path) -> Result<(), PolicyError> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    let shown = path.display().to_string();
    if meta.is_dir() {
        let mut files = Vec::new();
        walk(path, &shown, 0, false, &mut files)?;
        set.files.extend(files);
        return Ok(());
    }
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let Some(kind) = kind_of(file_name) else {
        return Err(PolicyError::Compile {
            path: path.to_path_buf(),
            message: "not a .rego, .json or .yaml file".to_string(),
        });
    };
    let content = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    set.files.push(SourceFile {
        name: shown,
        kind,
        content,
    });
    Ok(())
}

fn io_err(path: &Path, source: std::io::Error) -> PolicyError {
    PolicyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn walk(
    dir: &Path,
    prefix: &str,
    depth: usize,
    with_tests: bool,
    out: &mut Vec<SourceFile>,
) -> Result<(), PolicyError> {
    if depth > MAX_DEPTH {
        return Err(io_err(
            dir,
            std::io::Error::other("directory nesting too deep (symlink loop?)"),
        ));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue; // not UTF-8: cannot be one of ours
        };
        if file_name.starts_with('.') {
            continue; // hidden, ConfigMap `..data` / `..<timestamp>`, editor swap files
        }
        let path = entry.path();
        // Follows symlinks (ConfigMap entries are symlinks into `..data`).
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            // A dangling symlink: mid-swap or stale. It carries no policy.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path, e)),
        };
        let name = if prefix.is_empty() {
            file_name.to_string()
        } else {
            format!("{prefix}/{file_name}")
        };
        if meta.is_dir() {
            walk(&path, &name, depth + 1, with_tests, out)?;
            continue;
        }
        let Some(kind) = kind_of(file_name) else {
            continue;
        };
        if kind == Kind::Test && !with_tests {
            continue;
        }
        let content = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
        out.push(SourceFile {
            name,
            kind,
            content,
        });
    }
    Ok(())
}

/// Parses every data file and deep-merges their top-level objects. The file's path
/// does not namespace its content. Two files setting the same leaf is an error that
/// names both.
pub(crate) fn merge_data(set: &FileSet) -> Result<serde_json::Value, PolicyError> {
    let mut merged = serde_json::Map::new();
    // JSON pointer of each merged value -> file that set it.
    let mut origins: Vec<(String, String)> = Vec::new();
    for f in &set.files {
        let value: serde_json::Value = match f.kind {
            Kind::Json => serde_json::from_str(&f.content).map_err(|e| PolicyError::Compile {
                path: PathBuf::from(&f.name),
                message: format!("invalid JSON: {e}"),
            })?,
            Kind::Yaml => {
                if f.content.trim().is_empty() {
                    continue;
                }
                serde_yaml_ng::from_str(&f.content).map_err(|e| PolicyError::Compile {
                    path: PathBuf::from(&f.name),
                    message: format!("invalid YAML: {e}"),
                })?
            }
            Kind::Rego | Kind::Test => continue,
        };
        let serde_json::Value::Object(obj) = value else {
            if value.is_null() {
                continue; // an empty YAML document
            }
            return Err(PolicyError::Compile {
                path: PathBuf::from(&f.name),
                message: "a data file must hold an object at the top level".to_string(),
            });
        };
        merge_into(&mut merged, obj, "", &f.name, &mut origins)?;
    }
    Ok(serde_json::Value::Object(merged))
}

fn merge_into(
    target: &mut serde_json::Map<String, serde_json::Value>,
    source: serde_json::Map<String, serde_json::Value>,
    pointer: &str,
    file: &str,
    origins: &mut Vec<(String, String)>,
) -> Result<(), PolicyError> {
    for (key, value) in source {
        let here = format!("{pointer}/{key}");
        if !target.contains_key(&key) {
            target.insert(key, value);
            origins.push((here, file.to_string()));
            continue;
        }
        match (target.get_mut(&key), value) {
            (Some(serde_json::Value::Object(existing)), serde_json::Value::Object(obj)) => {
                merge_into(existing, obj, &here, file, origins)?;
            }
            _ => {
                let other = origins
                    .iter()
                    .rev()
                    .find(|(p, _)| {
                        p == &here
                            || here.starts_with(&format!("{p}/"))
                            || p.starts_with(&format!("{here}/"))
                    })
                    .map(|(_, f)| f.as_str())
                    .unwrap_or("another data file");
                let key_path = here.trim_start_matches('/').replace('/', ".");
                return Err(PolicyError::Compile {
                    path: PathBuf::from(file),
                    message: format!("data.{key_path} conflicts with {other}"),
                });
            }
        }
    }
    Ok(())
}
