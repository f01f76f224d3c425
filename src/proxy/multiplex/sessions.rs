//! The virtual server's MCP sessions (revisions before 2026-07-28): the session id the
//! gateway gives the agent, and behind it one session per server, opened on first use
//! and re-opened when a server forgets it. Held in this replica's memory, bounded in
//! number and idle time (a replica that restarts loses them; the agent initializes
//! again on the 404, as MCP requires).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// Most sessions kept at once; the least recently used goes first.
pub const MAX_SESSIONS: usize = 10_000;
/// Calls remembered per session, for routing their cancellation.
pub const REMEMBERED_CALLS: usize = 256;
/// A session unused this long is forgotten.
pub const IDLE: Duration = Duration::from_secs(30 * 60);

/// One server's side of a session, once opened.
#[derive(Debug, Clone)]
pub struct ServerSession {
    /// The `Mcp-Session-Id` the server gave (none: the server keeps no sessions).
    pub id: Option<http::HeaderValue>,
    /// The revision the server agreed to.
    pub revision: String,
}

/// One agent session.
pub struct Session {
    /// The id the agent was given.
    pub id: String,
    /// The revision the agent and the gateway agreed on.
    pub revision: String,
    /// The agent's `clientInfo`, passed on when a server's session is opened.
    pub client_info: Value,
    /// Per server (by index): opened lazily, one opener at a time.
    pub servers: Vec<tokio::sync::Mutex<Option<ServerSession>>>,
    /// The latest calls sent on (JSON-RPC id as text → server), newest last.
    calls: Mutex<VecDeque<(String, usize)>>,
    /// The resources it follows on stdio servers (server name, URI): a stdio server's
    /// one process serves every session, so its updates are sorted out here.
    subscriptions: Mutex<HashSet<(String, String)>>,
    last_used: AtomicU64,
}

impl Session {
    fn touch(&self) {
        self.last_used.store(now_secs(), Ordering::Relaxed);
    }

    /// Notes that the request `id` went to `server` (its cancellation goes there too).
    pub fn sent(&self, id: &serde_json::Value, server: usize) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        if calls.len() >= REMEMBERED_CALLS {
            calls.pop_front();
        }
        calls.push_back((id.to_string(), server));
    }

    /// The server a request `id` of this session went to.
    pub fn server_of(&self, id: &serde_json::Value) -> Option<usize> {
        let text = id.to_string();
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls
            .iter()
            .rev()
            .find(|(i, _)| *i == text)
            .map(|(_, s)| *s)
    }

    /// Notes that this session follows `uri` on `server` (or no longer does).
    pub fn follow(&self, server: &str, uri: &str, on: bool) {
        let mut subs = self.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
        let key = (server.to_string(), uri.to_string());
        if on {
            subs.insert(key);
        } else {
            subs.remove(&key);
        }
    }

    /// The resources this session follows on stdio servers (server name, URI).
    pub fn subscriptions(&self) -> Vec<(String, String)> {
        let subs = self.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
        subs.iter().cloned().collect()
    }

    /// Whether this session follows `uri` on `server`.
    pub fn follows(&self, server: &str, uri: &str) -> bool {
        self.subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(server.to_string(), uri.to_string()))
    }

    /// The servers' sessions opened so far (for closing them).
    pub fn opened(&self) -> Vec<(usize, ServerSession)> {
        self.servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.try_lock().ok().and_then(|s| s.clone()).map(|s| (i, s)))
            .collect()
    }
}

fn now_secs() -> u64 {
    crate::clock::now_ms() / 1000
}

type Map = Arc<Mutex<HashMap<String, Arc<Session>>>>;

/// The sessions of one virtual server.
pub struct Sessions {
    servers: usize,
    map: Map,
}

/// Keeps a session of the gateway's own registered while it lives (a 2026-07-28
/// `subscriptions/listen` stream's record of what it follows at stdio servers).
pub struct Held {
    map: Map,
    id: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&self.id);
    }
}

impl Sessions {
    pub fn new(servers: usize) -> Sessions {
        Sessions {
            servers,
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Opens a session that lives as long as the `Held` returned with it.
    pub fn hold(&self, revision: &str) -> Option<(Arc<Session>, Held)> {
        let id = self.open(revision, Value::Null);
        let session = self.get(&id)?;
        let held = Held {
            map: self.map.clone(),
            id,
        };
        Some((session, held))
    }

    /// Opens a session; returns its id (128 random bits, hex).
    pub fn open(&self, revision: &str, client_info: Value) -> String {
        let id = format!("{:032x}", rand::random::<u128>());
        let session = Arc::new(Session {
            id: id.clone(),
            revision: revision.to_string(),
            client_info,
            servers: (0..self.servers)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            calls: Mutex::new(VecDeque::new()),
            subscriptions: Mutex::new(HashSet::new()),
            last_used: AtomicU64::new(now_secs()),
        });
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let cutoff = now_secs().saturating_sub(IDLE.as_secs());
        map.retain(|_, s| s.last_used.load(Ordering::Relaxed) >= cutoff);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), session);
        id
    }

    /// The session with this id, if it is live.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get(id)?;
        if s.last_used.load(Ordering::Relaxed) + IDLE.as_secs() < now_secs() {
            return None;
        }
        s.touch();
        Some(s.clone())
    }

    /// Ends a session; returns it so its servers' sessions can be closed.
    pub fn close(&self, id: &str) -> Option<Arc<Session>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    /// Whether any live session follows `uri` on `server`.
    pub fn followed(&self, server: &str, uri: &str) -> bool {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.values().any(|s| s.follows(server, uri))
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_until_it_is_closed() {
        let s = Sessions::new(2);
        let id = s.open("2025-06-18", Value::Null);
        assert_eq!(id.len(), 32);
        let got = s.get(&id).unwrap();
        assert_eq!(got.revision, "2025-06-18");
        assert_eq!(got.servers.len(), 2);
        assert!(s.get("0123").is_none());
        got.follow("notes", "deploy://a", true);
        assert!(s.followed("notes", "deploy://a"));
        assert!(!s.followed("notes", "deploy://b") && !s.followed("east", "deploy://a"));
        got.follow("notes", "deploy://a", false);
        assert!(!s.followed("notes", "deploy://a"));
        assert!(s.close(&id).is_some());
        assert!(s.get(&id).is_none());
        assert!(s.is_empty());
        let (held, guard) = s.hold("2026-07-28").unwrap();
        held.follow("notes", "deploy://a", true);
        assert!(s.followed("notes", "deploy://a"));
        drop(guard);
        assert!(!s.followed("notes", "deploy://a") && s.is_empty());
    }
}
