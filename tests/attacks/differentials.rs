//! Parser differentials: a body the gateway reads one way and a tool server another.
//!
//! The tool servers here are Python's `json` with three duplicate-key rules (last wins,
//! first wins, refuse), none of them the gateway's parser. Every body the gateway
//! forwards must mean, to each of them, exactly the tool and arguments the evidence
//! record names; every body that could mean two things must reach none of them.

use tokio::task::JoinSet;

use crate::harness::{Gate, NaiveUpstream, RawResponse, mcp_post, raw_exchange};

const MODES: [&str; 3] = ["last", "first", "strict"];

fn mcp_upstream(addr: std::net::SocketAddr) -> String {
    format!("  - {{name: tools, kind: mcp, mount: /mcp, url: \"http://{addr}/mcp\"}}")
}

/// Sends each body as its own MCP POST on its own connection, all at once.
async fn send_all(gate: &Gate, bodies: &[String]) -> Vec<RawResponse> {
    let mut set = JoinSet::new();
    for (i, body) in bodies.iter().enumerate() {
        let (addr, bytes) = (gate.addr, mcp_post(body));
        set.spawn(async move { (i, raw_exchange(addr, bytes.as_bytes()).await) });
    }
    let mut out: Vec<(usize, Vec<RawResponse>)> = set.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter()
        .map(|(i, mut answers)| {
            assert_eq!(answers.len(), 1, "body {i} got {} answers", answers.len());
            answers.remove(0)
        })
        .collect()
}

/// Bodies that JSON parsers in the wild read differently (or not at all). Each names a
/// harmless tool one way and a destructive one, or other arguments, the other way.
fn ambiguous_bodies() -> Vec<(&'static str, String)> {
    let call = |params: &str| {
        format!(r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{params}}}"#)
    };
    vec![
        (
            "duplicate_key",
            call(r#"{"name":"delete_repository","arguments":{"repo":"core"},"name":"list_deployments"}"#),
        ),
        (
            "duplicate_key",
            call(r#"{"name":"list_deployments","arguments":{"env":"dev"},"arguments":{"env":"prod"}}"#),
        ),
        (
            "duplicate_key",
            call(r#"{"name":"list_deployments","arguments":{"filter":{"env":"dev","env":"prod"}}}"#),
        ),
        (
            "duplicate_key",
            call(r#"{"name":"list_deployments","arguments":{"list":[{"a":1},{"b":{"c":1,"c":2}}]}}"#),
        ),
        // The same key spelled with an escape: equal once decoded.
        (
            "duplicate_key",
            call(r#"{"name":"delete_repository","arguments":{},"n\u0061me":"list_deployments"}"#),
        ),
        (
            "duplicate_key",
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/list","method":"tools/call","params":{"name":"delete_repository","arguments":{}}}"#.to_string(),
        ),
        (
            "duplicate_key",
            r#"{"jsonrpc":"2.0","id":7,"id":8,"method":"tools/call","params":{"name":"list_deployments","arguments":{}}}"#.to_string(),
        ),
        // Case-insensitive readers (some config-style decoders) see a duplicate.
        (
            "case_variant_key",
            call(r#"{"name":"list_deployments","Name":"delete_repository","arguments":{}}"#),
        ),
        (
            "lone_surrogate",
            call(r#"{"name":"list_deployments","arguments":{"env":"\ud800"}}"#),
        ),
        (
            "nul_character",
            call(r#"{"name":"list_deployments","arguments":{"env":"dev\u0000prod"}}"#),
        ),
        (
            "lossy_number",
            call(r#"{"name":"list_deployments","arguments":{"limit":9007199254740993}}"#),
        ),
        (
            "lossy_number",
            call(r#"{"name":"list_deployments","arguments":{"limit":1e400}}"#),
        ),
        (
            "lossy_number",
            call(r#"{"name":"list_deployments","arguments":{"ratio":0.1000000000000000055511151231257827}}"#),
        ),
        (
            "bom",
            format!("\u{feff}{}", call(r#"{"name":"list_deployments","arguments":{}}"#)),
        ),
        (
            "trailing_bytes",
            format!(
                "{}{}",
                call(r#"{"name":"list_deployments","arguments":{}}"#),
                call(r#"{"name":"delete_repository","arguments":{}}"#)
            ),
        ),
    ]
}

#[tokio::test]
async fn a_body_parsers_can_read_two_ways_never_reaches_any_tool_server() {
    for mode in MODES {
        let up = NaiveUpstream::start(mode);
        let gate = crate::harness::gate(&mcp_upstream(up.addr)).await;
        let cases = ambiguous_bodies();
        let bodies: Vec<String> = cases.iter().map(|(_, b)| b.clone()).collect();
        let answers = send_all(&gate, &bodies).await;
        for ((reason, body), answer) in cases.iter().zip(&answers) {
            assert_eq!(answer.status, 400, "{mode}: {body}");
            let v = answer.json();
            assert_eq!(v["jsonrpc"], "2.0", "{mode}: {body}: {v}");
            assert_eq!(v["error"]["data"]["reason"], *reason, "{mode}: {body}: {v}");
            let code = v["error"]["code"].as_i64().unwrap();
            assert!(code == -32600 || code == -32700, "{mode}: {body}: {v}");
        }
        let evidence = gate.evidence(cases.len()).await;
        assert_eq!(evidence.len(), cases.len());
        assert!(
            evidence.iter().all(|r| r["outcome"] == "rejected"),
            "{evidence:?}"
        );
        assert!(
            up.requests().is_empty(),
            "{mode}: the tool server read {:?}",
            up.requests()
        );
    }
}

/// Legal bodies with everything parsers disagree on near the edge: escapes in keys and
/// names, key order, nesting, numbers at the edge of exact, unicode, whitespace.
fn legal_bodies() -> Vec<String> {
    let call = |params: &str| {
        format!(r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{params}}}"#)
    };
    vec![
        call(r#"{"name":"list_deployments","arguments":{"env":"dev"}}"#),
        call(r#"{"arguments":{"env":"prod"},"name":"list_deployments"}"#),
        call(r#"{"name":"list\u005fdeployments","arguments":{"\u0065nv":"st\u0061ging"}}"#),
        call(
            r#"{"name":"list_deployments","arguments":{"limit":9007199254740992,"neg":-42,"f":1.5,"e":2.5e-3,"z":0}}"#,
        ),
        call(
            r#"{"name":"list_deployments","arguments":{"nested":{"a":[1,{"b":[true,false,null]}],"A":{"x":"\"quoted\""}}}}"#,
        ),
        call(r#"{"name":"list_deployments","arguments":{"text":"Grüße 👋 \ud83d\udc4b tab\t"}}"#),
        format!(
            " \n\t{}\r\n ",
            call(r#" { "name" : "list_deployments" , "arguments" : { "env" : "dev" } } "#)
        ),
    ]
}

#[tokio::test]
async fn every_tool_server_reads_the_tool_and_arguments_the_evidence_names() {
    for mode in MODES {
        let up = NaiveUpstream::start(mode);
        let gate = crate::harness::gate(&mcp_upstream(up.addr)).await;
        let bodies = legal_bodies();
        let answers = send_all(&gate, &bodies).await;
        for (body, answer) in bodies.iter().zip(&answers) {
            assert_eq!(answer.status, 200, "{mode}: {body}: {:?}", answer.json());
            assert!(answer.json()["result"].is_object(), "{mode}: {body}");
        }
        let evidence = gate.evidence(bodies.len()).await;
        let mut named: Vec<(String, String)> = evidence
            .iter()
            .map(|r| {
                assert_eq!(r["outcome"], "forwarded", "{r}");
                (
                    r["tool"].as_str().unwrap().to_string(),
                    r["args_fingerprint"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let mut read: Vec<(String, String)> = up
            .requests()
            .iter()
            .filter(|r| r["rpc_method"] == "tools/call")
            .map(|r| {
                assert_eq!(r["parse"], "ok", "{mode}: {r}");
                (
                    r["tool"].as_str().unwrap().to_string(),
                    ciba_gate::fingerprint::of_json(&r["arguments"]),
                )
            })
            .collect();
        named.sort();
        read.sort();
        assert_eq!(read.len(), bodies.len(), "{mode}");
        assert_eq!(named, read, "{mode}: evidence and tool server disagree");
        assert!(read.iter().all(|(tool, _)| tool == "list_deployments"));
    }
}
