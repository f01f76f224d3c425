//! `evidence.sink: otlp`: the writer thread's batches sent to an OpenTelemetry
//! collector as OTLP/HTTP logs (`POST …/v1/logs`, `application/x-protobuf`). Each
//! evidence record is one log record: its body is the record's JSON line, unchanged
//! (so the hash chain verifies from what the collector stored), with the fields
//! operators filter on as attributes. Failures retry and are counted as the HTTP
//! sink's are.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue as Any, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde::Deserialize;

use crate::validate::{Checked, FieldError};

/// The record fields copied into log attributes (`ciba_gate.<field>`): small values
/// from fixed sets or the configuration, never tool arguments.
const ATTRIBUTE_FIELDS: &[&str] = &[
    "decision",
    "outcome",
    "reason",
    "upstream",
    "tool",
    "mcp_method",
    "policy_revision",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSinkConfig {
    /// The collector's OTLP/HTTP logs endpoint, e.g. `http://collector:4318/v1/logs`.
    pub url: String,
    /// Per request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Tries after the first, with doubling backoff from 200 ms.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// `service.name` of the log records' resource.
    #[serde(default = "default_service")]
    pub service_name: String,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_retries() -> u32 {
    4
}
fn default_service() -> String {
    "ciba-gate".into()
}

impl OtlpSinkConfig {
    pub fn validate(&self) -> Checked {
        let uri: http::Uri = self
            .url
            .parse()
            .map_err(|_| FieldError::new("url", "is not a URL"))?;
        crate::validate::require(
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some(),
            "url",
            "must be an http:// or https:// URL with a host (the collector's /v1/logs)",
        )?;
        crate::validate::require(!self.timeout.is_zero(), "timeout", "must be greater than 0")
    }
}

pub struct OtlpSink {
    collector: super::collector::Collector,
    service_name: String,
}

impl OtlpSink {
    pub fn new(cfg: OtlpSinkConfig) -> Self {
        OtlpSink {
            collector: super::collector::Collector::new(cfg.url, cfg.timeout, cfg.retries),
            service_name: cfg.service_name,
        }
    }

    /// Sends `lines` (one JSON record per line) as one export request.
    pub fn send(&mut self, lines: &[u8]) -> std::io::Result<()> {
        let body = export_request(lines, &self.service_name).encode_to_vec();
        self.collector.post(
            &[(http::header::CONTENT_TYPE, "application/x-protobuf")],
            body,
        )
    }
}

fn text(s: &str) -> Option<Any> {
    Some(Any {
        value: Some(AnyValue::StringValue(s.to_string())),
    })
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: text(value),
        ..Default::default()
    }
}

/// One OTLP export request for newline-separated JSON records.
fn export_request(lines: &[u8], service_name: &str) -> ExportLogsServiceRequest {
    let now = crate::clock::now_ms().saturating_mul(1_000_000);
    let records = lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let json = String::from_utf8_lossy(line).into_owned();
            let value: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            let mut attributes = vec![attribute(
                "event.name",
                if value.get("checkpoint").is_some() {
                    "ciba_gate.evidence.checkpoint"
                } else {
                    "ciba_gate.evidence"
                },
            )];
            for field in ATTRIBUTE_FIELDS {
                if let Some(v) = value.get(*field).and_then(serde_json::Value::as_str) {
                    attributes.push(attribute(&format!("ciba_gate.{field}"), v));
                }
            }
            LogRecord {
                time_unix_nano: now,
                observed_time_unix_nano: now,
                severity_number: SeverityNumber::Info as i32,
                severity_text: "INFO".into(),
                body: text(&json),
                attributes,
                ..Default::default()
            }
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", service_name)],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "ciba-gate.evidence".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_record_is_one_log_record_with_its_line_as_the_body() {
        let req = export_request(
            b"{\"decision\":\"allow\",\"tool\":\"t\",\"arguments_digest\":\"x\"}\n{\"checkpoint\":{}}\n",
            "svc",
        );
        let logs = &req.resource_logs[0].scope_logs[0].log_records;
        assert_eq!(logs.len(), 2);
        let body = |i: usize| match &logs[i].body.as_ref().unwrap().value {
            Some(AnyValue::StringValue(s)) => s.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            body(0),
            "{\"decision\":\"allow\",\"tool\":\"t\",\"arguments_digest\":\"x\"}"
        );
        let keys: Vec<&str> = logs[0].attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["event.name", "ciba_gate.decision", "ciba_gate.tool"]);
        assert_eq!(
            logs[1].attributes[0].value,
            text("ciba_gate.evidence.checkpoint")
        );
    }
}
