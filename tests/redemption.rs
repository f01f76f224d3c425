//! One redemption per grant. The OP's ping and the gateway's fallback poll (in this
//! process or on another replica) may both want to fetch the tokens of the same granted
//! `auth_req_id`; the token endpoint answers the second one `invalid_grant`. A
//! store-level redemption claim makes sure it is asked at most once per grant, and that
//! the approval a person gave is never recorded as failed because of the race.
//!
//! Each test runs 1,000 approvals timed to land at the fallback-poll boundary (see
//! tests/support/ping_race.rs) and requires: 0 lost, 0 double redemptions counted at
//! the OP, every approved call forwarded exactly once.
#![allow(clippy::disallowed_methods)] // waits on real processes and sockets in real time

mod support;

use support::ping_race::{Race, Topology, assert_one_redemption_per_grant};

const APPROVALS: usize = 1000;
const BATCH: usize = 125;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ping_and_fallback_poll_never_redeem_a_grant_twice_memory_store() {
    let race = Race::start(Topology::Memory).await;
    let o = race.run(APPROVALS, BATCH).await;
    assert_one_redemption_per_grant("memory store", &o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ping_and_fallback_poll_never_redeem_a_grant_twice_redis_store() {
    let race = Race::start(Topology::Redis).await;
    let o = race.run(APPROVALS, BATCH).await;
    assert_one_redemption_per_grant("redis store", &o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ping_on_one_replica_and_poll_on_another_never_redeem_a_grant_twice() {
    let race = Race::start(Topology::TwoReplicasRedis).await;
    let o = race.run(APPROVALS, BATCH).await;
    assert_one_redemption_per_grant("two replicas, shared redis", &o);
}
