//! Shared helpers for integration tests that run real processes over real sockets:
//! free ports, child processes that die with the test, waiting for a port, and
//! installing the Node peers in `tests/interop` and `tests/phone` when they are missing.
#![allow(clippy::disallowed_methods)] // waits on real processes and sockets in real time
#![allow(dead_code)]

pub mod ca;
pub mod dev_op;
pub mod gateway;
pub mod ping_race;
pub mod recording_upstream;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

/// A JSON-RPC answer as the agent reads it: the body itself when it is JSON, else the
/// last event of the SSE stream that carries an `id` (`Null` when there is none).
pub fn jsonrpc_answer(text: &str) -> serde_json::Value {
    if let Ok(v) = serde_json::from_str(text) {
        return v;
    }
    text.split("\n\n")
        .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter(|v| v.get("id").is_some())
        .last()
        .unwrap_or(serde_json::Value::Null)
}

/// POSTs a JSON-RPC message to the gateway's `/mcp` as an SDK client would (JSON or
/// SSE accepted) and returns the answer (`jsonrpc_answer`).
pub async fn post_mcp(addr: SocketAddr, body: &serde_json::Value) -> serde_json::Value {
    let text = reqwest::Client::new()
        .post(format!("http://{addr}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    jsonrpc_answer(&text)
}

/// A port on 127.0.0.1 that was free a moment ago, for a child process to bind.
/// Picked below the kernel's ephemeral range (32768 and up): a port from `bind(0)`
/// could be handed to another test's `bind(0)` before the child binds it. Never the
/// same port twice in one test process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..10_000 {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in 20000-31999 on 127.0.0.1");
}

/// Directory of the Node peers (official MCP SDK client and server).
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("interop")
}

/// A child process that is killed (and reaped) when dropped. Its stderr (and
/// stdout unless piped) go to files so that a failing test can show them.
pub struct ChildGuard {
    pub name: String,
    child: Option<Child>,
    stdout_path: Option<PathBuf>,
    stderr_path: PathBuf,
}

impl ChildGuard {
    /// Spawn `cmd` with stdin closed, stderr to `<log_dir>/<name>.stderr` and
    /// stdout to `<log_dir>/<name>.stdout` (or piped when `pipe_stdout`).
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path, pipe_stdout: bool) -> ChildGuard {
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        let stdout_path = log_dir.join(format!("{name}.stdout"));
        cmd.stdin(Stdio::null());
        cmd.stderr(File::create(&stderr_path).expect("create stderr log"));
        if pipe_stdout {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(File::create(&stdout_path).expect("create stdout log"));
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {name} ({cmd:?}): {e}"));
        ChildGuard {
            name: name.to_string(),
            child: Some(child),
            stdout_path: (!pipe_stdout).then_some(stdout_path),
            stderr_path,
        }
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child already reaped")
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Exit status if the process has already ended.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child_mut().try_wait().ok().flatten()
    }

    /// Wait for the process to end by itself, killing it after `timeout`.
    /// Returns `None` on timeout.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn stdout_text(&self) -> String {
        self.stdout_path
            .as_ref()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Everything the process wrote so far, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = format!(
            "----- {} (pid {}) stderr -----\n{}",
            self.name,
            self.id(),
            self.stderr_text()
        );
        if self.stdout_path.is_some() {
            s.push_str(&format!(
                "\n----- {} stdout -----\n{}",
                self.name,
                self.stdout_text()
            ));
        }
        s
    }

    /// Read the piped stdout until a line starting with `prefix` shows up and
    /// return that line. Panics (with the process's stderr) on EOF or timeout.
    pub fn wait_for_stdout_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let stdout = self
            .child_mut()
            .stdout
            .take()
            .expect("wait_for_stdout_line needs a piped stdout");
        let (tx, rx) = mpsc::channel();
        let prefix_owned = prefix.to_string();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(None);
                        return;
                    }
                    Ok(_) => {
                        if line.starts_with(&prefix_owned) {
                            let _ = tx.send(Some(line.trim_end().to_string()));
                            // keep draining so the child never blocks on a full pipe
                            let mut sink = String::new();
                            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                                sink.clear();
                            }
                            return;
                        }
                    }
                }
            }
        });
        match rx.recv_timeout(timeout) {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "{} ended its stdout before printing {prefix:?}\n{}",
                self.name,
                self.logs()
            ),
            Err(_) => panic!(
                "{} did not print {prefix:?} within {timeout:?}\n{}",
                self.name,
                self.logs()
            ),
        }
    }
}

impl ChildGuard {
    /// Like [`ChildGuard::wait_for_stdout_line`], for several lines: reads the piped
    /// stdout until one line starting with each prefix has shown up (in any order) and
    /// returns them in the order of `prefixes`. Panics (with the logs) on EOF or timeout.
    pub fn wait_for_stdout_lines(&mut self, prefixes: &[&str], timeout: Duration) -> Vec<String> {
        let stdout = self
            .child_mut()
            .stdout
            .take()
            .expect("wait_for_stdout_lines needs a piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(None);
                        return;
                    }
                    // keeps draining after the last match so the child never blocks
                    Ok(_) => {
                        let _ = tx.send(Some(line.trim_end().to_string()));
                    }
                }
            }
        });
        let deadline = Instant::now() + timeout;
        let mut found: Vec<Option<String>> = vec![None; prefixes.len()];
        while found.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Some(line)) => {
                    if let Some(i) = prefixes
                        .iter()
                        .position(|p| line.starts_with(p))
                        .filter(|i| found[*i].is_none())
                    {
                        found[i] = Some(line);
                    }
                }
                Ok(None) => panic!(
                    "{} ended its stdout before printing {prefixes:?}\n{}",
                    self.name,
                    self.logs()
                ),
                Err(_) => panic!(
                    "{} did not print {prefixes:?} within {timeout:?}\n{}",
                    self.name,
                    self.logs()
                ),
            }
        }
        found.into_iter().map(Option::unwrap).collect()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Wait until something accepts TCP connections on 127.0.0.1:`port`.
/// If `child` ends first, panic with its logs.
pub fn wait_for_port(port: u16, timeout: Duration, mut child: Option<&mut ChildGuard>) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Some(c) = child.as_deref_mut() {
            if let Some(st) = c.try_status() {
                panic!(
                    "{} exited ({st}) before listening on {addr}\n{}",
                    c.name,
                    c.logs()
                );
            }
        }
        if Instant::now() >= deadline {
            let logs = child.map(|c| c.logs()).unwrap_or_default();
            panic!("nothing listening on {addr} after {timeout:?}\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Directories whose Node dependencies were checked in this test process.
static NPM_CI: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Make sure `tests/interop/node_modules` holds the pinned MCP SDK: runs `npm ci`
/// (from package-lock.json) once per test process when it is missing, so that
/// `cargo test` works on a clean clone. Panics with a message naming npm when
/// Node.js or npm is unavailable or the install fails.
pub fn ensure_node_peers() -> PathBuf {
    let dir = interop_dir();
    ensure_node_deps(&dir, "@modelcontextprotocol/sdk");
    dir
}

/// Directory of the test OpenID Provider (oidc-provider with a controller API).
pub fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("oidc")
}

/// Make sure `<dir>/node_modules/<package>` is installed: runs `npm ci` (from the
/// directory's package-lock.json) once per test process when it is missing. Panics
/// with a clear message when Node.js or npm is unavailable or the install fails.
pub fn ensure_node_deps(dir: &Path, package: &str) {
    let mut done = NPM_CI.lock().unwrap_or_else(|e| e.into_inner());
    if done.iter().any(|d| d == dir) {
        return;
    }
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "these tests need Node.js (>= 20) and npm on PATH: `node --version` failed. \
             Install Node.js/npm, then run `npm ci` in {}",
            dir.display()
        ),
    }
    let marker = dir.join("node_modules").join(package).join("package.json");
    if !marker.exists() {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "`npm ci` could not be started in {} ({e}); these tests need npm on PATH \
                     to install the pinned {package}",
                    dir.display()
                )
            });
        if !out.status.success() {
            panic!(
                "`npm ci` failed in {} ({}); it installs the pinned {package} \
                 from package-lock.json and needs the npm registry.\nstdout:\n{}\nstderr:\n{}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            marker.exists(),
            "`npm ci` succeeded but {} is missing",
            marker.display()
        );
    }
    done.push(dir.to_path_buf());
}

/// A throw-away `redis-server` on a free loopback port (never 6379), no persistence.
/// Killed (SIGKILL) when dropped; `kill` and `restart` simulate outages and data loss.
pub struct RedisServer {
    pub port: u16,
    guard: Option<ChildGuard>,
    dir: PathBuf,
    starts: u32,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut port = free_port();
        while port == 6379 {
            port = free_port();
        }
        let dir =
            std::env::temp_dir().join(format!("ciba-gate-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create redis log dir");
        let mut s = RedisServer {
            port,
            guard: None,
            dir,
            starts: 0,
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// kill -9 (no shutdown, no save).
    pub fn kill(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.kill();
        }
    }

    /// Starts it (again) on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            panic!(
                "these tests need `redis-server` on PATH (Debian/Ubuntu package `redis-server`: \
                 apt-get install redis-server)"
            );
        }
        self.starts += 1;
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]);
        let mut g = ChildGuard::spawn(
            &format!("redis-{}-{}", self.port, self.starts),
            cmd,
            &self.dir,
            false,
        );
        wait_for_port(self.port, Duration::from_secs(10), Some(&mut g));
        self.guard = Some(g);
    }

    /// Runs `redis-cli -p PORT args…` and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("redis-cli (Debian package `redis-tools`) must be on PATH");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-master Redis Cluster on free loopback ports (no replicas), for the cluster
/// flavour of the store contract.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    _guards: Vec<ChildGuard>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "ciba-gate-redis-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create redis cluster dir");
        let mut ports = Vec::new();
        let mut guards = Vec::new();
        while ports.len() < 3 {
            let port = free_port();
            // A cluster node also listens on port + 10000 (the cluster bus): keep that
            // below the ephemeral range too, and free.
            let bus_free =
                port + 10_000 < 32_768 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok();
            if !bus_free || ports.contains(&port) {
                continue;
            }
            let mut cmd = Command::new("redis-server");
            cmd.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--dir",
                &dir.display().to_string(),
            ]);
            let mut g = ChildGuard::spawn(&format!("redis-cluster-{port}"), cmd, &dir, false);
            wait_for_port(port, Duration::from_secs(10), Some(&mut g));
            ports.push(port);
            guards.push(g);
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (Debian package `redis-tools`) must be on PATH");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ok = ports.iter().all(|p| {
                Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
                    .unwrap_or(false)
            });
            if ok {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the Redis cluster never reached cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        RedisCluster {
            ports,
            _guards: guards,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.ports[0])
    }
}

/// The Python SDK's interpreter (target/mcp-py), installed on first use.
pub fn python_sdk() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dest = std::env::var_os("MCP_PY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/mcp-py"));
    let out = Command::new("bash")
        .arg(root.join("tests/interop/py/install.sh"))
        .env("MCP_PY_DIR", &dest)
        .output()
        .unwrap_or_else(|e| panic!("cannot run tests/interop/py/install.sh (bash): {e}"));
    assert!(
        out.status.success(),
        "installing the MCP Python SDK failed (needs python3 with venv and pip, and PyPI \
         for mcp==2.3.0):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dest.join("bin/python")
}
