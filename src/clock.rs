//! Time, in one place. Everything the gateway times (deadlines, leases, throttles,
//! latencies) reads this clock, which follows tokio's: tests pause it and advance it
//! instead of sleeping (`tokio::time::pause`). Wall-clock milliseconds (stored in
//! approval records shared by replicas) are the system time at start plus the time
//! this clock has run since.
#![allow(clippy::disallowed_methods)] // the one module that may read the system clocks

use std::sync::LazyLock;

pub use tokio::time::Instant;

/// System time (ms since the Unix epoch) and this clock's instant, read together once.
static ORIGIN: LazyLock<(u64, std::time::Instant)> = LazyLock::new(|| {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    (wall, std::time::Instant::now())
});

/// Now, on the clock tests control.
pub fn now() -> Instant {
    Instant::now()
}

/// Milliseconds since the Unix epoch, advancing with `now()`.
pub fn now_ms() -> u64 {
    let (wall, origin) = *ORIGIN;
    let now = now().into_std();
    // A paused test clock may start before the origin was taken: count back from it
    // (in nanoseconds, so rounding does not depend on which side of the origin we are).
    let offset_ns = match now.checked_duration_since(origin) {
        Some(ahead) => ahead.as_nanos() as i128,
        None => -(origin.duration_since(now).as_nanos() as i128),
    };
    ((wall as i128 * 1_000_000 + offset_ns).max(0) / 1_000_000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wall_time_follows_the_paused_clock() {
        let a = now_ms();
        tokio::time::advance(std::time::Duration::from_secs(90)).await;
        let b = now_ms();
        assert!((90_000u64..91_000).contains(&(b - a)), "{}", b - a);
    }
}
