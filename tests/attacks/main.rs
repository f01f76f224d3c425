//! Attacks that must never work, each over real sockets and each against peers unlike
//! the gateway's own code: a Python `http.server` tool server that does not read bodies
//! behind GET/DELETE, raw-socket upstreams that log every byte they receive, parsers with
//! other duplicate-key rules, erroring and conflicting policies, upstreams that send
//! answers without end. Every test is named after what must never happen.

#[path = "../support/mod.rs"]
mod support;

mod callbacks;
mod differentials;
mod harness;
mod oversized;
mod ping_race;
mod policies;
mod smuggling;
