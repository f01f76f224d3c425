//! The `ApprovalStore` contract: the SAME test functions run against the in-memory store
//! and the Redis store (each Redis test starts its own `redis-server` on a free port).
#![allow(clippy::disallowed_methods)] // waits on real processes and sockets in real time

mod support;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use ciba_gate::store::memory::MemoryStore;
use ciba_gate::store::redis::{RedisSettings, RedisStore};
use ciba_gate::store::{
    ApprovalRecord, ApprovalStore, Approver, Claim, Joined, Resolution, Status, StoreError, now_ms,
};
use support::{RedisCluster, RedisServer};

/// A store under test and (for the shared ones) a second handle on the same data
/// through another connection, as another replica would see it.
struct Subject {
    a: Arc<dyn ApprovalStore>,
    b: Arc<dyn ApprovalStore>,
    _redis: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
}

fn memory() -> Subject {
    let s = Arc::new(MemoryStore::new());
    Subject {
        a: s.clone(),
        b: s,
        _redis: None,
        _cluster: None,
    }
}

fn redis_settings(server: &RedisServer) -> RedisSettings {
    RedisSettings {
        url: server.url(),
        cluster: false,
        key_prefix: "test:".into(),
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_millis(500),
        tls_ca_pem: None,
    }
}

fn redis() -> Subject {
    let server = RedisServer::start();
    let a = RedisStore::connect(redis_settings(&server)).unwrap();
    let b = RedisStore::connect(redis_settings(&server)).unwrap();
    Subject {
        a,
        b,
        _redis: Some(server),
        _cluster: None,
    }
}

fn redis_cluster() -> Subject {
    let cluster = RedisCluster::start();
    let settings = || RedisSettings {
        url: cluster.url(),
        cluster: true,
        key_prefix: "test:".into(),
        connect_timeout: Duration::from_millis(2000),
        response_timeout: Duration::from_millis(2000),
        tls_ca_pem: None,
    };
    let a = RedisStore::connect(settings()).unwrap();
    let b = RedisStore::connect(settings()).unwrap();
    Subject {
        a,
        b,
        _redis: None,
        _cluster: Some(cluster),
    }
}

fn record(fp: &str, deadline_in: Duration) -> ApprovalRecord {
    let now = now_ms();
    ApprovalRecord {
        fingerprint: fp.to_string(),
        status: Status::Pending,
        auth_req_id: None,
        notification_token_hash: Some(format!("nt-{fp}")),
        binding_message: "Deploy payments v1.2 to prod".into(),
        action: "deploy".into(),
        user_key: "user-key-1".into(),
        created_at_ms: now,
        deadline_ms: now + deadline_in.as_millis() as u64,
        expires_in: None,
        interval: None,
        approver: None,
        failure: None,
        trace_parent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        delivered_via: None,
    }
}

fn approver() -> Approver {
    Approver {
        subject_hash: "sub-hash".into(),
        acr: Some("urn:acr:mfa".into()),
        amr: vec![],
        auth_time: Some(1_700_000_000),
        sealed_access_token: Some("c2VhbGVk".into()),
    }
}

const GRACE: Duration = Duration::from_secs(60);
const MINUTE: Duration = Duration::from_secs(60);

// --- the contract ----------------------------------------------------------------------

async fn create_or_join_race_has_one_creator(s: Subject) {
    let mut tasks = Vec::new();
    for i in 0..64 {
        let st = if i % 2 == 0 { s.a.clone() } else { s.b.clone() };
        tasks.push(tokio::spawn(async move {
            st.create_or_join(record("fp-race", MINUTE), GRACE).await
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Joined::Created => created += 1,
            Joined::Existing(r) => assert_eq!(r.status, Status::Pending),
        }
    }
    assert_eq!(created, 1, "exactly one Created");
    let got = s.b.get("fp-race").await.unwrap().unwrap();
    assert_eq!(got, record_like(&got));
}

/// The stored record round-trips every field.
fn record_like(r: &ApprovalRecord) -> ApprovalRecord {
    let mut expect = record("fp-race", MINUTE);
    expect.created_at_ms = r.created_at_ms;
    expect.deadline_ms = r.deadline_ms;
    expect
}

async fn resolve_once_first_answer_wins(s: Subject) {
    s.a.create_or_join(record("fp-res", MINUTE), GRACE)
        .await
        .unwrap();
    s.a.set_acknowledged("fp-res", "req-1", 120, Some(5), now_ms() + 60_000)
        .await
        .unwrap();
    let r = s.b.get("fp-res").await.unwrap().unwrap();
    assert_eq!(r.auth_req_id.as_deref(), Some("req-1"));
    assert_eq!((r.expires_in, r.interval), (Some(120), Some(5)));
    let (x, y) = tokio::join!(
        s.a.resolve_via("fp-res", Resolution::Granted(approver()), Some("ping")),
        s.b.resolve_via(
            "fp-res",
            Resolution::Denied("access_denied".into()),
            Some("poll")
        )
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(x ^ y, "exactly one resolve wins ({x}, {y})");
    let r = s.a.get("fp-res").await.unwrap().unwrap();
    if x {
        assert_eq!(r.status, Status::Granted);
        assert_eq!(r.approver, Some(approver()));
        assert_eq!(
            r.delivered_via.as_deref(),
            Some("ping"),
            "the winner's party"
        );
    } else {
        assert_eq!(r.status, Status::Denied);
        assert_eq!(r.failure.as_deref(), Some("access_denied"));
        assert_eq!(
            r.delivered_via.as_deref(),
            Some("poll"),
            "the winner's party"
        );
    }
    assert!(!s.a.resolve("fp-res", Resolution::Expired).await.unwrap());
    // An acknowledgement never reopens a finished record.
    s.a.set_acknowledged("fp-res", "req-2", 1, None, now_ms())
        .await
        .unwrap();
    assert_eq!(
        s.a.get("fp-res")
            .await
            .unwrap()
            .unwrap()
            .auth_req_id
            .as_deref(),
        Some("req-1")
    );
}

async fn consume_exactly_once_under_concurrency(s: Subject) {
    s.a.create_or_join(record("fp-use", MINUTE), GRACE)
        .await
        .unwrap();
    s.a.set_acknowledged("fp-use", "req-use", 60, None, now_ms() + 60_000)
        .await
        .unwrap();
    assert!(
        s.a.consume("fp-use").await.unwrap().is_none(),
        "pending is not consumable"
    );
    assert!(
        s.a.resolve("fp-use", Resolution::Granted(approver()))
            .await
            .unwrap()
    );
    let mut tasks = Vec::new();
    for i in 0..32 {
        let st = if i % 2 == 0 { s.a.clone() } else { s.b.clone() };
        tasks.push(tokio::spawn(async move { st.consume("fp-use").await }));
    }
    let mut taken = Vec::new();
    for t in tasks {
        if let Some(r) = t.await.unwrap().unwrap() {
            taken.push(r);
        }
    }
    assert_eq!(taken.len(), 1, "exactly one consumer");
    assert_eq!(taken[0].status, Status::Consumed);
    assert_eq!(taken[0].approver, Some(approver()));
    assert!(
        s.b.get("fp-use").await.unwrap().is_none(),
        "consumed records are forgotten"
    );
    assert!(s.b.recently_consumed("fp-use").await.unwrap());
    assert!(s.b.find_by_auth_req_id("req-use").await.unwrap().is_none());
    assert!(
        s.b.find_by_notification_hash("nt-fp-use")
            .await
            .unwrap()
            .is_none()
    );
    // A later identical call needs (and gets) a new approval.
    assert_eq!(
        s.b.create_or_join(record("fp-use", MINUTE), GRACE)
            .await
            .unwrap(),
        Joined::Created
    );
}

async fn records_expire_at_deadline_plus_grace(s: Subject) {
    s.a.create_or_join(
        record("fp-exp", Duration::from_millis(300)),
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        s.b.get("fp-exp").await.unwrap().is_some(),
        "kept through the grace period"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        s.b.get("fp-exp").await.unwrap().is_none(),
        "gone after deadline + grace"
    );
    assert_eq!(
        s.b.create_or_join(record("fp-exp", MINUTE), GRACE)
            .await
            .unwrap(),
        Joined::Created
    );
    // A final "no" is kept only for the grace period.
    s.a.create_or_join(record("fp-no", MINUTE), Duration::from_millis(300))
        .await
        .unwrap();
    assert!(
        s.a.resolve("fp-no", Resolution::Denied("access_denied".into()))
            .await
            .unwrap()
    );
    assert_eq!(
        s.b.get("fp-no").await.unwrap().unwrap().status,
        Status::Denied
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.b.get("fp-no").await.unwrap().is_none());
    // A grant lives until deadline + grace (not just the grace).
    s.a.create_or_join(record("fp-yes", MINUTE), Duration::from_millis(300))
        .await
        .unwrap();
    assert!(
        s.a.resolve("fp-yes", Resolution::Granted(approver()))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.b.get("fp-yes").await.unwrap().unwrap().status,
        Status::Granted
    );
}

async fn indexes_find_the_record(s: Subject) {
    s.a.create_or_join(record("fp-idx", MINUTE), GRACE)
        .await
        .unwrap();
    assert_eq!(
        s.b.find_by_notification_hash("nt-fp-idx")
            .await
            .unwrap()
            .as_deref(),
        Some("fp-idx"),
        "indexed before the request is sent"
    );
    assert!(s.b.find_by_auth_req_id("req-idx").await.unwrap().is_none());
    s.a.set_acknowledged("fp-idx", "req-idx", 60, Some(2), now_ms() + 60_000)
        .await
        .unwrap();
    assert_eq!(
        s.b.find_by_auth_req_id("req-idx").await.unwrap().as_deref(),
        Some("fp-idx")
    );
    assert!(
        s.b.find_by_notification_hash("nope")
            .await
            .unwrap()
            .is_none()
    );
    s.b.remove("fp-idx").await.unwrap();
    assert!(s.a.get("fp-idx").await.unwrap().is_none());
    assert!(s.a.find_by_auth_req_id("req-idx").await.unwrap().is_none());
    assert!(
        s.a.find_by_notification_hash("nt-fp-idx")
            .await
            .unwrap()
            .is_none()
    );
}

async fn rate_limits_and_denials_expire(s: Subject) {
    let w = Duration::from_millis(400);
    assert!(s.a.rate_limit("agent:x", 2, w).await.unwrap());
    assert!(s.b.rate_limit("agent:x", 2, w).await.unwrap());
    assert!(
        !s.a.rate_limit("agent:x", 2, w).await.unwrap(),
        "third in the window"
    );
    assert!(
        s.a.rate_limit("agent:y", 2, w).await.unwrap(),
        "keys are separate"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        s.b.rate_limit("agent:x", 2, w).await.unwrap(),
        "a new window"
    );

    assert!(!s.a.recently_denied("u1").await.unwrap());
    s.a.note_denial("u1", Duration::from_millis(300))
        .await
        .unwrap();
    assert!(s.b.recently_denied("u1").await.unwrap());
    assert!(!s.b.recently_denied("u2").await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !s.b.recently_denied("u1").await.unwrap(),
        "the cool-down passes"
    );
}

async fn wait_change_wakes_on_another_connections_change(s: Subject) {
    s.a.create_or_join(record("fp-wait", MINUTE), GRACE)
        .await
        .unwrap();
    // Give a fresh subscription a moment (a missed notice would only cost the timeout).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = s.a.clone();
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        a.wait_change("fp-wait", Duration::from_secs(5)).await;
        t.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        s.b.resolve("fp-wait", Resolution::Granted(approver()))
            .await
            .unwrap()
    );
    let waited = waiter.await.unwrap();
    assert!(
        waited < Duration::from_secs(1),
        "woken by the change, not the timeout: {waited:?}"
    );
    // And without a change, the timeout ends the wait.
    let t = Instant::now();
    s.a.wait_change("fp-other", Duration::from_millis(200))
        .await;
    assert!(t.elapsed() >= Duration::from_millis(190));
}

async fn poll_lease_has_one_holder(s: Subject) {
    let ttl = Duration::from_millis(300);
    assert!(s.a.acquire_lease("fp-l", "replica-a", ttl).await.unwrap());
    assert!(!s.b.acquire_lease("fp-l", "replica-b", ttl).await.unwrap());
    assert!(
        s.a.acquire_lease("fp-l", "replica-a", ttl).await.unwrap(),
        "renewal"
    );
    // The holder dies: its lease runs out and another replica takes over.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(s.b.acquire_lease("fp-l", "replica-b", ttl).await.unwrap());
    assert!(!s.a.acquire_lease("fp-l", "replica-a", ttl).await.unwrap());
    s.a.release_lease("fp-l", "replica-a").await.unwrap(); // not a's: no effect
    assert!(!s.a.acquire_lease("fp-l", "replica-a", ttl).await.unwrap());
    s.b.release_lease("fp-l", "replica-b").await.unwrap();
    assert!(s.a.acquire_lease("fp-l", "replica-a", ttl).await.unwrap());
    // Concurrent takers: one wins.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let st = if i % 2 == 0 { s.a.clone() } else { s.b.clone() };
        tasks.push(tokio::spawn(async move {
            st.acquire_lease("fp-l2", &format!("r{i}"), MINUTE)
                .await
                .unwrap()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += t.await.unwrap() as u32;
    }
    assert_eq!(winners, 1);
}

/// One token request at a time per approval, none once a result is recorded, and a late
/// failure never overwrites a grant.
async fn redemption_claim_has_one_holder_and_ends_with_the_result(s: Subject) {
    let ttl = MINUTE;
    assert_eq!(
        s.a.claim_redemption("fp-red", "ping-1", ttl).await.unwrap(),
        Claim::Finished,
        "no record: nothing to redeem"
    );
    s.a.create_or_join(record("fp-red", MINUTE), GRACE)
        .await
        .unwrap();
    s.a.set_acknowledged("fp-red", "req-red", 60, Some(1), now_ms() + 60_000)
        .await
        .unwrap();
    // Concurrent takers (ping handlers and poll loops on two replicas): one holder.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let st = if i % 2 == 0 { s.a.clone() } else { s.b.clone() };
        tasks.push(tokio::spawn(async move {
            let owner = format!("party-{i}");
            (
                owner.clone(),
                st.claim_redemption("fp-red", &owner, ttl).await.unwrap(),
            )
        }));
    }
    let mut holders = Vec::new();
    for t in tasks {
        let (owner, c) = t.await.unwrap();
        match c {
            Claim::Taken => holders.push(owner),
            other => assert_eq!(other, Claim::Busy),
        }
    }
    assert_eq!(holders.len(), 1, "exactly one holder: {holders:?}");
    let holder = holders.pop().unwrap();
    assert_eq!(
        s.b.claim_redemption("fp-red", &holder, ttl).await.unwrap(),
        Claim::Taken,
        "the holder may renew"
    );
    // Someone else's release changes nothing; the holder's frees it and wakes waiters.
    s.b.release_redemption("fp-red", "someone-else")
        .await
        .unwrap();
    assert_eq!(
        s.b.claim_redemption("fp-red", "poll-1", ttl).await.unwrap(),
        Claim::Busy
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // a fresh subscription
    let b = s.b.clone();
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        b.wait_change("fp-red", Duration::from_secs(5)).await;
        t.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.a.release_redemption("fp-red", &holder).await.unwrap();
    assert!(
        waiter.await.unwrap() < Duration::from_secs(4),
        "a release is announced"
    );
    assert_eq!(
        s.b.claim_redemption("fp-red", "poll-1", ttl).await.unwrap(),
        Claim::Taken
    );
    // The holder's grant is recorded once and ends the claim: nobody redeems again, and
    // a late invalid_grant (from any party) never overwrites the grant.
    assert!(
        s.b.resolve("fp-red", Resolution::Granted(approver()))
            .await
            .unwrap()
    );
    assert_eq!(
        s.a.claim_redemption("fp-red", "ping-2", ttl).await.unwrap(),
        Claim::Finished
    );
    assert!(
        !s.a.resolve("fp-red", Resolution::Failed("invalid_grant".into()))
            .await
            .unwrap()
    );
    let r = s.a.get("fp-red").await.unwrap().unwrap();
    assert_eq!((r.status, r.approver), (Status::Granted, Some(approver())));
    assert!(s.a.consume("fp-red").await.unwrap().is_some());
    assert_eq!(
        s.a.claim_redemption("fp-red", "ping-3", ttl).await.unwrap(),
        Claim::Finished,
        "consumed: nothing to redeem"
    );
    assert!(
        !s.a.resolve("fp-red", Resolution::Failed("invalid_grant".into()))
            .await
            .unwrap()
    );
    // A holder that dies: its claim runs out and another party takes over.
    s.a.create_or_join(record("fp-red2", MINUTE), GRACE)
        .await
        .unwrap();
    let short = Duration::from_millis(300);
    assert_eq!(
        s.a.claim_redemption("fp-red2", "dies", short)
            .await
            .unwrap(),
        Claim::Taken
    );
    assert_eq!(
        s.b.claim_redemption("fp-red2", "next", short)
            .await
            .unwrap(),
        Claim::Busy
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        s.b.claim_redemption("fp-red2", "next", short)
            .await
            .unwrap(),
        Claim::Taken
    );
    // Every other end of a record ends its claim too.
    assert!(
        s.a.resolve("fp-red2", Resolution::Denied("access_denied".into()))
            .await
            .unwrap()
    );
    assert_eq!(
        s.a.claim_redemption("fp-red2", "after", ttl).await.unwrap(),
        Claim::Finished
    );
}

async fn unacknowledged_records_become_request_lost(s: Subject) {
    let mut old = record("fp-lost", MINUTE);
    old.created_at_ms -= 120_000;
    s.a.create_or_join(old, GRACE).await.unwrap();
    // Not older than the cut-off: untouched.
    assert!(
        !s.b.fail_unacknowledged("fp-lost", now_ms() - 200_000)
            .await
            .unwrap()
    );
    let (x, y) = tokio::join!(
        s.a.fail_unacknowledged("fp-lost", now_ms() - 60_000),
        s.b.fail_unacknowledged("fp-lost", now_ms() - 60_000)
    );
    assert!(x.unwrap() ^ y.unwrap(), "failed exactly once");
    let r = s.a.get("fp-lost").await.unwrap().unwrap();
    assert_eq!(
        (r.status, r.failure.as_deref()),
        (Status::Failed, Some("request_lost"))
    );
    assert!(
        !s.a.remove_failed("fp-lost", "op_error").await.unwrap(),
        "other reason"
    );
    assert!(s.a.remove_failed("fp-lost", "request_lost").await.unwrap());
    assert!(
        !s.b.remove_failed("fp-lost", "request_lost").await.unwrap(),
        "only once"
    );
    assert!(s.b.get("fp-lost").await.unwrap().is_none());
    // An acknowledged record is never "lost".
    let mut acked = record("fp-acked", MINUTE);
    acked.created_at_ms -= 120_000;
    s.a.create_or_join(acked, GRACE).await.unwrap();
    s.a.set_acknowledged("fp-acked", "req-a", 60, None, now_ms() + 60_000)
        .await
        .unwrap();
    assert!(!s.a.fail_unacknowledged("fp-acked", now_ms()).await.unwrap());
}

/// Each contract test against each store. `timed` tests wait for leases, expiries and
/// timeouts: against the in-memory store they run on tokio's paused clock (which the
/// store reads through `crate::clock`), so their waits take no real time; Redis keeps
/// time on its server, so against it they wait for real. `raced` tests run on four
/// worker threads against every store, for real parallel contention.
macro_rules! contract {
    (timed: [$($timed:ident),* $(,)?], raced: [$($raced:ident),* $(,)?] $(,)?) => {
        mod memory_store {
            use super::*;
            $(
                #[tokio::test(start_paused = true)]
                async fn $timed() { super::$timed(memory()).await }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $raced() { super::$raced(memory()).await }
            )*
        }
        mod redis_store {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $timed() { super::$timed(redis()).await }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $raced() { super::$raced(redis()).await }
            )*
        }
        mod redis_cluster_store {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $timed() { super::$timed(redis_cluster()).await }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $raced() { super::$raced(redis_cluster()).await }
            )*
        }
    };
}

contract!(
    timed: [
        records_expire_at_deadline_plus_grace,
        rate_limits_and_denials_expire,
        wait_change_wakes_on_another_connections_change,
        poll_lease_has_one_holder,
        redemption_claim_has_one_holder_and_ends_with_the_result,
        unacknowledged_records_become_request_lost,
    ],
    raced: [
        create_or_join_race_has_one_creator,
        resolve_once_first_answer_wins,
        consume_exactly_once_under_concurrency,
        indexes_find_the_record,
    ],
);

// --- Redis only ------------------------------------------------------------------------

#[tokio::test]
async fn redis_corrupt_record_is_an_error_not_a_panic() {
    let server = RedisServer::start();
    let st = RedisStore::connect(redis_settings(&server)).unwrap();
    server.cli(&["HSET", "test:ap:{fp-bad}", "s", "granted", "b", "{not json"]);
    assert!(matches!(
        st.get("fp-bad").await,
        Err(StoreError::Corrupt(_))
    ));
    server.cli(&["HSET", "test:ap:{fp-bad2}", "s", "weird", "b", "{}"]);
    assert!(matches!(
        st.get("fp-bad2").await,
        Err(StoreError::Corrupt(_))
    ));
    // A granted-but-corrupt record is consumed (once) yet reported corrupt: fail closed.
    assert!(st.consume("fp-bad").await.is_err());
}

#[tokio::test]
async fn redis_down_fails_within_the_timeout_and_recovers() {
    let mut server = RedisServer::start();
    let st = RedisStore::connect(redis_settings(&server)).unwrap();
    st.create_or_join(record("fp-down", MINUTE), GRACE)
        .await
        .unwrap();
    server.kill();
    let t = Instant::now();
    let r = st.get("fp-down").await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "bounded: {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    assert!(
        st.create_or_join(record("fp-down2", MINUTE), GRACE)
            .await
            .is_err()
    );
    assert!(t.elapsed() < Duration::from_millis(1500));
    // Back, empty: everything works again by itself, and the lost record is just gone.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match st.get("fp-down").await {
            Ok(v) => {
                assert!(v.is_none(), "Redis restarted empty");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "did not recover: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        st.create_or_join(record("fp-down", MINUTE), GRACE)
            .await
            .unwrap(),
        Joined::Created
    );
}

#[tokio::test]
async fn redis_keys_hold_no_secrets_and_expire() {
    let server = RedisServer::start();
    let st = RedisStore::connect(redis_settings(&server)).unwrap();
    st.create_or_join(record("fp-keys", MINUTE), GRACE)
        .await
        .unwrap();
    st.set_acknowledged(
        "fp-keys",
        "secret-auth-req-id",
        60,
        Some(5),
        now_ms() + 60_000,
    )
    .await
    .unwrap();
    st.acquire_lease("fp-keys", "replica-a", MINUTE)
        .await
        .unwrap();
    assert_eq!(
        st.claim_redemption("fp-keys", "replica-a:1", MINUTE)
            .await
            .unwrap(),
        Claim::Taken
    );
    let keys = server.cli(&["KEYS", "*"]);
    assert!(keys.contains(":redeem"), "{keys}");
    assert!(!keys.contains("secret-auth-req-id"), "{keys}");
    for k in keys.lines().filter(|k| !k.is_empty()) {
        let ttl: i64 = server.cli(&["PTTL", k]).trim().parse().unwrap();
        assert!(ttl > 0, "{k} has no expiry ({ttl})");
    }
}

/// Measurements (run with `--ignored --nocapture`): cross-replica wake-up latency and
/// Redis memory per pending approval.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn measure_redis_wake_latency_and_memory() {
    let server = RedisServer::start();
    let a = RedisStore::connect(redis_settings(&server)).unwrap();
    let b = RedisStore::connect(redis_settings(&server)).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut samples = Vec::new();
    for i in 0..100 {
        let fp = format!("fp-lat-{i}");
        a.create_or_join(record(&fp, MINUTE), GRACE).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let a2 = a.clone();
        let fp2 = fp.clone();
        let waiter = tokio::spawn(async move {
            let _ = tx.send(());
            a2.wait_change(&fp2, Duration::from_secs(5)).await;
            Instant::now()
        });
        rx.await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t0 = Instant::now();
        assert!(
            b.resolve(&fp, Resolution::Granted(approver()))
                .await
                .unwrap()
        );
        let woke = waiter.await.unwrap();
        samples.push(woke.duration_since(t0));
    }
    samples.sort();
    println!(
        "cross-replica wake-up (B resolves -> A's waiter wakes), n=100: p50 {:?} p99 {:?} max {:?}",
        samples[49], samples[98], samples[99]
    );
    // Memory of one pending, acknowledged approval (record + both indexes + lease).
    let fp = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let mut r = record(fp, MINUTE);
    r.notification_token_hash = Some("f".repeat(64)); // a SHA-256 hex, like the real one
    a.create_or_join(r, GRACE).await.unwrap();
    a.set_acknowledged(fp, &"x".repeat(40), 120, Some(5), now_ms() + 60_000)
        .await
        .unwrap();
    a.acquire_lease(fp, &"i".repeat(32), MINUTE).await.unwrap();
    let mut total = 0;
    let keys = [
        format!("test:ap:{{{fp}}}"),
        format!("test:ap:{{{fp}}}:lease"),
        format!("test:nt:{}", "f".repeat(64)),
        format!("test:ar:{}", hex_sha(&"x".repeat(40))),
    ];
    for key in &keys {
        let n: u64 = server
            .cli(&["MEMORY", "USAGE", key])
            .trim()
            .parse()
            .unwrap_or(0);
        let enc = server.cli(&["OBJECT", "ENCODING", key]);
        println!("MEMORY USAGE {key} = {n} ({})", enc.trim());
        total += n;
    }
    println!("bytes per pending approval (record + indexes + lease): {total}");
}

fn hex_sha(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// `rediss://`: the store talks TLS to Redis and verifies the server against the CA it
/// is given (a managed Redis with a private CA); without that CA it refuses.
#[tokio::test]
async fn redis_over_tls_verifies_the_server_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(dir.path().join("c.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("k.pem"), cert.signing_key.serialize_pem()).unwrap();
    let port = support::free_port();
    let mut cmd = std::process::Command::new("redis-server");
    cmd.args([
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ])
    .args([
        "--tls-cert-file",
        &dir.path().join("c.pem").display().to_string(),
    ])
    .args([
        "--tls-key-file",
        &dir.path().join("k.pem").display().to_string(),
    ])
    .args([
        "--tls-ca-cert-file",
        &dir.path().join("c.pem").display().to_string(),
    ])
    .args([
        "--tls-auth-clients",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    let mut guard = support::ChildGuard::spawn("redis-tls", cmd, dir.path(), false);
    support::wait_for_port(port, Duration::from_secs(10), Some(&mut guard));
    let settings = |ca: Option<Vec<u8>>| RedisSettings {
        url: format!("rediss://127.0.0.1:{port}/0"),
        cluster: false,
        key_prefix: "tls:".into(),
        connect_timeout: Duration::from_millis(1500),
        response_timeout: Duration::from_millis(1500),
        tls_ca_pem: ca,
    };
    let store = RedisStore::connect(settings(Some(cert.cert.pem().into_bytes()))).unwrap();
    let created = store
        .create_or_join(record("fp-tls", MINUTE), GRACE)
        .await
        .unwrap();
    assert_eq!(created, Joined::Created);
    assert!(store.get("fp-tls").await.unwrap().is_some());
    // A server the store cannot verify is unavailable: nothing is trusted on a guess.
    let untrusting = RedisStore::connect(settings(None)).unwrap();
    assert!(matches!(
        untrusting.get("fp-tls").await,
        Err(StoreError::Unavailable(_))
    ));
}
