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
        )
    }
}
