//! Request smuggling: bytes that reach a tool server without policy having read them.

use serde_json::Value;

use crate::harness::{NaiveUpstream, RawUpstream, mcp_post, raw_exchange, tools_call};

fn mcp_upstream(addr: std::net::SocketAddr) -> String {
    format!("  - {{name: tools, kind: mcp, mount: /mcp, url: \"http://{addr}/mcp\"}}")
}

/// A complete request calling the destructive tool, to hide behind another one.
fn smuggled_delete_repository() -> String {
    mcp_post(&tools_call(66, "delete_repository", r#"{"repo":"core"}"#))
}

#[tokio::test]
async fn a_body_behind_delete_never_reaches_a_tool_server_that_does_not_read_it() {
    let up = NaiveUpstream::start("last");
    let gate = crate::harness::gate(&mcp_upstream(up.addr)).await;
    let smuggled = smuggled_delete_repository();
    let attack = format!(
        "DELETE /mcp HTTP/1.1\r\nHost: gate\r\nMcp-Session-Id: s1\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let answers = raw_exchange(gate.addr, attack.as_bytes()).await;
    assert_eq!(answers[0].status, 400, "{:?}", answers[0]);
    let v = answers[0].json();
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["error"]["data"]["reason"], "body_not_allowed");
    // Whatever happened to the rest of the connection, the tool server saw nothing.
    let allowed = raw_exchange(
        gate.addr,
        mcp_post(&tools_call(1, "list_deployments", "{}")).as_bytes(),
    )
    .await;
    assert_eq!(allowed[0].json()["id"], 1);
    assert_eq!(up.tools_run(), vec!["list_deployments"]);
    assert!(
        up.requests().iter().all(|r| r["method"] != "DELETE"),
        "{:?}",
        up.requests()
    );
    let evidence = gate.evidence(2).await;
    assert_eq!(evidence[0]["reason"], "body_not_allowed");
    assert_eq!(evidence[0]["outcome"], "rejected");
}

#[tokio::test]
async fn a_chunked_body_behind_get_is_refused_and_nothing_is_forwarded() {
    let up = NaiveUpstream::start("last");
    let gate = crate::harness::gate(&mcp_upstream(up.addr)).await;
    let smuggled = smuggled_delete_repository();
    let attack = format!(
        "GET /mcp HTTP/1.1\r\nHost: gate\r\nAccept: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    let answers = raw_exchange(gate.addr, attack.as_bytes()).await;
    assert_eq!(answers[0].status, 400);
    assert_eq!(
        answers[0].json()["error"]["data"]["reason"],
        "body_not_allowed"
    );
    assert!(up.requests().is_empty(), "{:?}", up.requests());
}

#[tokio::test]
async fn get_and_delete_without_a_body_still_pass_to_policy_and_on() {
    let up = NaiveUpstream::start("last");
    let gate = crate::harness::gate(&mcp_upstream(up.addr)).await;
    let get = "GET /mcp HTTP/1.1\r\nHost: gate\r\nAccept: text/event-stream\r\n\r\n";
    let delete =
        "DELETE /mcp HTTP/1.1\r\nHost: gate\r\nMcp-Session-Id: s1\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(raw_exchange(gate.addr, get.as_bytes()).await[0].status, 200);
    assert_eq!(
        raw_exchange(gate.addr, delete.as_bytes()).await[0].status,
        200
    );
    let methods: Vec<Value> = up.requests().iter().map(|r| r["method"].clone()).collect();
    assert_eq!(methods, vec!["GET", "DELETE"]);
}

#[tokio::test]
async fn pipelined_requests_are_each_decided_and_answered_in_order() {
    let up = NaiveUpstream::start("last");
    let gate = crate::harness::gate(&mcp_upstream(up.addr)).await;
    let pipeline = format!(
        "{}{}{}",
        mcp_post(&tools_call(1, "list_deployments", "{}")),
        mcp_post(&tools_call(2, "delete_repository", r#"{"repo":"core"}"#)),
        mcp_post(&tools_call(3, "list_deployments", r#"{"page":2}"#)),
    );
    let answers = raw_exchange(gate.addr, pipeline.as_bytes()).await;
    let ids: Vec<Value> = answers.iter().map(|a| a.json()["id"].clone()).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    assert_eq!(answers[1].json()["result"]["isError"], true);
    assert_eq!(up.tools_run(), vec!["list_deployments", "list_deployments"]);
}

#[tokio::test]
async fn conflicting_framing_is_decided_on_one_reading_and_reframed_by_the_gateway() {
    let (addr, up) = RawUpstream::start().await;
    let gate = crate::harness::gate(&mcp_upstream(addr)).await;
    let allowed = tools_call(1, "list_deployments", "{}");
    let smuggled = smuggled_delete_repository();
    // Both Content-Length and chunked: the chunked reading wins (RFC 9112 §6.3) and the
    // connection closes after the answer, so the bytes after the last chunk are nobody's
    // next request.
    let attack = format!(
        "POST /mcp HTTP/1.1\r\nHost: gate\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{allowed}\r\n0\r\n\r\n{smuggled}",
        allowed.len()
    );
    let answers = raw_exchange(gate.addr, attack.as_bytes()).await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].json()["id"], 1);
    let seen = up.all();
    assert_eq!(seen.len(), 1, "{seen:?}");
    // One framing, written by the gateway: a Content-Length matching the body policy read.
    assert_eq!(seen[0].body, allowed.as_bytes());
    assert!(!seen[0].chunked);
    assert_eq!(seen[0].header_count("content-length"), 1);
    assert_eq!(seen[0].header_count("transfer-encoding"), 0);
}

#[tokio::test]
async fn ambiguous_request_heads_are_refused_before_anything_is_forwarded() {
    let (addr, up) = RawUpstream::start().await;
    let gate = crate::harness::gate(&mcp_upstream(addr)).await;
    let body = tools_call(1, "list_deployments", "{}");
    let two_lengths = format!(
        "POST /mcp HTTP/1.1\r\nHost: gate\r\nContent-Type: application/json\r\nContent-Length: {}\r\nContent-Length: 5\r\n\r\n{body}",
        body.len()
    );
    let folded = format!(
        "POST /mcp HTTP/1.1\r\nHost: gate\r\nContent-Type: application/json\r\nX-Note: a\r\n folded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let te_not_chunked = format!(
        "POST /mcp HTTP/1.1\r\nHost: gate\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip\r\n\r\n{body}"
    );
    for attack in [two_lengths, folded, te_not_chunked] {
        let answers = raw_exchange(gate.addr, attack.as_bytes()).await;
        assert!(
            answers.is_empty() || answers[0].status == 400,
            "{attack:?} → {answers:?}"
        );
    }
    assert!(up.all().is_empty(), "{:?}", up.all());
}

#[tokio::test]
async fn a_compressed_or_foreign_charset_mcp_body_is_refused_not_forwarded() {
    let (addr, up) = RawUpstream::start().await;
    let gate = crate::harness::gate(&mcp_upstream(addr)).await;
    let body = tools_call(1, "list_deployments", "{}");
    for extra in [
        "Content-Encoding: gzip\r\n",
        "Content-Encoding: identity, deflate\r\n",
    ] {
        let attack = format!(
            "POST /mcp HTTP/1.1\r\nHost: gate\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answers = raw_exchange(gate.addr, attack.as_bytes()).await;
        assert_eq!(answers[0].status, 415, "{extra}");
        assert_eq!(
            answers[0].json()["error"]["data"]["reason"],
            "unsupported_encoding"
        );
    }
    let latin1 = format!(
        "POST /mcp HTTP/1.1\r\nHost: gate\r\nContent-Type: application/json; charset=iso-8859-1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(
        raw_exchange(gate.addr, latin1.as_bytes()).await[0].status,
        415
    );
    assert!(up.all().is_empty());
}

fn http_upstream(addr: std::net::SocketAddr, opaque: bool) -> String {
    format!(
        "  - name: tickets\n    kind: http\n    mount: /tickets\n    url: \"http://{addr}\"\n    routes:\n      - {{method: GET, path: /deployments, tool: list_deployments}}\n      - {{method: POST, path: \"/projects/{{project}}/issues\", tool: create_issue, opaque_body: {opaque}}}"
    )
}

#[tokio::test]
async fn an_http_route_get_with_a_body_is_refused() {
    let (addr, up) = RawUpstream::start().await;
    let gate = crate::harness::gate(&http_upstream(addr, false)).await;
    let hidden = "DELETE /projects/core/issues/1 HTTP/1.1\r\nHost: t\r\n\r\n";
    let attack = format!(
        "GET /tickets/deployments HTTP/1.1\r\nHost: gate\r\nContent-Length: {}\r\n\r\n{hidden}",
        hidden.len()
    );
    let answers = raw_exchange(gate.addr, attack.as_bytes()).await;
    assert_eq!(answers[0].status, 400);
    assert_eq!(answers[0].json()["reason"], "body_not_allowed");
    assert!(up.all().is_empty());
}

#[tokio::test]
async fn an_http_route_body_policy_cannot_read_is_refused_unless_the_route_streams_it() {
    let (addr, up) = RawUpstream::start().await;
    let gate = crate::harness::gate(&http_upstream(addr, false)).await;
    let body = r#"{"project":"core","title":"x"}"#;
    let attack = format!(
        "POST /tickets/projects/core/issues HTTP/1.1\r\nHost: gate\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answers = raw_exchange(gate.addr, attack.as_bytes()).await;
    assert_eq!(answers[0].status, 415);
    assert_eq!(answers[0].json()["reason"], "opaque_body_not_allowed");
    assert!(up.all().is_empty());
}

#[tokio::test]
async fn a_streamed_body_goes_out_with_the_gateways_framing_and_without_the_agents_trailers() {
    let (addr, up) = RawUpstream::start().await;
    let gate = crate::harness::gate(&http_upstream(addr, true)).await;
    let attack = "POST /tickets/projects/core/issues HTTP/1.1\r\nHost: gate\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nTrailer: X-Approved\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Approved: yes\r\nContent-Length: 999\r\n\r\n";
    let answers = raw_exchange(gate.addr, attack.as_bytes()).await;
    // Forwarded: the tool server's own answer (202 for a body that is not JSON-RPC).
    assert_eq!(answers[0].status, 202, "{answers:?}");
    let seen = up.all();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"hello world");
    assert!(seen[0].trailers.is_empty(), "{:?}", seen[0].trailers);
    assert_eq!(seen[0].header_count("trailer"), 0);
    let framings = seen[0].header_count("content-length") + usize::from(seen[0].chunked);
    assert_eq!(framings, 1, "{:?}", seen[0].head);
}
