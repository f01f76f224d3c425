//! The `policy:` section.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::validate::{Checked, require};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory of `*.rego` and data files. Relative to the config file. Exactly one
    /// of `dir` and `bundle`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// An OPA bundle pulled from a bundle server instead of a directory.
    #[serde(default)]
    pub bundle: Option<BundleConfig>,
    /// How often the directory is checked for changes (0s disables hot reload).
    #[serde(default = "default_reload", with = "humantime_serde")]
    pub reload_interval: Duration,
    /// A second policy set decided beside the enforcing one on every call and never
    /// enforced: differences go to the evidence record and a metric.
    #[serde(default)]
    pub shadow: Option<ShadowConfig>,
    /// Record every decision but enforce none: denied and approval-needing calls are
    /// forwarded (for a first deployment). Never the default; loud in logs and /readyz.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// Directory of the shadow policy set. Relative to the config file. Exactly one of
    /// `dir` and `bundle`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The shadow policy set from a bundle server (as `policy.bundle`).
    #[serde(default)]
    pub bundle: Option<BundleConfig>,
}

/// `policy.bundle`: where the bundle comes from and how it is checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    /// `https://…/bundle.tar.gz` (`http://` only from a loopback address).
    pub url: String,
    #[serde(default)]
    pub polling: BundlePolling,
    /// Longest one download may take.
    #[serde(default = "default_bundle_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM bundle of CA certificates to trust for the server (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Sent as `Authorization: Bearer …`.
    #[serde(default)]
    pub token: Option<crate::secret::SecretSource>,
    /// Largest bundle accepted, compressed and unpacked.
    #[serde(default = "default_bundle_max_bytes")]
    pub max_bytes: usize,
    /// With a key, every bundle must carry a valid OPA signature by it.
    #[serde(default)]
    pub signing: Option<BundleSigning>,
}

/// OPA's `polling.min_delay_seconds` / `max_delay_seconds`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundlePolling {
    #[serde(default = "default_min_delay", with = "humantime_serde")]
    pub min_delay: Duration,
    #[serde(default = "default_max_delay", with = "humantime_serde")]
    pub max_delay: Duration,
}

impl Default for BundlePolling {
    fn default() -> Self {
        BundlePolling {
            min_delay: default_min_delay(),
            max_delay: default_max_delay(),
        }
    }
}

/// OPA's `keys` plus `signing`: the public key bundles are verified with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSigning {
    /// PEM public key (RSA, EC or Ed25519). Relative to the config file.
    pub public_key_file: PathBuf,
    /// JWS algorithm: `RS256` (OPA's default), `PS256`, `ES256`, `EdDSA`, …
    #[serde(default = "default_signing_algorithm")]
    pub algorithm: String,
    /// The key's id: a signature naming another key is refused.
    #[serde(default)]
    pub key_id: Option<String>,
    /// When set, the signature's `scope` must equal it.
    #[serde(default)]
    pub scope: Option<String>,
    /// Files not covered by the signature (OPA's `exclude_files`).
    #[serde(default)]
    pub exclude_files: Vec<String>,
}

fn validate_bundle(b: &BundleConfig, key: &str) -> Checked {
    require(
        b.url.starts_with("https://") || b.url.starts_with("http://"),
        &format!("{key}.url"),
        "must be an https:// URL",
    )?;
    require(
        !b.polling.min_delay.is_zero() && b.polling.max_delay >= b.polling.min_delay,
        &format!("{key}.polling"),
        "min_delay must be > 0 and max_delay at least min_delay",
    )
}

fn default_bundle_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_bundle_max_bytes() -> usize {
    32 * 1024 * 1024
}

fn default_min_delay() -> Duration {
    Duration::from_secs(60)
}

fn default_max_delay() -> Duration {
    Duration::from_secs(120)
}

fn default_signing_algorithm() -> String {
    "RS256".into()
}

fn default_reload() -> Duration {
    Duration::from_secs(2)
}

impl PolicyConfig {
    /// `dir` must already be resolved against the config file's directory.
    pub fn validate(&self) -> Checked {
        match (&self.dir, &self.bundle) {
            (Some(dir), None) => require(
                dir.is_dir(),
                "dir",
                &format!("{} is not a directory", dir.display()),
            )?,
            (None, Some(b)) => validate_bundle(b, "bundle")?,
            _ => require(
                false,
                "dir",
                "give exactly one of policy.dir and policy.bundle",
            )?,
        }
        if let Some(s) = &self.shadow {
            match (&s.dir, &s.bundle) {
                (Some(dir), None) => require(
                    dir.is_dir(),
                    "shadow.dir",
                    &format!("{} is not a directory", dir.display()),
                )?,
                (None, Some(b)) => validate_bundle(b, "shadow.bundle")?,
                _ => require(
                    false,
                    "shadow.dir",
                    "give exactly one of policy.shadow.dir and policy.shadow.bundle",
                )?,
            }
        }
        Ok(())
    }
}
