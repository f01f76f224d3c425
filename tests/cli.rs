//! The command line as an operator meets it: `check`, `policy eval`, `policy test`,
//! the commented example config, and errors that name the file and the key.

use std::path::{Path, PathBuf};
use std::process::Command;

use ciba_gate::config::LoadedConfig;

/// A state key that passes `check` (32+ bytes, not a pattern).
const TEST_STATE_KEY: &str = "9c41f0e2b7d35a8864e1c0f92ab7d3e56f08a1c4b2e9d7f3";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ciba-gate"))
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Copies the example config next to the bundled policies, a secret file and a
/// self-signed callback certificate.
fn example_in_tempdir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo("ciba-gate.example.yaml")).unwrap();
    let text = text.replace("dir: policies", &format!("dir: {:?}", repo("policies")));
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, text).unwrap();
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    std::fs::write(dir.path().join("secrets/tickets-api-key"), "k-123\n").unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["gate.example.com".to_string()]).unwrap();
    std::fs::create_dir_all(dir.path().join("tls")).unwrap();
    std::fs::write(dir.path().join("tls/callback.crt"), cert.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("tls/callback.key"),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
    (dir, cfg)
}

/// `check` of the example, with every secret it names in the environment.
fn check_example(cfg: &Path, extra: &[&str]) -> std::process::Output {
    bin()
        .args(["check", "--offline", "--config"])
        .arg(cfg)
        .args(extra)
        .env("TOOLS_API_TOKEN", "t")
        .env("CIBA_CLIENT_SECRET", "s")
        .env("CIBA_LOGIN_HINT", "alice@example.com")
        .env("CIBA_GATE_STATE_KEY", TEST_STATE_KEY)
        .output()
        .unwrap()
}

#[test]
fn the_commented_example_config_is_valid() {
    let (_dir, cfg) = example_in_tempdir();
    let out = check_example(&cfg, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("ok:"), "{stdout}");
    let loaded = LoadedConfig::load(&cfg).unwrap();
    assert_eq!(loaded.config.upstreams.len(), 2);
    assert_eq!(loaded.config.upstreams[1].routes.len(), 2);
    assert!(loaded.config.approvals.is_some());
    assert!(
        stdout.contains("sample binding message(s) fit the auth0 profile"),
        "{stdout}"
    );
}

/// The bundled policies, unchanged, fit the default profile (oidc-provider's strict
/// default rule) and every other shipped profile: one verdict, "ok".
#[test]
fn bundled_policies_fit_the_default_and_every_shipped_profile() {
    let (dir, cfg) = example_in_tempdir();
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("binding_message_profile: auth0"));
    let line = text
        .lines()
        .find(|l| l.contains("binding_message_profile: auth0"))
        .unwrap();
    let cases: Vec<(String, &str)> = std::iter::once((String::new(), "oidc-provider"))
        .chain(
            ciba_gate::approval::binding::PROFILE_NAMES
                .iter()
                .map(|p| (line.replace("auth0", p), *p)),
        )
        .collect();
    for (replacement, expected) in cases {
        std::fs::write(&cfg, text.replace(line, &replacement)).unwrap();
        let out = check_example(&cfg, &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{expected}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.starts_with("ok:"), "{expected}: {stdout}");
        assert!(
            stdout.contains(&format!(
                "sample binding message(s) fit the {expected} profile"
            )),
            "{expected}: {stdout}"
        );
    }
    drop(dir);
}

#[test]
fn check_finds_binding_messages_the_op_would_refuse() {
    let (dir, cfg) = example_in_tempdir();
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "binding_message_profile: auth0",
            "binding_message_profile: {max_chars: 8}",
        ),
    )
    .unwrap();
    let out = check_example(&cfg, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("approvals.binding_message_profile"), "{err}");
    assert!(
        err.contains("approvals.sample.json"),
        "names the sample file: {err}"
    );
    drop(dir);
}

#[test]
fn check_fetches_the_op_discovery_unless_offline() {
    let (_dir, cfg) = example_in_tempdir();
    let text = std::fs::read_to_string(&cfg).unwrap();
    // Nothing listens there: discovery must fail, naming the key.
    std::fs::write(
        &cfg,
        text.replace(
            "issuer: https://login.example.com/",
            "issuer: https://127.0.0.1:1/",
        ),
    )
    .unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&cfg)
        .env("TOOLS_API_TOKEN", "t")
        .env("CIBA_CLIENT_SECRET", "s")
        .env("CIBA_LOGIN_HINT", "alice@example.com")
        .env("CIBA_GATE_STATE_KEY", TEST_STATE_KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("approvals.op.issuer"), "{err}");
}

#[test]
fn a_missing_secret_is_named_by_its_key() {
    let (_dir, cfg) = example_in_tempdir();
    let out = bin()
        .args(["check", "--offline", "--config"])
        .arg(&cfg)
        .env_remove("TOOLS_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.yaml: upstreams[0].credential.env: environment variable TOOLS_API_TOKEN is not set"), "{err}");
}

fn check_error(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(
        &cfg,
        yaml.replace("POLICIES", &format!("{:?}", repo("policies"))),
    )
    .unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "should fail: {yaml}");
    String::from_utf8_lossy(&out.stderr).to_string()
}

const GOOD: &str = "agent: {id: a}\npolicy: {dir: POLICIES}\nupstreams:\n  - {name: t, kind: mcp, mount: /mcp, url: \"http://127.0.0.1:9/mcp\"}\n";

#[test]
fn config_errors_name_the_file_the_key_and_the_problem() {
    let cases = [
        (
            GOOD.replace("kind: mcp", "kind: ftp"),
            "upstreams[0].kind",
            "unknown variant",
        ),
        (
            GOOD.replace("mount: /mcp", "mount: mcp"),
            "upstreams[0].mount",
            "must start with '/'",
        ),
        (
            GOOD.replace("\"http://127.0.0.1:9/mcp\"", "nope"),
            "upstreams[0].url",
            "absolute http",
        ),
        (
            GOOD.replace("agent: {id: a}", "agent: {id: a, colour: red}"),
            "agent",
            "unknown field `colour`",
        ),
        (
            GOOD.replace("policy: {dir: POLICIES}", "policy: {dir: /nonexistent/dir}"),
            "policy.dir",
            "not a directory",
        ),
        (
            GOOD.replace(
                "policy: {dir: POLICIES}",
                "policy: {dir: POLICIES, reload_interval: soon}",
            ),
            "policy.reload_interval",
            "",
        ),
        (
            format!("{GOOD}limits: {{max_json_depth: 1}}\n"),
            "limits.max_json_depth",
            "between",
        ),
        (
            format!("{GOOD}evidence: {{sink: file}}\n"),
            "evidence.path",
            "required",
        ),
        (
            GOOD.replace(
                "url: \"http://127.0.0.1:9/mcp\"}",
                "url: \"http://127.0.0.1:9/mcp\", credential: {header: authorization}}",
            ),
            "upstreams[0].credential",
            "exactly one of `env` or `file`",
        ),
        (
            GOOD.replace("kind: mcp", "kind: http"),
            "upstreams[0].routes",
            "at least one route",
        ),
    ];
    for (yaml, key, problem) in cases {
        let err = check_error(&yaml);
        assert!(err.contains("bad.yaml: "), "names the file: {err}");
        assert!(err.contains(key), "names {key}: {err}");
        assert!(err.contains(problem), "says {problem}: {err}");
    }
}

#[test]
fn a_policy_that_does_not_compile_fails_the_check_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.rego"),
        "package ciba_gate\nallow if {\n",
    )
    .unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, GOOD.replace("POLICIES", &format!("{:?}", dir.path()))).unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.rego"), "{err}");
}

#[test]
fn policy_eval_prints_the_decision_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    std::fs::write(
        &input,
        r#"{"phase":"request","agent":{"id":"a"},"upstream":{"name":"tools","kind":"mcp"},
            "mcp":{"method":"tools/call","kind":"request"},
            "tool":{"name":"deploy_service","arguments":{"service":"payments","env":"prod"}}}"#,
    )
    .unwrap();
    let out = bin()
        .args(["policy", "eval", "--policies"])
        .arg(repo("policies"))
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["effect"], "approve");
    assert_eq!(v["approval"]["binding_message"], "Deploy payments to prod");
}

#[test]
fn policy_test_runs_the_bundled_tests_and_reports_counts() {
    let out = bin()
        .args(["policy", "test"])
        .arg(repo("policies"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(last.ends_with(" passed, 0 failed"), "{last}");
}

#[test]
fn policy_test_fails_when_a_test_fails() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        "package ciba_gate\nimport rego.v1\nallow if input.x == 1\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p_test.rego"),
        "package ciba_gate\nimport rego.v1\ntest_ok if allow with input as {\"x\": 1}\ntest_bad if allow with input as {\"x\": 2}\n",
    )
    .unwrap();
    let out = bin()
        .args(["policy", "test"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed, 1 failed"));
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["dev", "--help"],
        vec!["check", "--help"],
        vec!["policy", "test", "--help"],
        vec!["policy", "eval", "--help"],
        vec!["evidence", "verify", "--help"],
        vec!["evidence", "public-key", "--help"],
    ] {
        let out = bin().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{args:?}"
        );
    }
}

/// The in-cluster config shipped in deploy/ (and so the chart's shape) passes `check`
/// once its mounted paths point at local files.
#[test]
fn the_kubernetes_config_in_deploy_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = std::fs::read_to_string(repo("deploy/configmap-config.yaml")).unwrap();
    let cm: serde_yaml_ng::Value = serde_yaml_ng::from_str(&manifest).unwrap();
    let text = cm["data"]["config.yaml"].as_str().unwrap().to_string();
    let root = dir.path().display().to_string();
    let text = text
        .replace(
            "/etc/ciba-gate/policies",
            &repo("policies").display().to_string(),
        )
        .replace("/etc/ciba-gate/", &format!("{root}/"))
        .replace("/var/run/secrets/ciba-gate/", &format!("{root}/"));
    std::fs::write(dir.path().join("tickets-api-key"), "k\n").unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["gate".to_string()]).unwrap();
    std::fs::create_dir_all(dir.path().join("tls")).unwrap();
    std::fs::write(dir.path().join("tls/tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("tls/tls.key"),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, text).unwrap();
    let out = bin()
        .args(["check", "--offline", "--config"])
        .arg(&cfg)
        .env("TOOLS_API_TOKEN", "t")
        .env("CIBA_CLIENT_SECRET", "s")
        .env("CIBA_LOGIN_HINT", "alice@example.com")
        .env("CIBA_GATE_STATE_KEY", TEST_STATE_KEY)
        .env("REDIS_URL", "redis://127.0.0.1:1/0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn policy_test_shows_the_error_text_of_an_erroring_test() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        "package ciba_gate\nimport rego.v1\nallow if to_number(input.n) > 1\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p_test.rego"),
        "package ciba_gate\nimport rego.v1\ntest_errors if allow with input as {\"n\": \"many\"}\n",
    )
    .unwrap();
    let out = bin()
        .args(["policy", "test"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("FAIL data.ciba_gate.test_errors"))
        .unwrap_or_else(|| panic!("{stdout}"));
    // Where it failed and what failed, not an empty reason.
    assert!(line.contains("p.rego:3"), "{line}");
    assert!(line.contains("to_number"), "{line}");
    assert!(stdout.contains("not VM-exact"), "{stdout}");
}
