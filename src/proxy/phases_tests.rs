//! The request path's first two phases as a spec, on a gateway built from config
//! with the bundled policies and no network: classify a message into a unit (what
//! policy reads, how the gateway answers, whether a person can be asked), then decide.

use std::sync::Arc;

use http::Method;
use serde_json::{Value, json};

use super::Gateway;
use super::call::{Call, Caller, Unit};
use super::decide::{self, Verdict};
use super::flow::message_unit;
use super::mcp::{self, Body};
use super::render::Shape;
use crate::app::App;
use crate::config::LoadedConfig;
use crate::outcome::Reason;

fn gateway() -> Arc<Gateway> {
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let yaml = format!(
        r#"listen: "127.0.0.1:0"
agent: {{id: unit-agent, namespace: agents}}
policy: {{dir: {policies:?}, reload_interval: 0s}}
evidence: {{sink: stdout}}
upstreams:
  - {{name: tools, kind: mcp, mount: /mcp, url: "http://127.0.0.1:9/mcp"}}
"#
    );
    let cfg = LoadedConfig::parse(std::path::Path::new("/unit/gateway.yaml"), &yaml)
        .expect("the unit test config is valid");
    App::build(&cfg).expect("the app builds").gateway
}

/// The request head of an MCP POST with this `Accept`.
fn head(accept: &str) -> http::request::Parts {
    http::Request::post("/mcp")
        .header("content-type", "application/json")
        .header("accept", accept)
        .header("mcp-protocol-version", "2025-06-18")
        .header("mcp-session-id", "s-1")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

const SSE_AND_JSON: &str = "application/json, text/event-stream";

/// Classifies one message as the only one of its request (`single`) or a batch member.
fn classify(
    gw: &Arc<Gateway>,
    message: Value,
    accept: &str,
    single: bool,
) -> Result<Unit, (Reason, Shape)> {
    let mount = gw.mount_for("/mcp").expect("the /mcp mount");
    let call = Call::new(gw, mount, &Method::POST);
    let head = head(accept);
    let bytes = serde_json::to_vec(&message).unwrap();
    let Ok(Body::Single(msg)) = mcp::parse_body(&bytes, 64, Some("2025-06-18")) else {
        panic!("not one valid message: {message}");
    };
    let base = call.base_input(&head);
    message_unit(&call, &base, &head, &msg, Some("2025-06-18"), single)
}

/// The unit of a request carrying only `message`, from a client that accepts SSE.
fn request(gw: &Arc<Gateway>, message: Value) -> Unit {
    classify(gw, message, SSE_AND_JSON, true).expect("a unit")
}

fn tool_call(id: i64, name: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": name, "arguments": arguments}})
}

fn deploy_prod() -> Value {
    json!({"service": "payments", "env": "prod"})
}

#[test]
fn a_tool_call_becomes_a_unit_policy_reads_by_name_and_arguments() {
    let gw = gateway();
    let unit = request(
        &gw,
        tool_call(7, "list_deployments", json!({"env": "prod"})),
    );
    let input = unit.input.to_value();
    assert_eq!(input["tool"]["name"], "list_deployments");
    assert_eq!(input["tool"]["arguments"], json!({"env": "prod"}));
    assert_eq!(input["mcp"]["method"], "tools/call");
    assert_eq!(input["mcp"]["protocol_version"], "2025-06-18");
    assert_eq!(input["phase"], "request");
    assert_eq!(input["agent"]["id"], "unit-agent");
    assert!(
        matches!(&unit.shape, Shape::ToolResult { id, tool, stateless: false } if id == &json!(7) && tool == "list_deployments"),
        "{:?}",
        unit.shape
    );
    assert!(unit.list_id.is_none());
}

#[test]
fn the_caller_records_what_the_client_can_do_for_an_approval() {
    let gw = gateway();
    let mut call = tool_call(8, "deploy_service", deploy_prod());
    call["params"]["_meta"] = json!({"progressToken": "t-8"});
    let unit = request(&gw, call);
    let Some(Caller::Mcp {
        id,
        progress_token,
        accepts_sse,
        stateless,
        can_elicit,
        request_state,
    }) = unit.approvable
    else {
        panic!("a single tools/call request is approvable");
    };
    assert_eq!(id, json!(8));
    assert_eq!(progress_token, Some(json!("t-8")));
    assert!(accepts_sse);
    assert!(!stateless && !can_elicit && request_state.is_none());

    let plain = classify(
        &gw,
        tool_call(9, "deploy_service", deploy_prod()),
        "application/json",
        true,
    )
    .unwrap();
    assert!(matches!(
        plain.approvable,
        Some(Caller::Mcp {
            accepts_sse: false,
            progress_token: None,
            ..
        })
    ));
}

#[test]
fn an_allowed_call_is_forwarded_and_a_denied_one_blocked_with_the_policys_code() {
    let gw = gateway();
    let mut allowed = request(
        &gw,
        tool_call(1, "list_deployments", json!({"env": "prod"})),
    );
    assert!(matches!(
        decide::request(&gw, &mut allowed),
        Verdict::Forward
    ));

    let mut denied = request(
        &gw,
        tool_call(2, "delete_repository", json!({"repo": "acme/payments"})),
    );
    match decide::request(&gw, &mut denied) {
        Verdict::Block(reason) => assert_eq!(reason.code(), "destructive_tool"),
        other => panic!("delete_repository must be blocked, got {other:?}"),
    }
}

#[test]
fn a_sensitive_call_asks_a_person_with_the_policys_approval_object() {
    let gw = gateway();
    let mut unit = request(&gw, tool_call(3, "deploy_service", deploy_prod()));
    let Verdict::Approve(approval) = decide::request(&gw, &mut unit) else {
        panic!("deploy_service to prod needs a person");
    };
    let message = approval["binding_message"]
        .as_str()
        .expect("the bundled policy names a binding message");
    assert!(message.contains("payments"), "{message}");
}

#[test]
fn a_batch_member_is_never_approvable_so_a_call_that_needs_a_person_is_blocked() {
    let gw = gateway();
    let mut member = classify(
        &gw,
        tool_call(4, "deploy_service", deploy_prod()),
        SSE_AND_JSON,
        false,
    )
    .unwrap();
    assert!(member.approvable.is_none());
    match decide::request(&gw, &mut member) {
        Verdict::Block(Reason::ApprovalUnsupported) => {}
        other => panic!("a batch member cannot be approved, got {other:?}"),
    }
}

#[test]
fn a_malformed_tool_call_is_refused_before_policy_with_invalid_params() {
    let gw = gateway();
    let bad = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                     "params": {"arguments": {"env": "prod"}}});
    let Err((reason, shape)) = classify(&gw, bad, SSE_AND_JSON, true) else {
        panic!("a tools/call without a name is not a unit");
    };
    assert!(matches!(reason, Reason::InvalidParams(_)), "{reason:?}");
    assert!(matches!(shape, Shape::JsonRpc { id } if id == json!(5)));
}

#[test]
fn a_notification_has_no_answer_and_a_list_is_marked_for_filtering() {
    let gw = gateway();
    let note = request(
        &gw,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    assert!(matches!(note.shape, Shape::Unanswerable));
    assert!(note.approvable.is_none() && note.tool.is_none());

    let list = request(
        &gw,
        json!({"jsonrpc": "2.0", "id": 6, "method": "tools/list"}),
    );
    assert_eq!(list.list_id.as_deref(), Some("6"));
    assert!(matches!(list.shape, Shape::JsonRpc { .. }));
}
