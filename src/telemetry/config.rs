//! The `telemetry:` and `log:` sections.

use serde::Deserialize;

use crate::validate::{Checked, require};

/// How traces are exported (OTLP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    Grpc,
    Http,
}

/// `telemetry:` — OpenTelemetry traces. Unset keys fall back to the standard `OTEL_*`
/// environment variables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Collector base URL, e.g. `http://otel-collector:4317` (gRPC) or `:4318` (HTTP).
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `grpc` (default) or `http` (protobuf over HTTP, `/v1/traces`).
    #[serde(default)]
    pub protocol: Option<OtlpProtocol>,
    /// Share of new traces kept (0.0–1.0); an agent's sampled `traceparent` is honoured.
    #[serde(default)]
    pub sampling_ratio: Option<f64>,
    #[serde(default)]
    pub service_name: Option<String>,
}

impl TelemetryConfig {
    pub fn validate(&self) -> Checked {
        if let Some(r) = self.sampling_ratio {
            require(
                (0.0..=1.0).contains(&r),
                "sampling_ratio",
                "must be between 0.0 and 1.0",
            )?;
        }
        if let Some(e) = &self.otlp_endpoint {
            require(
                e.starts_with("http://") || e.starts_with("https://"),
                "otlp_endpoint",
                "must be an http:// or https:// URL",
            )?;
        }
        Ok(())
    }
}

/// `log:` — JSON logs on standard error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// An `EnvFilter` directive: `info`, `debug`, `ciba_gate=debug,info`, …
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

impl LogConfig {
    pub fn validate(&self) -> Checked {
        require(
            tracing_subscriber::EnvFilter::try_new(&self.level).is_ok(),
            "level",
            "is not a level or filter directive (e.g. info, debug)",
        )
    }
}
