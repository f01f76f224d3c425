use futures_util::StreamExt;

use super::*;

/// A stdio MCP server in Python: `echo` answers in pairs, the second request first
/// (with the id and params it received); `exit` exits; `noise` writes a line that
/// is not JSON and one too long before its answer; `ask_me` pings the gateway
/// first and returns the reply; a cancellation of a waiting `echo` answers it with
/// the id the cancellation named; `slow` reports progress (twice, under the token it
/// got, after one for a token nobody asked for) before its answer; every method it
/// gets goes to stderr.
const PEER: &str = r#"
import json, sys
pairs = []
def say(m):
    print(json.dumps(m), flush=True)
for line in sys.stdin:
    m = json.loads(line)
    method = m.get("method")
    sys.stderr.write("got %s %s\n" % (method, json.dumps(m.get("params", {}).get("requestId"))))
    sys.stderr.flush()
    if method == "initialize":
        say({"jsonrpc": "2.0", "id": m["id"], "result": {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": {"name": "peer", "version": "1"}}})
    elif method == "echo":
        pairs.append(m)
        if len(pairs) == 2:
            for p in reversed(pairs):
                say({"jsonrpc": "2.0", "id": p["id"], "result": {"params": p["params"], "seen": p["id"]}})
            pairs = []
    elif method == "notifications/cancelled":
        gone = m["params"]["requestId"]
        for p in [p for p in pairs if p["id"] == gone]:
            say({"jsonrpc": "2.0", "id": p["id"], "result": {"cancelled": gone}})
        pairs = [p for p in pairs if p["id"] != gone]
    elif method == "exit":
        sys.exit(3)
    elif method == "noise":
        print("this is not JSON", flush=True)
        print("x" * 5000, flush=True)
        say({"jsonrpc": "2.0", "id": m["id"], "result": {"after": "noise"}})
    elif method == "slow":
        tok = m.get("params", {}).get("_meta", {}).get("progressToken")
        say({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 999999, "progress": 1}})
        if tok is not None:
            for i in (1, 2):
                say({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": tok, "progress": i, "total": 2}})
        say({"jsonrpc": "2.0", "id": m["id"], "result": {"token": tok}})
    elif method == "ask_me":
        say({"jsonrpc": "2.0", "id": "s1", "method": "ping"})
        reply = json.loads(sys.stdin.readline())
        say({"jsonrpc": "2.0", "id": m["id"], "result": {"reply": reply}})
"#;

fn peer(max_pending: usize, response_timeout: Duration) -> StdioServer {
    let launch = Launch {
        command: vec!["python3".into(), "-c".into(), PEER.into()],
        env: [(
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_default(),
        )]
        .into(),
        working_dir: None,
        max_pending,
        response_timeout,
        max_message: 1000,
    };
    StdioServer::new("peer".into(), launch, Default::default())
}

fn request(id: Value, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

#[test]
fn backoff_doubles_from_a_quarter_second_to_thirty_seconds() {
    assert_eq!(backoff(1), Duration::from_millis(250));
    assert_eq!(backoff(2), Duration::from_millis(500));
    assert_eq!(backoff(4), Duration::from_secs(2));
    assert_eq!(backoff(9), MAX_RETRY);
    assert_eq!(backoff(u32::MAX), MAX_RETRY);
}

#[tokio::test]
async fn two_agents_with_the_same_id_each_get_their_own_answer_with_their_id() {
    let server = peer(8, Duration::from_secs(10));
    // A newline inside a string cannot start a second message on the server's stdin.
    let smuggle = "x\"}\n{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"exit\"}\n";
    let (a, b) = tokio::join!(
        server.ask(request(json!(1), "echo", json!({"from": "a"})), "session-a"),
        server.ask(
            request(json!(1), "echo", json!({"from": smuggle})),
            "session-b"
        ),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a["id"], 1);
    assert_eq!(b["id"], 1);
    assert_eq!(a["result"]["params"]["from"], "a");
    assert_eq!(b["result"]["params"]["from"], smuggle);
    assert_ne!(
        a["result"]["seen"], b["result"]["seen"],
        "the server saw two ids"
    );
    assert_eq!(server.revision().await.unwrap(), "2025-06-18");
    server.shutdown().await;
}

#[tokio::test]
async fn an_agents_cancellation_names_the_gateways_id_for_its_request() {
    let server = peer(8, Duration::from_secs(10));
    let waiting = server.ask(request(json!("call-7"), "echo", json!({})), "session-a");
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let note = |scope: &'static str| {
            server.tell(
                json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                       "params": {"requestId": "call-7"}}),
                scope,
            )
        };
        // Another session's request of the same id is not this one: nothing is sent.
        note("session-b").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        note("session-a").await.unwrap();
    };
    let (answer, ()) = tokio::join!(waiting, cancel);
    let answer = answer.unwrap();
    assert_eq!(answer["id"], "call-7");
    let own = &answer["result"]["cancelled"];
    assert!(own.is_u64(), "the server got the gateway's id: {answer}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_process_that_exits_fails_its_call_and_is_started_again_for_the_next() {
    let server = peer(8, Duration::from_secs(10));
    let err = server
        .ask(request(json!("x"), "exit", json!({})), "")
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Connect(_)), "{err}");
    // Started again after the first backoff (a quarter second, waited out).
    let (a, b) = tokio::join!(
        server.ask(request(json!(2), "echo", json!({"n": 1})), ""),
        server.ask(request(json!(3), "echo", json!({"n": 2})), ""),
    );
    assert_eq!(a.unwrap()["result"]["params"]["n"], 1);
    assert_eq!(b.unwrap()["result"]["params"]["n"], 2);
    server.shutdown().await;
}

#[tokio::test]
async fn lines_that_are_not_messages_are_skipped_and_the_servers_ping_is_answered() {
    let server = peer(8, Duration::from_secs(10));
    let answer = server
        .ask(request(json!(1), "noise", json!({})), "")
        .await
        .unwrap();
    assert_eq!(answer["result"]["after"], "noise");
    let answer = server
        .ask(request(json!(2), "ask_me", json!({})), "")
        .await
        .unwrap();
    assert_eq!(
        answer["result"]["reply"],
        json!({"jsonrpc": "2.0", "id": "s1", "result": {}})
    );
    server.shutdown().await;
}

#[tokio::test]
async fn waiting_calls_are_bounded_and_an_unanswered_one_times_out() {
    let server = peer(1, Duration::from_millis(500));
    // `echo` waits for a pair: alone it is never answered.
    let first = server.ask(request(json!(1), "echo", json!({})), "");
    let second = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.ask(request(json!(2), "echo", json!({})), "").await
    };
    let (first, second) = tokio::join!(first, second);
    assert!(matches!(first, Err(UpstreamError::Timeout(_))), "{first:?}");
    assert!(matches!(second, Err(UpstreamError::Busy(1))), "{second:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_program_that_cannot_start_is_unreachable_and_tried_again_after_a_backoff() {
    let mut server = peer(8, Duration::from_secs(10));
    server.launch.command = vec!["/nonexistent/stdio-server".into()];
    for _ in 0..2 {
        let err = server
            .ask(request(json!(1), "echo", json!({})), "")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, UpstreamError::Connect(why) if why.contains("could not start")),
            "{err}"
        );
    }
    let State::Stopped { failures, .. } = &*server.state.lock().await else {
        panic!("not stopped");
    };
    assert_eq!(
        *failures, 2,
        "the second call waited out the first backoff and tried again"
    );
}

#[tokio::test]
async fn after_shutdown_no_call_starts_the_server_again() {
    let server = peer(8, Duration::from_secs(10));
    server.revision().await.unwrap();
    server.shutdown().await;
    let err = server
        .ask(request(json!(1), "echo", json!({})), "")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("shutting down"), "{err}");
}

#[tokio::test]
async fn progress_reaches_the_agent_that_asked_under_its_own_token_before_the_answer() {
    let server = peer(8, Duration::from_secs(10));
    let slow = |id: i64| {
        request(
            json!(id),
            "slow",
            json!({"_meta": {"progressToken": "agent-token"}}),
        )
    };
    let events: Vec<Value> = server
        .ask_streamed(slow(7), "session-a")
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(events.len(), 3, "{events:?}");
    for (i, p) in events[..2].iter().enumerate() {
        assert_eq!(p["method"], "notifications/progress");
        assert_eq!(p["params"]["progressToken"], "agent-token");
        assert_eq!(p["params"]["progress"], i as u64 + 1);
    }
    // The server saw the gateway's own token, never the agent's.
    assert_eq!(events[2]["id"], 7);
    assert!(events[2]["result"]["token"].is_u64(), "{events:?}");
    // Without a stream to relay it to, the token is not passed on at all.
    let answer = server.ask(slow(8), "session-a").await.unwrap();
    assert_eq!(answer["result"]["token"], Value::Null);
    server.shutdown().await;
}
