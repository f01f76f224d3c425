//! The one place that builds the application from a config: policy, evidence sink,
//! upstreams, approval store, CIBA client, and the listeners (proxy, admin, CIBA
//! callback). `serve`, `dev`, tests and benches all go through `App`; nothing is
//! changed on a `Gateway` after it is built.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::admin::{self, Admin};
use crate::approval::config::ResolvedApprovals;
use crate::approval::{Approvals, ApprovalsParts, callback};
use crate::audit::EvidenceSink;
use crate::ciba::CibaClient;
use crate::config::LoadedConfig;
use crate::policy::PolicyEngine;
use crate::policy::bundle::source::BundleSource;
use crate::proxy::{Gateway, GatewayParts, server};
use crate::store::{ApprovalStore, memory::MemoryStore, redis::RedisStore};

/// After the drain deadline, how long the answers given to the calls still held may
/// take to be written before the process exits anyway.
const FLUSH_GRACE: Duration = Duration::from_secs(3);

/// Builds an `App`, with the parts tests and benches may supply themselves.
pub struct Builder<'a> {
    cfg: &'a LoadedConfig,
    evidence: Option<EvidenceSink>,
    store: Option<Arc<dyn ApprovalStore>>,
}

impl Builder<'_> {
    /// Evidence goes here instead of the configured sink.
    pub fn evidence(mut self, sink: EvidenceSink) -> Self {
        self.evidence = Some(sink);
        self
    }

    /// This approval store instead of the configured one (two in-process replicas
    /// sharing one store, a store a test controls).
    pub fn store(mut self, store: Arc<dyn ApprovalStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Reads every secret and key, compiles the policy, opens the evidence sink and
    /// connects the store. Nothing listens yet.
    pub fn build(self) -> anyhow::Result<App> {
        let cfg = self.cfg;
        let c = &cfg.config;
        let base = cfg.base();
        let (policy, bundle) = match (&c.policy.dir, &c.policy.bundle) {
            (Some(dir), _) => (
                PolicyEngine::load(dir)
                    .with_context(|| format!("{}: policy.dir", cfg.file.display()))?,
                None,
            ),
            (None, Some(b)) => {
                let source = BundleSource::resolve(b, &base)
                    .map_err(|e| anyhow::anyhow!("{}: policy.bundle.{e}", cfg.file.display()))?;
                tracing::info!(bundle = %source.name(), signed = source.verifies(), "policy comes from a bundle server; every call is denied until the first bundle is in force");
                (
                    PolicyEngine::awaiting_bundle(&source.name(), Default::default()),
                    Some(source),
                )
            }
            (None, None) => anyhow::bail!("{}: policy: give dir or bundle", cfg.file.display()),
        };
        let mut shadow_bundle = None;
        let shadow = match c.policy.shadow.as_ref().map(|s| (&s.dir, &s.bundle)) {
            Some((Some(dir), _)) => {
                let engine = PolicyEngine::load(dir)
                    .with_context(|| format!("{}: policy.shadow.dir", cfg.file.display()))?;
                tracing::info!(dir = %dir.display(), revision = %engine.revision(), "shadow policy loaded: decided beside the enforcing policy, never enforced");
                Some(engine)
            }
            Some((None, Some(b))) => {
                let source = BundleSource::resolve(b, &base).map_err(|e| {
                    anyhow::anyhow!("{}: policy.shadow.bundle.{e}", cfg.file.display())
                })?;
                tracing::info!(bundle = %source.name(), "shadow policy comes from a bundle server: decided beside the enforcing policy once it arrives, never enforced");
                let engine = PolicyEngine::awaiting_bundle(&source.name(), Default::default());
                shadow_bundle = Some(source);
                Some(engine)
            }
            Some((None, None)) => {
                anyhow::bail!("{}: policy.shadow: give dir or bundle", cfg.file.display())
            }
            None => None,
        };
        if c.policy.dry_run {
            tracing::warn!(
                "DRY RUN (policy.dry_run: true): policy decisions are recorded but NOT enforced; denied calls and calls that need approval are forwarded"
            );
        }
        let evidence = match self.evidence {
            Some(sink) => sink,
            None => c
                .evidence
                .open(&base)
                .with_context(|| format!("{}: evidence: cannot open", cfg.file.display()))?,
        };
        let approvals = match &c.approvals {
            Some(a) => Some(
                a.resolve(&base)
                    .map_err(|e| cfg.field_error("approvals", e))?,
            ),
            None => None,
        };
        let mut approvals = approvals;
        if let Some(a) = approvals.as_mut() {
            a.settings.keep_access_tokens = c.upstreams.iter().any(|u| u.approval_token.is_some());
        }
        let store = match (&approvals, self.store) {
            (None, _) => None,
            (Some(_), Some(store)) => Some(store),
            (Some(_), None) => Some(
                match c
                    .store
                    .resolve(&base)
                    .map_err(|e| cfg.field_error("store", e))?
                {
                    None => Arc::new(MemoryStore::new()) as Arc<dyn ApprovalStore>,
                    Some(settings) => {
                        RedisStore::connect(settings).context("the approval store")?
                    }
                },
            ),
        };
        let slot = approvals.as_ref().map(|_| Arc::new(OnceLock::new()));
        let gateway = Gateway::new(GatewayParts {
            agent: c.agent.clone(),
            upstreams: c.upstreams.clone(),
            base: base.clone(),
            limits: c.limits.clone(),
            policy,
            shadow,
            dry_run: c.policy.dry_run,
            evidence,
            evidence_required: c.evidence.required,
            approvals: slot.clone(),
            binding_message_profile: approvals.as_ref().map(|a| a.profile.name.clone()),
        })
        .map_err(|e| cfg.field_error("upstreams", e))?;
        Ok(App {
            gateway: Arc::new(gateway),
            store,
            approvals: approvals.zip(slot),
            listen: c.listen,
            admin_listen: c.admin.listen,
            admin_listener: None,
            drain: c.shutdown.drain,
            reload_interval: c.policy.reload_interval,
            bundle,
            shadow_bundle,
        })
    }
}

/// The application, built and not yet listening.
pub struct App {
    pub gateway: Arc<Gateway>,
    /// The approval store, when approvals are configured.
    pub store: Option<Arc<dyn ApprovalStore>>,
    approvals: Option<(ResolvedApprovals, Arc<OnceLock<Arc<Approvals>>>)>,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    /// A listener bound before the app was built, taking the place of `admin_listen`.
    admin_listener: Option<std::net::TcpListener>,
    drain: Duration,
    reload_interval: Duration,
    /// The bundle server the policy comes from (instead of a directory).
    bundle: Option<BundleSource>,
    /// The bundle server the shadow policy comes from.
    shadow_bundle: Option<BundleSource>,
}

impl App {
    pub fn builder(cfg: &LoadedConfig) -> Builder<'_> {
        Builder {
            cfg,
            evidence: None,
            store: None,
        }
    }

    /// `App::builder(cfg).build()`.
    pub fn build(cfg: &LoadedConfig) -> anyhow::Result<App> {
        Self::builder(cfg).build()
    }

    /// Serves the admin endpoints on a listener already bound (`ciba-gate dev` binds its
    /// port, or a free one, before it writes the configuration: binding it again later
    /// would race any other process after the same port).
    pub fn with_admin_listener(mut self, listener: std::net::TcpListener) -> App {
        self.admin_listener = Some(listener);
        self
    }

    /// Binds the proxy, admin and callback listeners (so a bad address fails here),
    /// starts the policy reloader and the OP discovery, and serves until `shutdown`.
    pub async fn start(mut self) -> anyhow::Result<Running> {
        if let Some(source) = self.bundle.take() {
            source.spawn(self.gateway.policy.clone(), "enforcing");
        } else if !self.reload_interval.is_zero() {
            self.gateway.policy.spawn_reloader(self.reload_interval);
        }
        if let (Some(source), Some(shadow)) = (self.shadow_bundle.take(), &self.gateway.shadow) {
            source.spawn(shadow.clone(), "shadow");
        } else if !self.reload_interval.is_zero()
            && let Some(shadow) = &self.gateway.shadow
        {
            shadow.spawn_reloader(self.reload_interval);
        }
        #[cfg(unix)]
        {
            // SIGHUP: reopen the evidence file (after logrotate moved it away).
            let gateway = self.gateway.clone();
            if let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        gateway.evidence.request_reopen();
                    }
                });
            }
        }
        let callback_addr = match self.approvals {
            Some((resolved, slot)) => {
                let store = self.store.clone().context("approval store")?;
                start_approvals(resolved, store, slot).await?
            }
            None => None,
        };
        let admin_listener = match self.admin_listener.take() {
            Some(bound) => bound
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(bound)),
            None => TcpListener::bind(self.admin_listen).await,
        }
        .with_context(|| {
            format!(
                "binding the admin listener (admin.listen) on {}",
                self.admin_listen
            )
        })?;
        let listener = TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("binding {}", self.listen))?;
        let addr = listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let admin = Admin::new(self.gateway.clone(), self.store.clone());
        tokio::spawn(admin::serve(admin_listener, admin.clone()));
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let gateway = self.gateway.clone();
        let drain = self.drain;
        tracing::info!(%addr, revision = %gateway.policy.revision(), "ciba-gate listening");
        let served = tokio::spawn(async move {
            let gw = gateway.clone();
            let shutdown = async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
                admin
                    .draining
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(drain = ?drain, "no longer accepting calls; draining");
                // Held calls get the drain time, then a clear "retry" answer.
                tokio::spawn(async move {
                    tokio::time::sleep(drain).await;
                    tracing::info!(
                        "drain deadline reached; answering held calls \"shutting down\""
                    );
                    gw.abandon_holds();
                });
            };
            server::serve(listener, gateway.clone(), shutdown, drain + FLUSH_GRACE).await;
            gateway.stop_servers().await;
            tracing::info!("ciba-gate stopped");
        });
        Ok(Running {
            addr,
            admin_addr,
            callback_addr,
            gateway: self.gateway,
            store: self.store,
            stop: stop_tx,
            served,
        })
    }
}

/// A running application.
pub struct Running {
    /// Where the proxy listens (the bound address, also when port 0 was asked for).
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Where the CIBA callback listener listens, when one is configured.
    pub callback_addr: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    pub store: Option<Arc<dyn ApprovalStore>>,
    stop: tokio::sync::watch::Sender<bool>,
    served: tokio::task::JoinHandle<()>,
}

impl Running {
    /// The approvals, once the OP's metadata has been fetched.
    pub fn approvals(&self) -> Option<Arc<Approvals>> {
        self.gateway.approvals()
    }

    /// Stops accepting and drains, as SIGTERM does.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until the server has drained and stopped.
    pub async fn stopped(self) {
        let _ = self.served.await;
    }

    /// Serves until SIGTERM or Ctrl-C, then drains and returns.
    pub async fn until_signal(self) -> anyhow::Result<()> {
        shutdown_signal().await;
        self.shutdown();
        self.stopped().await;
        Ok(())
    }
}

/// Binds the callback port now (so a bad address fails start-up), then fetches the
/// OP's metadata in the background, retrying: until it arrives, calls that need
/// approval are blocked with `op_unavailable` and everything else keeps flowing.
async fn start_approvals(
    resolved: ResolvedApprovals,
    store: Arc<dyn ApprovalStore>,
    slot: Arc<OnceLock<Arc<Approvals>>>,
) -> anyhow::Result<Option<SocketAddr>> {
    let callback_listener = match &resolved.callback {
        Some(cb) => Some(
            callback::bind(cb.listen)
                .await
                .with_context(|| format!("binding the CIBA callback listener on {}", cb.listen))?,
        ),
        None => None,
    };
    let callback_addr = match &callback_listener {
        Some(l) => Some(l.local_addr()?),
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
        let approvals = Approvals::new(ApprovalsParts {
            ciba: Arc::new(ciba),
            store,
            settings: resolved.settings,
            profile: resolved.profile,
            hint: resolved.hint,
            user_code: resolved.user_code,
            key: resolved.state_key,
        });
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
    Ok(callback_addr)
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
