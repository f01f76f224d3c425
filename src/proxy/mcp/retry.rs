//! The clean retry: what the gateway put into a 2026-07-28 retry (its `requestState`,
//! its entry in `inputResponses`, `_meta` keys under `ciba-gate/`) belongs to the
//! gateway, not to the tool server. Before an approved call is forwarded they are taken
//! out, and everything else stays as the agent wrote it: members keep their order and
//! every value its exact bytes (only the whitespace between the members of `params`
//! and of the message itself is lost). A body with nothing of the gateway's in it is
//! not touched at all.
//!
//! The body has passed the strict parser already (no duplicate keys, no lone
//! surrogates, nothing two parsers read differently), so reading it again here sees
//! the same message policy decided and the person approved: the tool, its arguments
//! and their bytes are unchanged.

use std::fmt;

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::results::INPUT_KEY;

/// The prefix of the `_meta` keys the gateway writes.
const GATEWAY_META_PREFIX: &str = "ciba-gate/";

/// A JSON object's members in the order written, each value as its raw bytes.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = m.next_entry::<String, Box<RawValue>>()? {
                    out.push(entry);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Members {
    fn parse(raw: &str) -> Option<Members> {
        serde_json::from_str(raw).ok()
    }

    fn write(&self) -> String {
        let mut s = String::from("{");
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&serde_json::to_string(k).unwrap_or_default());
            s.push(':');
            s.push_str(v.get());
        }
        s.push('}');
        s
    }

    fn raw(&self) -> Option<Box<RawValue>> {
        RawValue::from_string(self.write()).ok()
    }

    /// Drops the members `gone` names; true when any was dropped.
    fn drop_where(&mut self, gone: impl Fn(&str) -> bool) -> bool {
        let before = self.0.len();
        self.0.retain(|(k, _)| !gone(k));
        self.0.len() != before
    }
}

/// The same object without the members `gone` names, or `None` when nothing went (or
/// the value is not an object). An object left empty is dropped by the caller.
fn without(raw: &RawValue, gone: impl Fn(&str) -> bool) -> Option<Members> {
    let mut m = Members::parse(raw.get())?;
    m.drop_where(gone).then_some(m)
}

/// The message `body` without the gateway's own members in `params`; `None` when
/// there are none (forward the body as it is). `request_state_is_ours`: the
/// `requestState` the body carries was sealed by this gateway (checked by the caller).
pub fn clean(body: &[u8], request_state_is_ours: bool) -> Option<Bytes> {
    let text = std::str::from_utf8(body).ok()?;
    let mut message = Members::parse(text)?;
    let at = message.0.iter().position(|(k, _)| k == "params")?;
    let params = Members::parse(message.0[at].1.get())?;
    let mut changed = false;
    let mut kept = Vec::with_capacity(params.0.len());
    for (k, v) in params.0 {
        let inner = match k.as_str() {
            "requestState" if request_state_is_ours => {
                changed = true;
                continue;
            }
            "inputResponses" => without(&v, |key| key == INPUT_KEY),
            "_meta" => without(&v, |key| key.starts_with(GATEWAY_META_PREFIX)),
            _ => None,
        };
        match inner {
            None => kept.push((k, v)),
            Some(rest) => {
                changed = true;
                // `inputResponses` with nothing else in it goes; `_meta` stays (a
                // 2026-07-28 request must carry it).
                if !rest.0.is_empty() || k == "_meta" {
                    kept.push((k, rest.raw()?));
                }
            }
        }
    }
    if !changed {
        return None;
    }
    message.0[at].1 = Members(kept).raw()?;
    Some(Bytes::from(message.write()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn the_gateways_members_go_and_the_rest_keeps_its_bytes() {
        let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"deploy_service","arguments":{"env":"prod", "service":"payments","n":1.50},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","ciba-gate/x":1},"inputResponses":{"ciba-gate/approval":{"action":"accept","content":{}}},"requestState":"abc.def"}}"#;
        let out = clean(body, true).expect("changed");
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(
            text,
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"deploy_service","arguments":{"env":"prod", "service":"payments","n":1.50},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#
        );
    }

    #[test]
    fn other_input_responses_stay() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","inputResponses":{"server/own":{"a":1},"ciba-gate/approval":{}},"requestState":"s"}}"#;
        let out: Value = serde_json::from_slice(&clean(body, true).unwrap()).unwrap();
        assert_eq!(
            out["params"],
            json!({"name":"t","inputResponses":{"server/own":{"a":1}}})
        );
    }

    #[test]
    fn a_body_with_nothing_of_the_gateways_is_left_alone() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{}}}"#;
        assert!(clean(body, true).is_none());
        // A requestState that is not the gateway's stays (the caller refused it anyway).
        let foreign = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","requestState":"theirs"}}"#;
        assert!(clean(foreign, false).is_none());
        assert!(clean(b"[1]", true).is_none());
    }
}
