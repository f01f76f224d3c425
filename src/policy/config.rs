//! The `policy:` section.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::validate::{Checked, require};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory of `*.rego` and data files. Relative to the config file.
    pub dir: PathBuf,
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
    /// Directory of the shadow policy set. Relative to the config file.
    pub dir: PathBuf,
}

fn default_reload() -> Duration {
    Duration::from_secs(2)
}

impl PolicyConfig {
    /// `dir` must already be resolved against the config file's directory.
    pub fn validate(&self) -> Checked {
        require(
            self.dir.is_dir(),
            "dir",
            &format!("{} is not a directory", self.dir.display()),
        )?;
        if let Some(s) = &self.shadow {
            require(
                s.dir.is_dir(),
                "shadow.dir",
                &format!("{} is not a directory", s.dir.display()),
            )?;
        }
        Ok(())
    }
}
