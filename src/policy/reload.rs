//! Hot reload: poll the policy directory, recompile when its content changes, keep
//! the last good policy when the new one does not load.
//!
//! Change detection is by content hash (names + contents of all policy files), so it
//! sees in-place edits as well as a Kubernetes ConfigMap update, where the kubelet
//! swaps the `..data` symlink to a new timestamped directory in one rename.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::engine::Compiled;
use super::files;
use super::{PolicyEngine, PolicyError};

/// What the poller remembers between ticks.
#[derive(Debug, Default)]
pub(crate) struct ReloadState {
    /// Revision (or error text) of the last rejected attempt: it is reported once,
    /// not on every tick, until the content changes again.
    last_rejected: Option<String>,
}

/// One poll. See [`PolicyEngine::reload_now`].
pub(crate) fn check_once(
    engine: &PolicyEngine,
    state: &mut ReloadState,
) -> Result<bool, PolicyError> {
    let shared = &engine.shared;
    let set = match read_stable(&shared.dir) {
        Ok(set) => set,
        Err(err) => {
            let key = format!("io:{err}");
            if state.last_rejected.as_deref() != Some(key.as_str()) {
                shared.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(dir = %shared.dir.display(), error = %err, "policy reload failed; keeping the policy in force");
                state.last_rejected = Some(key);
            }
            return Err(err);
        }
    };
    let revision = set.revision();
    let current = shared.current.load();
    if current.revision.as_ref() == revision {
        state.last_rejected = None;
        return Ok(false);
    }
    if state.last_rejected.as_deref() == Some(revision.as_str()) {
        // Same broken content as last time: already reported.
        return Ok(false);
    }
    match install(engine, &set) {
        Ok(changed) => {
            state.last_rejected = None;
            Ok(changed)
        }
        Err(err) => {
            state.last_rejected = Some(revision);
            Err(err)
        }
    }
}

/// Compiles `set` and puts it in force (`Ok(false)`: that revision already is). A set
/// that does not compile is counted and logged; the policy in force stays.
pub(crate) fn install(engine: &PolicyEngine, set: &files::FileSet) -> Result<bool, PolicyError> {
    let shared = &engine.shared;
    let revision = set.revision();
    let current = shared.current.load();
    if current.content_hash.as_deref() == Some(set.content_hash().as_str()) {
        return Ok(false);
    }
    match Compiled::build(set, &shared.options) {
        Ok(compiled) => {
            let old = current.revision.clone();
            let eval_path = compiled.eval_path();
            shared.current.store(Arc::new(compiled));
            shared.reloads.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                dir = %shared.dir.display(),
                old_revision = %old,
                revision = %revision,
                eval_path = ?eval_path,
                "policy reloaded"
            );
            Ok(true)
        }
        Err(err) => {
            shared.reload_failures.fetch_add(1, Ordering::Relaxed);
            let (file, problem) = match &err {
                PolicyError::Compile { path, message } => {
                    (path.display().to_string(), message.clone())
                }
                PolicyError::Io { path, source } => {
                    (path.display().to_string(), source.to_string())
                }
            };
            tracing::error!(
                dir = %shared.dir.display(),
                file = %file,
                problem = %problem,
                rejected_revision = %revision,
                revision = %current.revision,
                "policy reload rejected; keeping the policy in force"
            );
            Err(err)
        }
    }
}

/// Reads the directory until two consecutive reads agree, so a read that straddles a
/// symlink swap (half old files, half new) is never compiled.
fn read_stable(dir: &std::path::Path) -> Result<files::FileSet, PolicyError> {
    let mut previous = files::scan(dir, false)?;
    for _ in 0..5 {
        let again = files::scan(dir, false)?;
        if again.revision() == previous.revision() {
            return Ok(again);
        }
        previous = again;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(previous)
}

pub(crate) fn spawn(engine: PolicyEngine, interval: Duration) -> tokio::task::JoinHandle<()> {
    let interval = interval.max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick fires at once; the policy was just loaded
        let mut state = Some(ReloadState::default());
        loop {
            ticker.tick().await;
            let engine = engine.clone();
            let mut st = state.take().unwrap_or_default();
            let joined = tokio::task::spawn_blocking(move || {
                let _ = check_once(&engine, &mut st);
                st
            })
            .await;
            match joined {
                Ok(st) => state = Some(st),
                Err(err) => {
                    tracing::error!(error = %err, "policy reload task failed");
                    state = Some(ReloadState::default());
                }
            }
        }
    })
}
