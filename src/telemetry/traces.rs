//! Logs and traces: JSON logs on standard error through `tracing`, and (when an OTLP
//! endpoint is configured) the gateway's own spans exported with OpenTelemetry. Only
//! spans of this crate at INFO or above are exported, never log events: attributes are
//! set explicitly (semantic-convention names, bounded values), so tokens, user codes,
//! hints and tool arguments cannot leak into a trace by way of a log message.

use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use super::config::{OtlpProtocol, TelemetryConfig};

/// True once an OTLP exporter is installed: only then does the gateway replace the
/// agent's `traceparent` with its own (otherwise the header passes through untouched).
static TRACING: AtomicBool = AtomicBool::new(false);

pub fn enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Flushes and stops the exporter when dropped (or at `shutdown`).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(p) = self.provider.take() {
            TRACING.store(false, Ordering::Relaxed);
            if let Err(e) = p.shutdown() {
                eprintln!("trace exporter shutdown: {e}");
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// What the exporter will be, from the config and then the standard `OTEL_*` variables;
/// `None`: traces are off.
fn export_settings(cfg: &TelemetryConfig) -> Option<(OtlpProtocol, Option<String>)> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return None;
    }
    let from_env =
        env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    if cfg.otlp_endpoint.is_none() && from_env.is_none() {
        return None;
    }
    let protocol = cfg.protocol.unwrap_or_else(|| {
        match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .as_deref()
        {
            Some(p) if p.starts_with("http") => OtlpProtocol::Http,
            _ => OtlpProtocol::Grpc,
        }
    });
    Some((protocol, cfg.otlp_endpoint.clone()))
}

fn build_provider(cfg: &TelemetryConfig) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some((protocol, endpoint)) = export_settings(cfg) else {
        return Ok(None);
    };
    let exporter = match protocol {
        OtlpProtocol::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(e) = &endpoint {
                b = b.with_endpoint(e.clone());
            }
            b.build()?
        }
        OtlpProtocol::Http => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary);
            if let Some(e) = &endpoint {
                // Like OTEL_EXPORTER_OTLP_ENDPOINT: the collector's base URL.
                let base = e.trim_end_matches('/');
                let full = if base.ends_with("/v1/traces") {
                    base.to_string()
                } else {
                    format!("{base}/v1/traces")
                };
                b = b.with_endpoint(full);
            }
            b.build()?
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if let Some(name) = &cfg.service_name {
        resource = resource.with_service_name(name.clone());
    } else if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("ciba-gate");
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource);
    if let Some(ratio) = cfg.sampling_ratio {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))));
    }
    Ok(Some(builder.build()))
}

/// Installs JSON logging (level from `RUST_LOG`, else `level`) and, when configured,
/// the OTLP trace exporter. Call inside the Tokio runtime (the gRPC exporter needs it).
pub fn init(level: &str, cfg: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .with_span_list(false)
        .with_filter(filter);
    let provider = build_provider(cfg)?;
    let otel = provider.as_ref().map(|p| {
        let tracer = p.tracer("ciba-gate");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span()
                    && *meta.level() <= tracing::Level::INFO
                    && meta.target().starts_with("ciba_gate")
            }))
    });
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()?;
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        TRACING.store(true, Ordering::Relaxed);
        tracing::info!("OpenTelemetry trace export enabled");
    }
    Ok(TelemetryGuard { provider })
}

/// Makes the agent's W3C `traceparent` (if any) the parent of `span`.
pub fn adopt_remote_parent(span: &tracing::Span, headers: &HeaderMap) {
    if !enabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    let _ = span.set_parent(cx);
}

/// Replaces `traceparent`/`tracestate` with the context of `span` (the upstream call).
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    if !enabled() {
        return;
    }
    let cx = span.context();
    headers.remove("traceparent");
    headers.remove("tracestate");
    TraceContextPropagator::new()
        .inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers));
}

/// A span for work that outlives the request that started it (the CIBA driver): in the
/// same trace as the current span, but without keeping that span open.
pub fn detached_child(span: tracing::Span) -> tracing::Span {
    if enabled() {
        let _ = span.set_parent(tracing::Span::current().context());
    }
    span
}

/// The W3C `traceparent` of `span` (when traces are exported and it is sampled).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    if !enabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut headers = HeaderMap::new();
    TraceContextPropagator::new()
        .inject_context(&cx, &mut opentelemetry_http::HeaderInjector(&mut headers));
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Links `span` to the span a stored `traceparent` names (a parked call's retry to the
/// call that started its approval). A value that does not parse is ignored.
pub fn link_to(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::trace::TraceContextExt;
    if !enabled() {
        return;
    }
    let mut headers = HeaderMap::new();
    let Ok(value) = http::HeaderValue::from_str(traceparent) else {
        return;
    };
    headers.insert("traceparent", value);
    let cx = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(&headers));
    let linked = cx.span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}
