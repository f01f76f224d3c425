//! Pulling a bundle from a bundle server, as OPA's bundle plugin does: `GET` with
//! `If-None-Match` (a `304` changes nothing), a poll delay drawn between `min_delay`
//! and `max_delay`, exponential backoff up to `max_delay` while the server fails. A
//! bundle that does not download, verify or compile leaves the last good one in force;
//! the failure is counted, logged once per kind and shown in `/readyz`.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::{BundleError, Verifier};
use crate::policy::config::BundleConfig;
use crate::policy::files::FileSet;
use crate::policy::{PolicyEngine, PolicyError};

/// A configured bundle server, ready to be polled.
#[derive(Debug)]
pub struct BundleSource {
    url: reqwest::Url,
    client: reqwest::Client,
    token: Option<SecretString>,
    max_bytes: usize,
    verifier: Option<Verifier>,
    min_delay: Duration,
    max_delay: Duration,
}

/// What one poll brought.
#[derive(Debug)]
pub enum Fetched {
    /// `304 Not Modified`: the bundle in force is current.
    NotModified,
    /// A new bundle, read and verified (not yet compiled).
    Bundle { set: FileSet, etag: Option<String> },
}

/// Why one poll brought nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("could not download the bundle: {0}")]
    Download(String),
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

impl FetchError {
    /// A short, stable label for metrics and `/readyz`.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Download(_) => "download_failed",
            FetchError::Bundle(e) => e.kind(),
        }
    }
}

impl BundleSource {
    /// Reads the key, the CA and the token; `base` is the config file's directory.
    pub fn resolve(cfg: &BundleConfig, base: &Path) -> Result<Self, String> {
        let url = reqwest::Url::parse(&cfg.url).map_err(|e| format!("url: {e}"))?;
        let loopback = url.host_str().is_some_and(|h| {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
                || h == "[::1]"
        });
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => {
                return Err(
                    "url: bundles are pulled over https (http only from a loopback address)".into(),
                );
            }
        }
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &cfg.ca_file {
            let path = base.join(ca);
            let pem = std::fs::read(&path)
                .map_err(|e| format!("ca_file: cannot read {}: {e}", path.display()))?;
            for cert in
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("ca_file: {e}"))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| format!("url: {e}"))?;
        let token = match &cfg.token {
            Some(t) => Some(t.read(base).map_err(|e| format!("token: {e}"))?),
            None => None,
        };
        let verifier = match &cfg.signing {
            Some(s) => {
                let path = base.join(&s.public_key_file);
                let pem = std::fs::read(&path).map_err(|e| {
                    format!(
                        "signing.public_key_file: cannot read {}: {e}",
                        path.display()
                    )
                })?;
                let algorithm = jsonwebtoken::Algorithm::from_str(&s.algorithm).map_err(|_| {
                    format!(
                        "signing.algorithm: {:?} is not a JWS algorithm",
                        s.algorithm
                    )
                })?;
                Some(
                    Verifier::from_pem(
                        &pem,
                        algorithm,
                        s.key_id.clone(),
                        s.scope.clone(),
                        s.exclude_files.clone(),
                    )
                    .map_err(|e| format!("signing: {e}"))?,
                )
            }
            None => None,
        };
        if cfg.polling.min_delay.is_zero() || cfg.polling.max_delay < cfg.polling.min_delay {
            return Err("polling: min_delay must be > 0 and max_delay ≥ min_delay".into());
        }
        Ok(BundleSource {
            url,
            client,
            token,
            max_bytes: cfg.max_bytes,
            verifier,
            min_delay: cfg.polling.min_delay,
            max_delay: cfg.polling.max_delay,
        })
    }

    /// The URL without its query (which may carry a credential), for logs and `/readyz`.
    pub fn name(&self) -> String {
        let mut shown = self.url.clone();
        shown.set_query(None);
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        shown.to_string()
    }

    /// Whether bundles must carry a valid signature.
    pub fn verifies(&self) -> bool {
        self.verifier.is_some()
    }

    /// One `GET`. `etag` is the tag of the bundle in force.
    pub async fn fetch(&self, etag: Option<&str>) -> Result<Fetched, FetchError> {
        let download = |e: String| FetchError::Download(e);
        let mut req = self.client.get(self.url.clone());
        if let Some(tag) = etag {
            req = req.header(http::header::IF_NONE_MATCH, tag);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose_secret());
        }
        let mut resp = req.send().await.map_err(|e| download(without_url(e)))?;
        let status = resp.status();
        if status == http::StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        if !status.is_success() {
            return Err(download(format!(
                "the server answered HTTP {}",
                status.as_u16()
            )));
        }
        let etag = resp
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // The compressed archive is bounded too (it cannot be larger than what it holds
        // by much, and a server must not stream forever).
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| download(without_url(e)))? {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(BundleError::TooLarge(self.max_bytes).into());
            }
            body.extend_from_slice(&chunk);
        }
        let set = super::read(&body, self.max_bytes, self.verifier.as_ref(), &self.name())?;
        Ok(Fetched::Bundle { set, etag })
    }

    /// Polls for ever: activates each new bundle in `engine` (the `set` named:
    /// `enforcing` or `shadow`), keeps the last good one when a poll fails. The first
    /// poll runs at once.
    pub fn spawn(self, engine: PolicyEngine, set: &'static str) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut etag: Option<String> = None;
            let mut failures = 0u32;
            let mut last_reported: Option<String> = None;
            loop {
                let outcome = match self.fetch(etag.as_deref()).await {
                    Ok(Fetched::NotModified) => Ok(()),
                    Ok(Fetched::Bundle { set, etag: tag }) => {
                        let engine = engine.clone();
                        let revision = set.revision();
                        match tokio::task::spawn_blocking(move || engine.install(set)).await {
                            Ok(Ok(_)) => {
                                etag = tag;
                                Ok(())
                            }
                            Ok(Err(e)) => Err(("compile_failed", compile_text(&e), revision)),
                            Err(e) => Err(("compile_failed", e.to_string(), revision)),
                        }
                    }
                    Err(e) => Err((e.kind(), e.to_string(), String::new())),
                };
                match outcome {
                    Ok(()) => {
                        failures = 0;
                        last_reported = None;
                        engine.set_source_problem(None);
                        crate::telemetry::metrics::bundle_poll(set, "ok");
                    }
                    Err((kind, text, revision)) => {
                        failures = failures.saturating_add(1);
                        crate::telemetry::metrics::bundle_poll(set, kind);
                        let key = format!("{kind}:{text}");
                        if last_reported.as_deref() != Some(key.as_str()) {
                            tracing::error!(bundle = %self.name(), set, kind, problem = %text, rejected_revision = %revision, revision = %engine.revision(), "policy bundle not activated; keeping the policy in force");
                            last_reported = Some(key);
                        }
                        engine.set_source_problem(Some(format!("{kind}: {text}")));
                    }
                }
                tokio::time::sleep(self.delay(failures)).await;
            }
        })
    }

    /// After a success: a random delay in `[min_delay, max_delay]` (replicas spread
    /// out). After `n` failures in a row: `min_delay · 2^(n-1)`, at most `max_delay`.
    fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            let span = self.max_delay.saturating_sub(self.min_delay);
            return self.min_delay + span.mul_f64(rand::random::<f64>());
        }
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        self.min_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// A reqwest error's text without the URL (its query may hold a credential).
fn without_url(e: reqwest::Error) -> String {
    let mut text = e.without_url().to_string();
    if text.is_empty() {
        text = "request failed".into();
    }
    text
}

fn compile_text(e: &PolicyError) -> String {
    e.to_string()
}
