//! `ciba-gate evidence verify` and `ciba-gate evidence public-key`: checking that an
//! evidence log was not altered.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::audit::chain::{self, At, Signer, VerifyingKey};

/// Exit codes: 0 the chain holds (the output says how much a signed checkpoint
/// covers), 1 a record was edited, deleted, inserted or reordered, or a checkpoint
/// does not verify.
pub fn verify(files: &[PathBuf], key: Option<&Path>) -> anyhow::Result<ExitCode> {
    let key = match key {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Some(VerifyingKey::from_pem(&pem).with_context(|| path.display().to_string())?)
        }
        None => None,
    };
    let mut texts = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        texts.push((f.display().to_string(), text));
    }
    let lines: Vec<(At, &str)> = texts
        .iter()
        .flat_map(|(file, text)| {
            text.lines().enumerate().map(move |(i, l)| {
                (
                    At {
                        file: file.clone(),
                        line: i + 1,
                    },
                    l,
                )
            })
        })
        .collect();
    let v = chain::verify(&lines, key.as_ref());
    if let Some(t) = &v.tamper {
        println!("FAIL: {t}");
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "ok: {} records in {} chain(s), {} signed checkpoint(s) verified",
        v.records, v.chains, v.checkpoints
    );
    if key.is_none() {
        println!(
            "  no --key: checkpoints not checked; the chain shows edits, deletions and reordering, not a cut-off or rewritten tail"
        );
    }
    for (chain, seq) in &v.starts_later {
        println!(
            "  chain {chain}: starts at record {seq}; records 0..{seq} are not in these files (rotated away, or cut off)"
        );
    }
    for (chain, n) in &v.uncovered {
        println!(
            "  chain {chain}: the last {n} record(s) are after its last signed checkpoint (not covered)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the PEM public key of a checkpoint signing key.
pub fn public_key(signing_key: &Path) -> anyhow::Result<ExitCode> {
    let pem =
        std::fs::read(signing_key).with_context(|| format!("reading {}", signing_key.display()))?;
    let signer = Signer::from_pem(&pem).with_context(|| signing_key.display().to_string())?;
    print!("{}", signer.public_key_pem());
    Ok(ExitCode::SUCCESS)
}
