//! The gateway as tests run it: built from a config through `App` (exactly as `serve`
//! builds it), listening on free loopback ports, with its evidence kept in memory.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ciba_gate::app::{App, Running};
use ciba_gate::audit::EvidenceSink;
use ciba_gate::config::LoadedConfig;
use ciba_gate::store::ApprovalStore;
use serde_json::Value;

/// A running gateway and the evidence it wrote.
pub struct Gate {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub callback_addr: Option<SocketAddr>,
    pub evidence: Arc<Mutex<Vec<String>>>,
    pub running: Running,
}

impl Gate {
    /// Starts a gateway from `yaml` (written as `dir/gate.yaml`, so relative paths are
    /// relative to `dir`). `listen` and `admin` are added: free loopback ports.
    pub async fn start(dir: &Path, yaml: &str) -> Gate {
        Self::start_with(dir, yaml, None).await
    }

    /// Like `start`, with an approval store shared with other gateways (replicas).
    pub async fn start_with(dir: &Path, yaml: &str, store: Option<Arc<dyn ApprovalStore>>) -> Gate {
        let text = format!("listen: \"127.0.0.1:0\"\nadmin: {{listen: \"127.0.0.1:0\"}}\n{yaml}");
        let file = dir.join("gate.yaml");
        std::fs::write(&file, &text).unwrap();
        let cfg = LoadedConfig::parse(&file, &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let (sink, evidence) = EvidenceSink::memory();
        let mut builder = App::builder(&cfg).evidence(sink);
        if let Some(store) = store {
            builder = builder.store(store);
        }
        let running = builder.build().unwrap().start().await.unwrap();
        Gate {
            addr: running.addr,
            admin_addr: running.admin_addr,
            callback_addr: running.callback_addr,
            evidence,
            running,
        }
    }

    /// Waits until the OP's metadata is in (approvals can be asked for).
    pub async fn approvals_ready(&self) {
        for _ in 0..500 {
            if self.running.approvals().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("OP discovery did not complete");
    }

    /// Evidence records so far (written by a thread: waits for `at_least`).
    pub async fn evidence(&self, at_least: usize) -> Vec<Value> {
        for _ in 0..300 {
            if self.evidence.lock().unwrap().len() >= at_least {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.evidence
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Every evidence line as written (for secret scans).
    pub fn evidence_text(&self) -> String {
        self.evidence.lock().unwrap().join("\n")
    }
}

/// A gateway built from its config exactly as `serve` builds it — evidence through
/// the configured sink (`evidence` is the YAML of the `evidence:` section), not the
/// in-memory one — with the bundled policies, in front of the demo MCP tools.
pub async fn with_configured_evidence(dir: &Path, evidence: &str) -> Running {
    let tools = ciba_gate::devop::demo_tools::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\nadmin: {{listen: \"127.0.0.1:0\"}}\n\
         agent: {{id: billing-agent}}\n\
         policy: {{dir: {policies:?}, reload_interval: 0s}}\n\
         evidence: {evidence}\n\
         upstreams:\n  - {{name: tools, kind: mcp, mount: /mcp, url: \"http://{tools}/mcp\"}}\n"
    );
    let file = dir.join("gate.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let cfg = LoadedConfig::parse(&file, &yaml).unwrap();
    App::builder(&cfg).build().unwrap().start().await.unwrap()
}
