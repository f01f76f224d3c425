//! The ping race, short: approvals timed to land at the fallback-poll boundary must
//! never be redeemed twice at the OP nor lost (the full 1,000-approval runs, memory,
//! Redis and two replicas, are in tests/redemption.rs).

use crate::support::ping_race::{Race, Topology, assert_one_redemption_per_grant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grant_is_never_redeemed_twice_nor_lost_when_ping_meets_the_fallback_poll() {
    let race = Race::start(Topology::TwoReplicasRedis).await;
    let o = race.run(200, 100).await;
    assert_one_redemption_per_grant("attack: ping race, two replicas", &o);
}
