//! The `ciba-gate` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use ciba_gate::config::LoadedConfig;
use ciba_gate::policy::{self, PolicyEngine};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A gateway between AI agents and their tool servers: every tool call is checked
/// against Rego policy; sensitive calls wait for the user's approval (OpenID CIBA).
#[derive(Parser)]
#[command(name = "ciba-gate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a configuration file.
    Serve {
        /// The YAML configuration file (see ciba-gate.example.yaml).
        #[arg(long, short, env = "CIBA_GATE_CONFIG")]
        config: PathBuf,
    },
    /// Run a self-contained demo: the gateway on 127.0.0.1:8080 in front of a built-in
    /// demo MCP tool server, with the bundled policies and the in-memory store.
    Dev {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Policy directory.
        #[arg(long, default_value = "policies")]
        policies: PathBuf,
        /// Where the demo tool server listens (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:0")]
        tools_listen: SocketAddr,
        /// Where the development OpenID Provider (and its phone page) listens. Use
        /// 0.0.0.0:9400 to open the approval page from a phone on the same network.
        #[arg(long, default_value = "127.0.0.1:9400")]
        op_listen: SocketAddr,
        /// Where the gateway receives the OP's ping/push notifications.
        #[arg(long, default_value = "127.0.0.1:9401")]
        callback_listen: SocketAddr,
        /// How the OP delivers the user's answer: poll, ping or push.
        #[arg(long, default_value = "ping")]
        delivery: String,
        /// Park calls (answer "pending" at once) instead of holding them.
        #[arg(long)]
        park: bool,
        /// Where /metrics, /healthz and /readyz are served (a free port is used
        /// instead when this one is taken).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        /// After SIGTERM, how long held calls may still be answered (shutdown.drain).
        #[arg(long, default_value = "20s")]
        drain: humantime::Duration,
    },
    /// Work with Rego policies offline.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Validate a configuration file: read every secret and key, compile the policies,
    /// check the policy's sample binding messages against the OP's profile and fetch the
    /// OP's discovery document. Exit code 2 on any problem, naming the file and key.
    Check {
        #[arg(long, short, env = "CIBA_GATE_CONFIG")]
        config: PathBuf,
        /// Do not contact the OpenID Provider.
        #[arg(long)]
        offline: bool,
    },
    /// Run only the development OpenID Provider (for multi-process tests). Prints
    /// `READY <issuer>` on stdout once it listens.
    #[command(hide = true)]
    DevOp {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// A registered client: ID:SECRET:poll|ping|push[:NOTIFY_URL] (repeatable).
        #[arg(long = "client", required = true)]
        clients: Vec<String>,
        /// An accepted login_hint (repeatable).
        #[arg(long = "user", default_value = "demo@example.com")]
        users: Vec<String>,
        /// `interval` sent in the acknowledgement, in seconds.
        #[arg(long)]
        interval: Option<u64>,
        /// Request lifetime when the client sends no requested_expiry, in seconds.
        #[arg(long, default_value_t = 120)]
        expiry: u64,
    },
    /// Run only the demo MCP tool server (for benchmarks and client experiments).
    #[command(hide = true)]
    DemoTools {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run every `test_*` rule in the directory; prints pass/fail counts, exits 1 on any failure.
    Test {
        /// Policy directory (rules, data and *_test.rego files).
        #[arg(default_value = "policies")]
        dir: PathBuf,
    },
    /// Evaluate one input document and print the decision as JSON.
    Eval {
        /// Policy directory.
        #[arg(long, default_value = "policies")]
        policies: PathBuf,
        /// The input document (JSON file; `-` for standard input).
        #[arg(long)]
        input: PathBuf,
    },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let cfg = LoadedConfig::load(&config)?;
            let rt = runtime()?;
            // Inside the runtime: the gRPC trace exporter needs it.
            let telemetry = {
                let _enter = rt.enter();
                ciba_gate::telemetry::init(&cfg.config.log.level, &cfg.config.telemetry)?
            };
            let result = rt.block_on(ciba_gate::run::serve(cfg));
            telemetry.shutdown();
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev {
            listen,
            policies,
            tools_listen,
            op_listen,
            callback_listen,
            delivery,
            park,
            admin_listen,
            drain,
        } => {
            let rt = runtime()?;
            // Traces from the standard OTEL_* variables only.
            let telemetry = {
                let _enter = rt.enter();
                ciba_gate::telemetry::init("info", &Default::default())?
            };
            let opts = DevOptions {
                listen,
                tools_listen,
                op_listen,
                callback_listen,
                delivery,
                park,
                admin_listen,
                drain: drain.into(),
            };
            let result = rt.block_on(dev(opts, &policies));
            telemetry.shutdown();
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DevOp {
            listen,
            clients,
            users,
            interval,
            expiry,
        } => {
            init_logging();
            runtime()?.block_on(dev_op(listen, &clients, users, interval, expiry))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DemoTools { listen } => {
            init_logging();
            runtime()?.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                eprintln!("demo tool server on http://{}/mcp", listener.local_addr()?);
                ciba_gate::devop::demo_tools::serve(listener).await;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config, offline } => {
            check(&config, offline)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy {
            command: PolicyCommand::Test { dir },
        } => {
            let report = policy::testing::run_tests(&dir)?;
            print!("{}", report.render());
            Ok(if report.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Policy {
            command: PolicyCommand::Eval { policies, input },
        } => {
            let engine = PolicyEngine::load(&policies)?;
            let text = if input == Path::new("-") {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&input)
                    .with_context(|| format!("reading {}", input.display()))?
            };
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", input.display()))?;
            let decision = engine.decide(&value);
            println!("{}", serde_json::to_string_pretty(&decision)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `ciba-gate check`: everything start-up would do, without serving.
fn check(config: &Path, offline: bool) -> anyhow::Result<()> {
    use ciba_gate::approval::{binding, callback};
    let cfg = LoadedConfig::load(config)?;
    cfg.resolve_secrets()?;
    let engine = PolicyEngine::load(&cfg.config.policy.dir)
        .with_context(|| format!("{}: policy.dir", config.display()))?;
    println!(
        "ok: {} is valid; policies in {} compiled (revision {})",
        config.display(),
        cfg.config.policy.dir.display(),
        engine.revision()
    );
    let Some(approvals) = cfg.resolve_approvals()? else {
        return Ok(());
    };
    if let Some(tls) = approvals.callback.as_ref().and_then(|c| c.tls.as_ref()) {
        callback::ReloadingCert::load(callback::TlsFiles {
            cert: tls.cert_file.clone(),
            key: tls.key_file.clone(),
        })
        .with_context(|| format!("{}: approvals.callback.tls", config.display()))?;
    }
    let (checked, problems) =
        binding::check_samples(&engine, &cfg.config.policy.dir, &approvals.profile)
            .map_err(|e| anyhow::anyhow!(e))?;
    if !problems.is_empty() {
        for p in &problems {
            eprintln!(
                "{} [{}]: binding message {:?}: {}",
                p.file, p.index, p.message, p.problem
            );
        }
        anyhow::bail!(
            "{}: approvals.binding_message_profile: {} sample binding message(s) do not fit the {} profile",
            config.display(),
            problems.len(),
            approvals.profile.name
        );
    }
    println!(
        "ok: {checked} sample binding message(s) fit the {} profile",
        approvals.profile.name
    );
    if offline {
        return Ok(());
    }
    let issuer = approvals.client.issuer.clone();
    runtime()?
        .block_on(ciba_gate::ciba::CibaClient::discover(approvals.client))
        .with_context(|| {
            format!(
                "{}: approvals.op.issuer: discovery of {issuer}",
                config.display()
            )
        })?;
    println!("ok: discovery of {issuer} checked, JWKS fetched");
    Ok(())
}

struct DevOptions {
    listen: SocketAddr,
    tools_listen: SocketAddr,
    op_listen: SocketAddr,
    callback_listen: SocketAddr,
    delivery: String,
    park: bool,
    admin_listen: SocketAddr,
    drain: std::time::Duration,
}

/// `ciba-gate dev`: demo tools, the development OP and the gateway in one process.
async fn dev(opts: DevOptions, policies: &Path) -> anyhow::Result<()> {
    use ciba_gate::devop::op::{DeliveryMode, DevClient, DevOp, DevOpConfig};
    let delivery = match opts.delivery.as_str() {
        "poll" => DeliveryMode::Poll,
        "ping" => DeliveryMode::Ping,
        "push" => DeliveryMode::Push,
        other => anyhow::bail!("--delivery must be poll, ping or push, not {other:?}"),
    };
    let tools = ciba_gate::devop::demo_tools::spawn(opts.tools_listen).await?;
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
    // The admin port: the one asked for, or any free one when it is taken.
    let admin = match std::net::TcpListener::bind(opts.admin_listen) {
        Ok(l) => l.local_addr()?,
        Err(_) => {
            let l = std::net::TcpListener::bind((opts.admin_listen.ip(), 0))?;
            let addr = l.local_addr()?;
            eprintln!(
                "  {} is taken; admin endpoints on {addr} instead",
                opts.admin_listen
            );
            addr
        }
    };
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
    ciba_gate::run::serve(cfg).await
}

/// `ciba-gate dev-op`: the development OP alone, until SIGTERM or Ctrl-C.
async fn dev_op(
    listen: SocketAddr,
    clients: &[String],
    users: Vec<String>,
    interval: Option<u64>,
    expiry: u64,
) -> anyhow::Result<()> {
    use ciba_gate::devop::op::{DeliveryMode, DevClient, DevOp, DevOpConfig};
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
    ciba_gate::run::shutdown_signal().await;
    op.shutdown();
    Ok(())
}
