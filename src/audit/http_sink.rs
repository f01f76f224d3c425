//! `evidence.sink: http`: the writer thread's batches POSTed to a collector as OPA's
//! decision-log upload does it — one gzip-compressed JSON array of records per request
//! (`Content-Encoding: gzip`). A batch that fails is retried with backoff; when every
//! try fails the batch is lost, counted, and the sink reports failing (so
//! `evidence.required` refuses calls) until a batch goes through again.

use std::io::Write;
use std::time::Duration;

use serde::Deserialize;

use crate::validate::{Checked, FieldError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// The collector's upload URL (OPA: `<service>/logs`).
    pub url: String,
    /// Per request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Tries after the first, with doubling backoff from 200 ms.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_retries() -> u32 {
    4
}

impl HttpSinkConfig {
    pub fn validate(&self) -> Checked {
        let uri: http::Uri = self
            .url
            .parse()
            .map_err(|_| FieldError::new("url", "is not a URL"))?;
        crate::validate::require(
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some(),
            "url",
            "must be an http:// or https:// URL with a host",
        )?;
        crate::validate::require(!self.timeout.is_zero(), "timeout", "must be greater than 0")
    }
}

pub struct HttpSink {
    collector: super::collector::Collector,
}

impl HttpSink {
    pub fn new(cfg: HttpSinkConfig) -> Self {
        HttpSink {
            collector: super::collector::Collector::new(cfg.url, cfg.timeout, cfg.retries),
        }
    }

    /// Sends `lines` (one JSON record per line, as the file sink writes them) as one
    /// batch.
    pub fn send(&mut self, lines: &[u8]) -> std::io::Result<()> {
        let body = gzip(&json_array(lines))?;
        self.collector.post(
            &[
                (http::header::CONTENT_TYPE, "application/json"),
                (http::header::CONTENT_ENCODING, "gzip"),
            ],
            body,
        )
    }
}

/// `[line,line,…]` from newline-separated JSON lines.
fn json_array(lines: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.len() + 2);
    out.push(b'[');
    for (i, line) in lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(line);
    }
    out.push(b']');
    out
}

fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes)?;
    enc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_one_json_array() {
        let v: serde_json::Value =
            serde_json::from_slice(&json_array(b"{\"a\":1}\n{\"b\":2}\n")).unwrap();
        assert_eq!(v, serde_json::json!([{"a": 1}, {"b": 2}]));
        assert_eq!(json_array(b""), b"[]");
    }
}
