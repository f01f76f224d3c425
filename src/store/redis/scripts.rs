//! The store's Lua scripts: every state change that matters is one of them, run on one
//! key's slot.

use redis::Script;

/// The store's Lua scripts, one file each under `lua/` (their header says what KEYS
/// and ARGV hold; record fields are named in `codec.rs`).
pub(super) struct Scripts {
    pub(super) create: Script,
    pub(super) set_ack: Script,
    pub(super) resolve: Script,
    pub(super) consume: Script,
    pub(super) remove: Script,
    pub(super) fail_unack: Script,
    pub(super) remove_failed: Script,
    pub(super) rate: Script,
    pub(super) lease: Script,
    pub(super) release: Script,
    pub(super) claim: Script,
    pub(super) unclaim: Script,
}

/// A script with the shared "finish" step spliced in where it says `-- @finish_no`.
fn lua(source: &str) -> Script {
    Script::new(&source.replace("-- @finish_no\n", include_str!("lua/finish_no.lua")))
}

pub(super) fn scripts() -> Scripts {
    Scripts {
        create: lua(include_str!("lua/create.lua")),
        set_ack: lua(include_str!("lua/set_ack.lua")),
        resolve: lua(include_str!("lua/resolve.lua")),
        consume: lua(include_str!("lua/consume.lua")),
        remove: lua(include_str!("lua/remove.lua")),
        fail_unack: lua(include_str!("lua/fail_unack.lua")),
        remove_failed: lua(include_str!("lua/remove_failed.lua")),
        rate: lua(include_str!("lua/rate.lua")),
        lease: lua(include_str!("lua/lease.lua")),
        release: lua(include_str!("lua/release.lua")),
        claim: lua(include_str!("lua/claim.lua")),
        unclaim: lua(include_str!("lua/unclaim.lua")),
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Failure;

    #[test]
    fn a_lost_request_is_failed_with_the_code_the_codec_reads() {
        let script = include_str!("lua/fail_unack.lua");
        let code = Failure::RequestLost.code();
        assert!(script.contains(&format!("'f', '{code}'")), "{script}");
    }
}
