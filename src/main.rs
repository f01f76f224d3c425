//! The `ciba-gate` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ciba_gate::config::LoadedConfig;

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
    /// Evidence log tools: verify the hash chain and signed checkpoints.
    Evidence {
        #[command(subcommand)]
        command: EvidenceCommand,
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
enum EvidenceCommand {
    /// Check evidence files (in order) for edited, deleted, inserted or reordered
    /// records and forged checkpoints. Exit 1 on the first problem.
    Verify {
        /// Evidence files, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The checkpoint signer's public key (PEM); without it checkpoints are not checked.
        #[arg(long, value_name = "PUB.pem")]
        key: Option<PathBuf>,
    },
    /// Print the public key (PEM) of a checkpoint signing key, for `verify --key`.
    PublicKey {
        /// The Ed25519 private key (PEM PKCS#8) configured as evidence.signing_key.
        signing_key: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run every `test_*` rule in the directory (like `opa test`). Exit codes: 0 all
    /// passed, 1 a test failed or errored or coverage is below --threshold, 2 no tests.
    Test {
        /// Policy directory (rules, data and *_test.rego files).
        #[arg(default_value = "policies")]
        dir: PathBuf,
        /// Print every test with its duration and `print` output (not only failures).
        #[arg(short, long)]
        verbose: bool,
        /// Run only tests whose full name (data.pkg.test_x) matches this regex.
        #[arg(short, long, value_name = "REGEX")]
        run: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "pretty")]
        format: ciba_gate::cli::policy::Format,
        /// Report line coverage per file.
        #[arg(short, long)]
        coverage: bool,
        /// Fail when the coverage of the policy files is below this percentage
        /// (implies --coverage).
        #[arg(long, value_name = "PERCENT")]
        threshold: Option<f64>,
        /// Explain failing tests (fails) or every test (full): the line where the
        /// test's body stopped and every line it evaluated, per file.
        #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "fails")]
        explain: Option<ciba_gate::cli::policy::ExplainMode>,
    },
    /// Evaluate a query (like `opa eval`), or without one the gateway decision for
    /// --input, printed as JSON.
    Eval {
        /// A Rego query, e.g. `data.ciba_gate.deny`; default: the gateway decision.
        query: Option<String>,
        /// Policy directory.
        #[arg(long, short = 'p', default_value = "policies")]
        policies: PathBuf,
        /// The input document (JSON file; `-` for standard input).
        #[arg(long, short)]
        input: Option<PathBuf>,
        /// More policy or data files (.rego, .json, .yaml) or directories; repeatable.
        #[arg(long, short, value_name = "PATH")]
        data: Vec<PathBuf>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "json")]
        format: ciba_gate::cli::policy::Format,
        /// Exit 1 when the query is undefined (the gateway decision: when it is not allow).
        #[arg(long)]
        fail: bool,
    },
    /// Summarise where the shadow policy set (policy.shadow) decided differently, from
    /// evidence files: by effect pair, tool and reason.
    Diff {
        /// Evidence files (repeatable).
        #[arg(long, required = true, value_name = "FILE")]
        evidence: Vec<PathBuf>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "pretty")]
        format: ciba_gate::cli::policy::Format,
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
            let result = rt.block_on(async move {
                ciba_gate::app::App::build(&cfg)?
                    .start()
                    .await?
                    .until_signal()
                    .await
            });
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
            let opts = ciba_gate::cli::dev::DevOptions {
                listen,
                tools_listen,
                op_listen,
                callback_listen,
                delivery,
                park,
                admin_listen,
                drain: drain.into(),
            };
            let result = rt.block_on(ciba_gate::cli::dev::dev(opts, &policies));
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
            runtime()?.block_on(ciba_gate::cli::dev::dev_op(
                listen, &clients, users, interval, expiry,
            ))?;
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
            let report = runtime()?.block_on(ciba_gate::cli::check::run(&config, offline))?;
            if report.ok() {
                for note in &report.notes {
                    println!("ok: {note}");
                }
                println!("ok: {} is valid", config.display());
                Ok(ExitCode::SUCCESS)
            } else {
                for p in &report.problems {
                    eprintln!("error: {p}");
                }
                eprintln!(
                    "{}: {} problem(s); the gateway would not start with this configuration",
                    config.display(),
                    report.problems.len()
                );
                Ok(ExitCode::from(2))
            }
        }
        Command::Policy {
            command: PolicyCommand::Diff { evidence, format },
        } => ciba_gate::cli::policy::diff(&evidence, format),
        Command::Evidence {
            command: EvidenceCommand::Verify { files, key },
        } => ciba_gate::cli::evidence::verify(&files, key.as_deref()),
        Command::Evidence {
            command: EvidenceCommand::PublicKey { signing_key },
        } => ciba_gate::cli::evidence::public_key(&signing_key),
        Command::Policy {
            command:
                PolicyCommand::Test {
                    dir,
                    verbose,
                    run,
                    format,
                    coverage,
                    threshold,
                    explain,
                },
        } => ciba_gate::cli::policy::test(ciba_gate::cli::policy::TestArgs {
            dir,
            verbose,
            run,
            format,
            coverage,
            threshold,
            explain,
        }),
        Command::Policy {
            command:
                PolicyCommand::Eval {
                    query,
                    policies,
                    input,
                    data,
                    format,
                    fail,
                },
        } => ciba_gate::cli::policy::eval(ciba_gate::cli::policy::EvalArgs {
            query,
            policies,
            input,
            data,
            format,
            fail,
        }),
    }
}
