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
    },
    /// Work with Rego policies offline.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Validate a configuration file and compile its policies; exits non-zero on any problem.
    Check {
        #[arg(long, short, env = "CIBA_GATE_CONFIG")]
        config: PathBuf,
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
            init_logging();
            let cfg = LoadedConfig::load(&config)?;
            runtime()?.block_on(ciba_gate::run::serve(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev {
            listen,
            policies,
            tools_listen,
        } => {
            init_logging();
            runtime()?.block_on(dev(listen, &policies, tools_listen))?;
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
        Command::Check { config } => {
            let cfg = LoadedConfig::load(&config)?;
            cfg.resolve_secrets()?;
            let engine = PolicyEngine::load(&cfg.config.policy.dir)
                .with_context(|| format!("{}: policy.dir", config.display()))?;
            println!(
                "ok: {} is valid; policies in {} compiled (revision {})",
                config.display(),
                cfg.config.policy.dir.display(),
                engine.revision()
            );
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

async fn dev(listen: SocketAddr, policies: &Path, tools_listen: SocketAddr) -> anyhow::Result<()> {
    let tools = ciba_gate::devop::demo_tools::spawn(tools_listen).await?;
    let dir = std::env::temp_dir().join(format!("ciba-gate-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let policies = std::fs::canonicalize(policies).with_context(|| {
        format!(
            "policy directory {} (run from the repository root, or pass --policies)",
            policies.display()
        )
    })?;
    let config_path = dir.join("dev.yaml");
    let yaml = format!(
        "listen: \"{listen}\"\nagent: {{id: dev-agent, namespace: dev}}\npolicy: {{dir: {policies:?}, reload_interval: 1s}}\nevidence: {{sink: stdout}}\nupstreams:\n  - name: demo-tools\n    kind: mcp\n    mount: /mcp\n    url: http://{tools}/mcp\n",
    );
    std::fs::write(&config_path, yaml)?;
    let cfg = LoadedConfig::load(&config_path)?;
    eprintln!(
        "ciba-gate dev: MCP endpoint http://{listen}/mcp (demo tools behind it at http://{tools}/mcp)"
    );
    ciba_gate::run::serve(cfg).await
}
