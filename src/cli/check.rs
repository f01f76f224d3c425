//! `ciba-gate check`: everything start-up would do, without serving and without side
//! effects (no evidence file is opened, nothing listens). One verdict: every problem is
//! listed, and "ok" is printed only when there is none.

use std::path::Path;

use anyhow::Context;

use crate::approval::{binding, callback};
use crate::config::LoadedConfig;
use crate::policy::PolicyEngine;
use crate::policy::bundle::source::BundleSource;

/// What `check` found: the lines to print on success, the problems otherwise.
#[derive(Debug, Default)]
pub struct Report {
    pub notes: Vec<String>,
    pub problems: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Each virtual server's servers asked for their tools: a name two of them claim (it
/// would be listed by neither) and a server that does not answer are problems.
async fn check_virtual_servers(report: &mut Report, cfg: &LoadedConfig) {
    let c = &cfg.config;
    for (i, u) in c.upstreams.iter().enumerate() {
        if u.servers.is_empty() {
            continue;
        }
        let vs = match crate::proxy::multiplex::VirtualServer::from_config(
            &c.upstreams,
            &cfg.base(),
            i,
            c.limits.max_inspected_response_bytes,
        ) {
            Ok(vs) => vs,
            Err(e) => {
                report
                    .problems
                    .push(cfg.field_error("upstreams", e).to_string());
                continue;
            }
        };
        let merged = vs.survey(c.limits.max_inspected_response_bytes).await;
        vs.shutdown().await;
        let at = format!("upstreams[{i}].servers");
        for name in &merged.collisions {
            report.problems.push(format!(
                "{}: {at}: the tool name {name:?} is claimed by two servers (neither would be listed); give one of them a tool_prefix or an alias",
                cfg.file.display()
            ));
        }
        for (j, reason) in &merged.unavailable {
            report.problems.push(format!(
                "{}: {at}: {} could not list its tools: {}",
                cfg.file.display(),
                vs.members[*j].name(),
                reason.sentence()
            ));
        }
        if merged.collisions.is_empty() && merged.unavailable.is_empty() {
            report.notes.push(format!(
                "virtual server {}: {} tools from {} server{}, no name claimed twice",
                u.name,
                merged.tools.len(),
                vs.members.len(),
                if vs.members.len() == 1 { "" } else { "s" }
            ));
        }
    }
}

/// Checks a config file. `Err` only when the file itself cannot be loaded.
pub async fn run(config: &Path, offline: bool) -> anyhow::Result<Report> {
    let cfg = LoadedConfig::load(config)?;
    let mut report = Report::default();
    let file = config.display().to_string();
    let base = cfg.base();
    let c = &cfg.config;
    match (&c.policy.dir, &c.policy.bundle) {
        (Some(dir), _) => match PolicyEngine::load(dir) {
            Ok(engine) => report.notes.push(format!(
                "policies in {} compiled (revision {}; {})",
                dir.display(),
                engine.revision(),
                crate::policy::evaluator_note(&engine)
            )),
            Err(e) => report.problems.push(format!("{file}: policy.dir: {e}")),
        },
        (None, Some(b)) => check_bundle(&mut report, &file, b, &base, offline).await,
        (None, None) => report
            .problems
            .push(format!("{file}: policy: give dir or bundle")),
    }
    for (i, u) in c.upstreams.iter().enumerate() {
        if let Some(cred) = &u.credential
            && let Err(e) = cred.source().read(&base)
        {
            report.problems.push(
                cfg.field_error(&format!("upstreams[{i}].credential"), e)
                    .to_string(),
            );
        }
    }
    if !offline {
        check_virtual_servers(&mut report, &cfg).await;
    }
    if let Err(e) = c.store.resolve(&base) {
        report
            .problems
            .push(cfg.field_error("store", e).to_string());
    }
    if let Err(e) = c.evidence.signer(&base) {
        report.problems.push(format!("{file}: evidence.{e}"));
    }
    let Some(approvals) = &c.approvals else {
        return Ok(report);
    };
    let resolved = match approvals.resolve(&base) {
        Ok(r) => r,
        Err(e) => {
            report
                .problems
                .push(cfg.field_error("approvals", e).to_string());
            return Ok(report);
        }
    };
    if let Some(tls) = resolved.callback.as_ref().and_then(|c| c.tls.as_ref())
        && let Err(e) = callback::ReloadingCert::load(callback::TlsFiles {
            cert: tls.cert_file.clone(),
            key: tls.key_file.clone(),
        })
    {
        report
            .problems
            .push(format!("{file}: approvals.callback.tls: {e:#}"));
    }
    if let Some(dir) = &c.policy.dir
        && let Ok(engine) = PolicyEngine::load(dir)
    {
        match binding::check_samples(&engine, dir, &resolved.profile) {
            Err(e) => report.problems.push(format!("{file}: policy samples: {e}")),
            Ok((checked, problems)) if problems.is_empty() => report.notes.push(format!(
                "{checked} sample binding message(s) fit the {} profile",
                resolved.profile.name
            )),
            Ok((_, problems)) => {
                for p in problems {
                    report.problems.push(format!(
                        "{file}: approvals.binding_message_profile: {} [{}]: binding message {:?} does not fit the {} profile: {}",
                        p.file, p.index, p.message, resolved.profile.name, p.problem
                    ));
                }
            }
        }
    }
    if !offline {
        let issuer = resolved.client.issuer.clone();
        match crate::ciba::CibaClient::discover(resolved.client)
            .await
            .with_context(|| format!("discovery of {issuer}"))
        {
            Ok(_) => report
                .notes
                .push(format!("discovery of {issuer} checked, JWKS fetched")),
            Err(e) => report
                .problems
                .push(format!("{file}: approvals.op.issuer: {e:#}")),
        }
    }
    Ok(report)
}

/// A bundle server is asked once (unless `offline`): the bundle must download, verify
/// and compile, as the running gateway would require.
async fn check_bundle(
    report: &mut Report,
    file: &str,
    cfg: &crate::policy::config::BundleConfig,
    base: &Path,
    offline: bool,
) {
    let source = match BundleSource::resolve(cfg, base) {
        Ok(s) => s,
        Err(e) => {
            report.problems.push(format!("{file}: policy.bundle.{e}"));
            return;
        }
    };
    if offline {
        report.notes.push(format!(
            "policy bundle {} not fetched (--offline)",
            source.name()
        ));
        return;
    }
    match source.fetch(None).await {
        Ok(crate::policy::bundle::source::Fetched::Bundle { set, .. }) => {
            let engine = PolicyEngine::awaiting_bundle(&source.name(), Default::default());
            match engine.install(set) {
                Ok(_) => report.notes.push(format!(
                    "policy bundle {} {}verified and compiled (revision {}; {})",
                    source.name(),
                    if source.verifies() {
                        ""
                    } else {
                        "(unsigned, not) "
                    },
                    engine.revision(),
                    crate::policy::evaluator_note(&engine)
                )),
                Err(e) => report.problems.push(format!("{file}: policy.bundle: {e}")),
            }
        }
        Ok(crate::policy::bundle::source::Fetched::NotModified) => report.problems.push(format!(
            "{file}: policy.bundle: the server answered 304 to a first request"
        )),
        Err(e) => report.problems.push(format!("{file}: policy.bundle: {e}")),
    }
}
