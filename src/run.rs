//! Start-up: config → policy → evidence sink → gateway → listeners, and shutdown on
//! SIGTERM / Ctrl-C. Shared by `serve` and `dev`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::admin::{self, Admin};
use crate::approval::{Approvals, callback};
use crate::audit::EvidenceSink;
use crate::ciba::CibaClient;
use crate::config::{EvidenceSink as SinkKind, LoadedConfig, ResolvedApprovals, ShutdownConfig};
use crate::policy::PolicyEngine;
use crate::proxy::{Gateway, server};
use crate::store::{ApprovalStore, memory::MemoryStore, redis::RedisStore};

/// After the drain deadline (`shutdown.drain`), how long the answers given to the
/// calls still held may take to be written before the process exits anyway.
const FLUSH_GRACE: Duration = Duration::from_secs(3);

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
    let mut gateway = build_gateway(&cfg)?;
    if !cfg.config.policy.reload_interval.is_zero() {
        gateway
            .policy
            .spawn_reloader(cfg.config.policy.reload_interval);
    }
    let mut approval_store = None;
    if let Some(resolved) = cfg.resolve_approvals()? {
        let slot = Arc::new(OnceLock::new());
        gateway.approvals = Some(slot.clone());
        // `store:` in the config: in-memory (default) or Redis (shared by replicas).
        let store: Arc<dyn ApprovalStore> = match cfg.resolve_store()? {
            None => Arc::new(MemoryStore::new()),
            Some(settings) => RedisStore::connect(settings).context("the approval store")?,
        };
        approval_store = Some(store.clone());
        start_approvals(resolved, store, slot).await?;
    }
    let admin_addr = cfg.config.admin.listen;
    let admin_listener = TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("binding the admin listener (admin.listen) on {admin_addr}"))?;
    let listener = TcpListener::bind(cfg.config.listen)
        .await
        .with_context(|| format!("binding {}", cfg.config.listen))?;
    let gateway = Arc::new(gateway);
    let admin = Admin::new(gateway.clone(), approval_store);
    tokio::spawn(admin::serve(admin_listener, admin.clone()));
    run_listener_with(listener, gateway, cfg.config.shutdown.drain, move || {
        admin
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    })
    .await
}

/// Binds the callback port now (so a bad address fails start-up), then fetches the
/// OP's metadata in the background, retrying: until it arrives, calls that need
/// approval are blocked with `op_unavailable` and everything else keeps flowing.
pub async fn start_approvals(
    resolved: ResolvedApprovals,
    store: Arc<dyn ApprovalStore>,
    slot: Arc<OnceLock<Arc<Approvals>>>,
) -> anyhow::Result<()> {
    let callback_listener = match &resolved.callback {
        Some(cb) => Some(
            callback::bind(cb.listen)
                .await
                .with_context(|| format!("binding the CIBA callback listener on {}", cb.listen))?,
        ),
        None => None,
    };
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        let ciba = loop {
            match CibaClient::discover(resolved.client.clone()).await {
                Ok(c) => break c,
                Err(e) => {
                    crate::telemetry::metrics::op_error(e.code());
                    tracing::error!(error = %e, issuer = %resolved.client.issuer, "OpenID Provider discovery failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        };
        tracing::info!(issuer = %resolved.client.issuer, delivery = %resolved.client.delivery, "OpenID Provider metadata loaded");
        let approvals = Approvals::new(
            Arc::new(ciba),
            store,
            resolved.settings,
            resolved.profile,
            resolved.hint,
            resolved.user_code,
            resolved.state_key,
        );
        let _ = slot.set(approvals.clone());
        if let (Some(listener), Some(cb)) = (callback_listener, resolved.callback) {
            let tls = cb.tls.map(|t| callback::TlsFiles {
                cert: t.cert_file,
                key: t.key_file,
            });
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, tls = tls.is_some(), "CIBA callback listener ready");
            }
            if let Err(e) = callback::serve(listener, approvals, cb.path, tls).await {
                tracing::error!(error = %e, "CIBA callback listener failed");
            }
        }
    });
    Ok(())
}

pub async fn run_listener(listener: TcpListener, gateway: Arc<Gateway>) -> anyhow::Result<()> {
    run_listener_with(listener, gateway, ShutdownConfig::default().drain, || {}).await
}

/// Serves until SIGTERM / Ctrl-C; then stops accepting (`on_shutdown` runs at once),
/// lets held calls run until `drain`, answers those still held "shutting down, retry"
/// and returns once their answers are written (at most `FLUSH_GRACE` later).
pub async fn run_listener_with(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    drain: Duration,
    on_shutdown: impl FnOnce() + Send + 'static,
) -> anyhow::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, revision = %gateway.policy.revision(), "ciba-gate listening");
    let gw = gateway.clone();
    let shutdown = async move {
        shutdown_signal().await;
        on_shutdown();
        tracing::info!(drain = ?drain, "no longer accepting calls; draining");
        // Held calls get the drain time, then a clear "retry" answer.
        let gw = gw.clone();
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            tracing::info!("drain deadline reached; answering held calls \"shutting down\"");
            gw.abandon_holds();
        });
    };
    server::serve(listener, gateway, shutdown, drain + FLUSH_GRACE).await;
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
