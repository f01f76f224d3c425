//! Start-up: config → policy → evidence sink → gateway → listener, and shutdown on
//! SIGTERM / Ctrl-C. Shared by `serve` and `dev`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::audit::EvidenceSink;
use crate::config::{EvidenceSink as SinkKind, LoadedConfig};
use crate::policy::PolicyEngine;
use crate::proxy::{Gateway, server};

/// Builds the gateway a config describes (secrets resolved, policy compiled).
pub fn build_gateway(cfg: &LoadedConfig) -> anyhow::Result<Gateway> {
    let secrets = cfg.resolve_secrets()?;
    let policy = PolicyEngine::load(&cfg.config.policy.dir)
        .with_context(|| format!("{}: policy.dir", cfg.file.display()))?;
    let evidence = match cfg.config.evidence.sink {
        SinkKind::Stdout => EvidenceSink::stdout(),
        SinkKind::File => {
            let path = cfg
                .config
                .evidence
                .path
                .as_deref()
                .context("evidence.path is required")?;
            EvidenceSink::file(path)
                .with_context(|| format!("opening evidence file {}", path.display()))?
        }
    };
    Gateway::from_config(cfg, secrets, policy, evidence)
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub async fn serve(cfg: LoadedConfig) -> anyhow::Result<()> {
    let gateway = build_gateway(&cfg)?;
    if !cfg.config.policy.reload_interval.is_zero() {
        gateway
            .policy
            .spawn_reloader(cfg.config.policy.reload_interval);
    }
    let listener = TcpListener::bind(cfg.config.listen)
        .await
        .with_context(|| format!("binding {}", cfg.config.listen))?;
    run_listener(listener, Arc::new(gateway)).await
}

pub async fn run_listener(listener: TcpListener, gateway: Arc<Gateway>) -> anyhow::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, revision = %gateway.policy.revision(), "ciba-gate listening");
    server::serve(
        listener,
        gateway,
        shutdown_signal(),
        Duration::from_secs(10),
    )
    .await;
    tracing::info!("ciba-gate stopped");
    Ok(())
}

/// Completes on SIGTERM (Kubernetes) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
