//! Reaching Redis: one auto-reconnecting connection (`ConnectionManager`) or a cluster
//! connection, RESP3, every call bounded by the configured timeouts; and the change
//! channel's subscription, which wakes this process's waiters.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisFuture};
use tokio::sync::{Notify, OnceCell};

use super::{RedisSettings, RedisStore, scripts, unavailable};
use crate::store::StoreError;

/// Local waiters, woken by the change channel.
#[derive(Default)]
pub(super) struct Waiters {
    pub(super) map: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Waiters {
    fn on_push(&self, channel: &[u8], info: PushInfo) {
        match info.kind {
            PushKind::Message => {
                let mut data = info.data.into_iter();
                let (Some(ch), Some(msg)) = (data.next(), data.next()) else {
                    return;
                };
                if as_bytes(&ch) != Some(channel) {
                    return;
                }
                let Some(fp) = as_bytes(&msg) else { return };
                let Ok(fp) = std::str::from_utf8(fp) else {
                    return;
                };
                if let Ok(g) = self.map.lock()
                    && let Some(n) = g.get(fp)
                {
                    n.notify_waiters();
                }
            }
            // Messages may have been lost while disconnected: everyone re-reads.
            PushKind::Disconnection | PushKind::Subscribe => self.wake_all(),
            _ => {}
        }
    }

    pub(super) fn wake_all(&self) {
        if let Ok(g) = self.map.lock() {
            for n in g.values() {
                n.notify_waiters();
            }
        }
    }
}

fn as_bytes(v: &redis::Value) -> Option<&[u8]> {
    match v {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

pub(super) enum Backend {
    Single(ConnectionManager),
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        conn: OnceCell<ClusterConnection>,
    },
}

impl RedisStore {
    /// Sets up the connection (it connects lazily and reconnects by itself: the gateway
    /// starts, and recovers, whether or not Redis is up) and the change subscription.
    pub fn connect(settings: RedisSettings) -> Result<Arc<RedisStore>, StoreError> {
        if settings.key_prefix.contains(['{', '}']) {
            return Err(StoreError::Unavailable(
                "the Redis key prefix must not contain '{' or '}'".into(),
            ));
        }
        let info =
            settings.url.as_str().into_connection_info().map_err(|e| {
                StoreError::Unavailable(format!("invalid Redis URL ({:?})", e.kind()))
            })?;
        let redis_settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(redis_settings);
        let channel = format!("{}changes", settings.key_prefix);
        let waiters = Arc::new(Waiters::default());
        let sink = waiters.clone();
        let ch = channel.clone().into_bytes();
        let push = move |info: PushInfo| {
            sink.on_push(&ch, info);
            Ok::<(), redis::aio::SendError>(())
        };
        let certs = settings
            .tls_ca_pem
            .clone()
            .map(|ca| redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca),
            });
        let backend = if settings.cluster {
            let mut builder = redis::cluster::ClusterClient::builder(vec![info]);
            if let Some(c) = certs {
                builder = builder.certs(c);
            }
            let client = builder
                .use_protocol(ProtocolVersion::RESP3)
                .connection_timeout(settings.connect_timeout)
                .response_timeout(settings.response_timeout)
                .retries(2)
                .push_sender(push)
                .build()
                .map_err(unavailable)?;
            Backend::Cluster {
                client: Box::new(client),
                conn: OnceCell::new(),
            }
        } else {
            let client = match certs {
                Some(c) => redis::Client::build_with_tls(info, c),
                None => redis::Client::open(info),
            }
            .map_err(unavailable)?;
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(settings.connect_timeout))
                .set_response_timeout(Some(settings.response_timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1))
                .set_push_sender(push)
                .set_automatic_resubscription();
            Backend::Single(
                ConnectionManager::new_lazy_with_config(client, cfg).map_err(unavailable)?,
            )
        };
        let store = Arc::new(RedisStore {
            backend,
            prefix: settings.key_prefix,
            channel,
            // Connecting and answering, plus a little slack: a hard bound on every call.
            op_timeout: settings.connect_timeout + settings.response_timeout,
            waiters,
            scripts: scripts(),
        });
        store.spawn_subscriber();
        Ok(store)
    }

    /// Subscribes to the change channel (retrying until Redis answers), then pings now
    /// and then so a dropped connection is noticed, re-established and re-subscribed
    /// (by the connection manager) even when no call is using the store.
    fn spawn_subscriber(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut subscribed = false;
            loop {
                let Some(store) = weak.upgrade() else { return };
                if !subscribed {
                    subscribed = store.subscribe().await.is_ok();
                } else if let Ok(mut c) = store.conn().await {
                    let _ = store
                        .run(redis::cmd("PING").query_async::<redis::Value>(&mut c))
                        .await;
                }
                drop(store);
                let pause = if subscribed { 2000 } else { 500 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        });
    }

    async fn subscribe(&self) -> Result<(), StoreError> {
        let fut = async {
            match &self.backend {
                Backend::Single(cm) => cm.clone().subscribe(&self.channel).await,
                Backend::Cluster { .. } => match self.conn().await {
                    Ok(Conn::Cluster(mut c)) => c.subscribe(&self.channel).await,
                    _ => Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "cluster not connected",
                    ))),
                },
            }
        };
        self.run(fut).await?;
        // Anything published before the subscription took effect: re-read.
        self.waiters.wake_all();
        Ok(())
    }

    pub(super) async fn conn(&self) -> Result<Conn, StoreError> {
        match &self.backend {
            Backend::Single(cm) => Ok(Conn::Single(cm.clone())),
            Backend::Cluster { client, conn } => {
                let fut = conn.get_or_try_init(|| client.get_async_connection());
                match tokio::time::timeout(self.op_timeout, fut).await {
                    Ok(Ok(c)) => Ok(Conn::Cluster(c.clone())),
                    Ok(Err(e)) => Err(unavailable(e)),
                    Err(_) => Err(StoreError::Unavailable(
                        "redis: connecting timed out".into(),
                    )),
                }
            }
        }
    }

    /// Every Redis call is bounded: a dead or unreachable Redis answers `Unavailable`
    /// within connect + response timeout, never later.
    pub(super) async fn run<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => {
                crate::telemetry::metrics::store_error();
                Err(StoreError::Unavailable("redis: timed out".into()))
            }
        }
    }

    /// Sends independent commands: one pipeline on a single node; one by one on a
    /// cluster (their keys live in different slots).
    pub(super) async fn secondary(&self, cmds: Vec<Cmd>) -> Result<(), StoreError> {
        if cmds.is_empty() {
            return Ok(());
        }
        let mut c = self.conn().await?;
        match c {
            Conn::Single(_) => {
                let mut p = redis::pipe();
                for cmd in cmds {
                    p.add_command(cmd).ignore();
                }
                self.run(p.query_async::<()>(&mut c)).await
            }
            Conn::Cluster(_) => {
                for cmd in cmds {
                    self.run(cmd.query_async::<redis::Value>(&mut c)).await?;
                }
                Ok(())
            }
        }
    }
}
