//! `ciba-gate dev`: the gateway, the demo MCP tools and the development OP (with its
//! phone page) in one process, wired with a generated config file. `dev-op`: the
//! development OP alone, for multi-process tests. For trying things out, never for
//! production.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;

use crate::config::LoadedConfig;

pub struct DevOptions {
    pub listen: SocketAddr,
    pub tools_listen: SocketAddr,
    pub op_listen: SocketAddr,
    pub callback_listen: SocketAddr,
    pub delivery: String,
    pub park: bool,
    pub admin_listen: SocketAddr,
    pub drain: std::time::Duration,
}

/// `ciba-gate dev`: demo tools, the development OP and the gateway in one process.
pub async fn dev(opts: DevOptions, policies: &Path) -> anyhow::Result<()> {
    use crate::devop::op::{DeliveryMode, DevClient, DevOp, DevOpConfig};
    let delivery = match opts.delivery.as_str() {
        "poll" => DeliveryMode::Poll,
        "ping" => DeliveryMode::Ping,
        "push" => DeliveryMode::Push,
        other => anyhow::bail!("--delivery must be poll, ping or push, not {other:?}"),
    };
    let tools = crate::devop::demo_tools::spawn(opts.tools_listen).await?;
    let dir = std::env::temp_dir().join(format!("ciba-gate-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let policies = std::fs::canonicalize(policies).with_context(|| {
        format!(
            "policy directory {} (run from the repository root, or pass --policies)",
            policies.display()
        )
    })?;

    // The development OP, with one client registered for this gateway.
    let secret = format!("{:032x}", rand::random::<u128>());
    let secret_file = dir.join("client-secret");
    std::fs::write(&secret_file, &secret)?;
    let callback_url = format!("http://{}/ciba/callback", opts.callback_listen);
    let op_listener = tokio::net::TcpListener::bind(opts.op_listen)
        .await
        .with_context(|| format!("binding the development OP on {}", opts.op_listen))?;
    let op = DevOp::spawn(
        op_listener,
        DevOpConfig {
            clients: vec![DevClient {
                client_id: "ciba-gate-dev".into(),
                secret,
                delivery,
                notification_endpoint: (delivery != DeliveryMode::Poll)
                    .then(|| callback_url.clone()),
            }],
            users: vec!["demo@example.com".into()],
            interval: Some(2),
            default_expiry: 120,
            ..DevOpConfig::default()
        },
    )
    .await?;

    let callback = if delivery == DeliveryMode::Poll {
        String::new()
    } else {
        format!(
            "  callback: {{listen: \"{}\", insecure_http: true}}\n",
            opts.callback_listen
        )
    };
    // The admin port: the one asked for, or any free one when it is taken. The
    // listener is kept and handed to the app.
    let admin_listener = match std::net::TcpListener::bind(opts.admin_listen) {
        Ok(l) => l,
        Err(_) => {
            let l = std::net::TcpListener::bind((opts.admin_listen.ip(), 0))?;
            eprintln!(
                "  {} is taken; admin endpoints on {} instead",
                opts.admin_listen,
                l.local_addr()?
            );
            l
        }
    };
    let admin = admin_listener.local_addr()?;
    let yaml = format!(
        "listen: \"{listen}\"\n\
         admin: {{listen: \"{admin}\"}}\n\
         shutdown: {{drain: {drain}}}\n\
         agent: {{id: dev-agent, namespace: dev}}\n\
         policy: {{dir: {policies:?}, reload_interval: 1s}}\n\
         evidence: {{sink: stdout}}\n\
         upstreams:\n  - name: demo-tools\n    kind: mcp\n    mount: /mcp\n    url: http://{tools}/mcp\n\
         approvals:\n\
         \x20 op:\n\
         \x20   issuer: \"{issuer}\"\n\
         \x20   client_id: ciba-gate-dev\n\
         \x20   client_auth: {{method: client_secret_basic, secret: {{file: {secret_file:?}}}}}\n\
         \x20   delivery: {delivery}\n\
         \x20   allow_insecure_http: true\n\
         \x20 user: {{value: demo@example.com}}\n\
         \x20 binding_message_profile: ciba-gate-dev\n\
         \x20 mode: {mode}\n\
         \x20 max_wait: 120s\n\
         \x20 ping_fallback_poll: 10s\n\
         {callback}",
        listen = opts.listen,
        issuer = op.issuer(),
        delivery = delivery.as_str(),
        mode = if opts.park { "park" } else { "hold" },
        drain = humantime::format_duration(opts.drain),
    );
    let config_path = dir.join("dev.yaml");
    std::fs::write(&config_path, yaml)?;
    let cfg = LoadedConfig::load(&config_path)?;
    eprintln!();
    eprintln!("  ciba-gate dev — for trying things out, not for production");
    eprintln!("  MCP endpoint:   http://{}/mcp", opts.listen);
    eprintln!(
        "  approval page:  {}/   (open it on your phone or in a browser)",
        op.issuer()
    );
    eprintln!("  delivery mode:  {}", delivery.as_str());
    eprintln!("  metrics:        http://{admin}/metrics   (probes: /healthz, /readyz)");
    eprintln!();
    crate::app::App::build(&cfg)?
        .with_admin_listener(admin_listener)
        .start()
        .await?
        .until_signal()
        .await
}

/// `ciba-gate dev-op`: the development OP alone, until SIGTERM or Ctrl-C.
pub async fn dev_op(
    listen: SocketAddr,
    clients: &[String],
    users: Vec<String>,
    interval: Option<u64>,
    expiry: u64,
) -> anyhow::Result<()> {
    use crate::devop::op::{DeliveryMode, DevClient, DevOp, DevOpConfig};
    let mut registered = Vec::new();
    for c in clients {
        let mut parts = c.splitn(4, ':');
        let (Some(id), Some(secret), Some(mode)) = (parts.next(), parts.next(), parts.next())
        else {
            anyhow::bail!("--client must be ID:SECRET:poll|ping|push[:NOTIFY_URL]");
        };
        let delivery = match mode {
            "poll" => DeliveryMode::Poll,
            "ping" => DeliveryMode::Ping,
            "push" => DeliveryMode::Push,
            other => anyhow::bail!("--client delivery must be poll, ping or push, not {other:?}"),
        };
        let notification_endpoint = parts.next().map(str::to_string);
        if delivery != DeliveryMode::Poll && notification_endpoint.is_none() {
            anyhow::bail!("--client {id}: ping and push need a NOTIFY_URL");
        }
        registered.push(DevClient {
            client_id: id.to_string(),
            secret: secret.to_string(),
            delivery,
            notification_endpoint,
        });
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the development OP on {listen}"))?;
    let op = DevOp::spawn(
        listener,
        DevOpConfig {
            clients: registered,
            users,
            interval,
            default_expiry: expiry,
            ..DevOpConfig::default()
        },
    )
    .await?;
    println!("READY {}", op.issuer());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    crate::app::shutdown_signal().await;
    op.shutdown();
    Ok(())
}
