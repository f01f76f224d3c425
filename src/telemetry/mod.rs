//! Operating the gateway: Prometheus metrics (`metrics`), JSON logs and OpenTelemetry
//! traces (`traces`). The admin listener that serves metrics and probes is `crate::admin`.

pub mod config;
pub mod metrics;
pub mod traces;

pub use traces::{TelemetryGuard, init};

/// `tracing::info_span!` when trace export is on, else a disabled span (so the proxy
/// pays nothing for spans nobody exports).
#[macro_export]
macro_rules! traced_span {
    ($($args:tt)*) => {
        if $crate::telemetry::traces::enabled() {
            ::tracing::info_span!($($args)*)
        } else {
            ::tracing::Span::none()
        }
    };
}
