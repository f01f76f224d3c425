//! `evidence:` in the config: the sink, its rotation and retries, the hash chain and
//! its checkpoints, and whether calls stop when records cannot be written.

use super::*;

/// `evidence:` — where evidence records go.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceConfig {
    #[serde(default)]
    pub sink: SinkKind,
    /// File to append to when `sink: file`. Relative to the config file.
    #[serde(default)]
    pub path: Option<std::path::PathBuf>,
    /// Hash-chain every line (tamper evidence; see `ciba-gate evidence verify`).
    #[serde(default = "default_chain")]
    pub chain: bool,
    /// Ed25519 private key (PEM PKCS#8) that signs checkpoints of the chain.
    #[serde(default)]
    pub signing_key: Option<SecretSource>,
    /// Records between two signed checkpoints (one is also written when the writer
    /// goes idle for a second, and when it closes).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// `sink: file`: rotate when the file reaches this many bytes (`path` → `path.1`
    /// → … → `path.<keep>`); the chain continues in the new file.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Rotated files kept.
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// What is refused while evidence cannot be written: `off`, `approvals` (calls
    /// that need a person's approval) or `all`.
    #[serde(default)]
    pub required: Required,
    /// `sink: http`: where batches of records are POSTed.
    #[serde(default)]
    pub http: Option<http_sink::HttpSinkConfig>,
    /// `sink: otlp`: the OpenTelemetry collector that receives records as logs.
    #[serde(default)]
    pub otlp: Option<otlp_sink::OtlpSinkConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Required {
    #[default]
    Off,
    Approvals,
    All,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        EvidenceConfig {
            sink: SinkKind::default(),
            path: None,
            chain: default_chain(),
            signing_key: None,
            checkpoint_every: default_checkpoint_every(),
            max_bytes: None,
            keep: default_keep(),
            required: Required::default(),
            http: None,
            otlp: None,
        }
    }
}

fn default_chain() -> bool {
    true
}
fn default_checkpoint_every() -> u64 {
    1000
}
fn default_keep() -> usize {
    5
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    #[default]
    Stdout,
    File,
    /// Batches POSTed to a collector (OPA's decision-log upload format).
    Http,
    /// OTLP/HTTP logs to an OpenTelemetry collector.
    Otlp,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("signing_key: {0}")]
    Secret(String),
    #[error("signing_key: {0}")]
    Key(#[from] chain::KeyError),
    #[error("signing_key needs chain: true")]
    KeyWithoutChain,
}

impl EvidenceConfig {
    pub fn validate(&self) -> crate::validate::Checked {
        crate::validate::require(
            self.sink != SinkKind::File || self.path.is_some(),
            "path",
            "required when evidence.sink is file",
        )?;
        crate::validate::require(
            (self.sink == SinkKind::Http) == self.http.is_some(),
            "http",
            "give `http: {url}` exactly when evidence.sink is http",
        )?;
        if let Some(h) = &self.http {
            h.validate().map_err(|e| e.under("http"))?;
        }
        crate::validate::require(
            (self.sink == SinkKind::Otlp) == self.otlp.is_some(),
            "otlp",
            "give `otlp: {url}` exactly when evidence.sink is otlp",
        )?;
        if let Some(o) = &self.otlp {
            o.validate().map_err(|e| e.under("otlp"))?;
        }
        crate::validate::require(
            self.signing_key.is_none() || self.chain,
            "signing_key",
            "needs chain: true",
        )?;
        crate::validate::require(
            self.checkpoint_every > 0,
            "checkpoint_every",
            "must be at least 1",
        )?;
        crate::validate::require(
            self.max_bytes.is_none() || self.sink == SinkKind::File,
            "max_bytes",
            "rotation needs sink: file",
        )?;
        crate::validate::require(
            self.max_bytes.is_none_or(|m| m >= 4096),
            "max_bytes",
            "must be at least 4096",
        )
    }

    /// The checkpoint signer, if a key is configured (`base`: the config's directory).
    pub fn signer(&self, base: &Path) -> Result<Option<chain::Signer>, OpenError> {
        let Some(source) = &self.signing_key else {
            return Ok(None);
        };
        if !self.chain {
            return Err(OpenError::KeyWithoutChain);
        }
        let pem = source
            .read_raw(base)
            .map_err(|e| OpenError::Secret(e.to_string()))?;
        Ok(Some(chain::Signer::from_pem(pem.as_bytes())?))
    }

    /// Opens the sink (`path` already resolved against the config file's directory;
    /// `base` resolves the signing key's file).
    pub fn open(&self, base: &Path) -> Result<EvidenceSink, OpenError> {
        let chain = if self.chain {
            Some(chain::Chain::new(self.signer(base)?, self.checkpoint_every))
        } else {
            None
        };
        let out = match (self.sink, &self.path, &self.http, &self.otlp) {
            (SinkKind::File, Some(path), _, _) => Output::file(path, self.max_bytes, self.keep)?,
            (SinkKind::Http, _, Some(http), _) => {
                Output::Http(http_sink::HttpSink::new(http.clone()))
            }
            (SinkKind::Otlp, _, _, Some(otlp)) => {
                Output::Otlp(otlp_sink::OtlpSink::new(otlp.clone()))
            }
            _ => Output::Stream(Box::new(std::io::stdout())),
        };
        Ok(EvidenceSink::spawn_output(out, QUEUE_CAPACITY, chain))
    }
}
