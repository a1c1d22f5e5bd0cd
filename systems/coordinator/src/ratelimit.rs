//! Token buckets on `Env::now` time, one per peer, so one misbehaving agent cannot starve the
//! others of the coordinator's attention.
//!
//! Sans-IO: the caller passes `now`. A bucket holds up to `burst` tokens and gains one every
//! `1 / per_second`; each allowed request takes one. Credit is kept in nanoseconds of refill
//! time (integers only, no float drift). `RateLimits` tracks at most `peers_max` peers: a bucket
//! that has refilled completely carries no state and is dropped first, then the one idle the
//! longest. A flood of new peers cannot grow memory; evicting a depleted bucket forgives its debt,
//! which is why full buckets (which owe nothing) go first.

use std::collections::BTreeMap;

use sim::Instant;

const NANOS_PER_SECOND: u64 = 1_000_000_000;
/// The highest rate a bucket accepts: one token per nanosecond.
pub const PER_SECOND_MAX: u64 = NANOS_PER_SECOND;
/// The most tokens a bucket may hold.
pub const BURST_MAX: u64 = 1 << 20;

/// A bucket's shape: its steady rate and how many requests it lets through at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens gained per second (1 to `PER_SECOND_MAX`).
    pub per_second: u64,
    /// Tokens held at most, and when new (1 to `BURST_MAX`).
    pub burst: u64,
}

impl RateLimit {
    fn interval_nanos(self) -> u64 {
        NANOS_PER_SECOND / self.per_second
    }

    fn capacity_nanos(self) -> u64 {
        self.interval_nanos() * self.burst
    }
}

/// One token bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    limit: RateLimit,
    // Invariant: credit_nanos <= limit.capacity_nanos(); one token costs interval_nanos.
    credit_nanos: u64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(limit: RateLimit, now: Instant) -> TokenBucket {
        assert!((1..=PER_SECOND_MAX).contains(&limit.per_second), "rate out of range");
        assert!((1..=BURST_MAX).contains(&limit.burst), "burst out of range");
        TokenBucket { limit, credit_nanos: limit.capacity_nanos(), last: now }
    }

    fn refill(&mut self, now: Instant) {
        // A clock that seems to step back (it never does with Env::now) simply adds nothing.
        let elapsed =
            u64::try_from(now.saturating_duration_since(self.last).as_nanos()).unwrap_or(u64::MAX);
        self.credit_nanos =
            self.credit_nanos.saturating_add(elapsed).min(self.limit.capacity_nanos());
        self.last = self.last.max(now);
    }

    /// Takes one token if there is one at `now`.
    pub fn allow(&mut self, now: Instant) -> bool {
        self.refill(now);
        let interval = self.limit.interval_nanos();
        let allowed = self.credit_nanos >= interval;
        if allowed {
            self.credit_nanos -= interval;
        }
        assert!(self.credit_nanos <= self.limit.capacity_nanos());
        allowed
    }

    /// Whole tokens available at `now` (without taking any).
    pub fn tokens(&self, now: Instant) -> u64 {
        let mut probe = self.clone();
        probe.refill(now);
        probe.credit_nanos / self.limit.interval_nanos()
    }

    /// Whether it is full at `now`, hence the same as a new bucket.
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed =
            u64::try_from(now.saturating_duration_since(self.last).as_nanos()).unwrap_or(u64::MAX);
        self.credit_nanos.saturating_add(elapsed) >= self.limit.capacity_nanos()
    }

    /// When it was last asked.
    pub fn last_seen(&self) -> Instant {
        self.last
    }
}

/// A bucket per peer key, at most `peers_max` tracked.
#[derive(Clone, Debug)]
pub struct RateLimits<K: Ord + Clone> {
    limit: RateLimit,
    peers_max: usize,
    // Invariant: buckets.len() <= peers_max.
    buckets: BTreeMap<K, TokenBucket>,
}

impl<K: Ord + Clone> RateLimits<K> {
    /// Per-peer buckets of shape `limit`, tracking at most `peers_max` peers (at least 1).
    pub fn new(limit: RateLimit, peers_max: usize) -> RateLimits<K> {
        assert!(peers_max >= 1);
        TokenBucket::new(limit, Instant::ZERO);
        RateLimits { limit, peers_max, buckets: BTreeMap::new() }
    }

    /// Takes one of `peer`'s tokens if it has one at `now`.
    pub fn allow(&mut self, peer: &K, now: Instant) -> bool {
        if !self.buckets.contains_key(peer) && self.buckets.len() >= self.peers_max {
            self.make_room(now);
        }
        let limit = self.limit;
        let bucket =
            self.buckets.entry(peer.clone()).or_insert_with(|| TokenBucket::new(limit, now));
        let allowed = bucket.allow(now);
        assert!(self.buckets.len() <= self.peers_max);
        allowed
    }

    /// Drops every full bucket; if none was full, the one idle the longest.
    fn make_room(&mut self, now: Instant) {
        let before = self.buckets.len();
        self.buckets.retain(|_, bucket| !bucket.is_full(now));
        if self.buckets.len() == before {
            let oldest = self
                .buckets
                .iter()
                .min_by_key(|(_, bucket)| bucket.last_seen())
                .map(|(peer, _)| peer.clone());
            if let Some(peer) = oldest {
                self.buckets.remove(&peer);
            }
        }
        assert!(self.buckets.len() < self.peers_max);
    }

    /// Forgets `peer` (it disconnected).
    pub fn remove(&mut self, peer: &K) {
        self.buckets.remove(peer);
    }

    /// Peers tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no peer is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit { per_second: 10, burst: 3 };

    fn at(millis: u64) -> Instant {
        Instant::from_nanos(millis * 1_000_000)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut bucket = TokenBucket::new(LIMIT, at(0));
        assert_eq!(bucket.tokens(at(0)), 3);
        assert!((0..3).all(|_| bucket.allow(at(0))));
        assert!(!bucket.allow(at(0)));
        assert!(!bucket.allow(at(99)));
        assert!(bucket.allow(at(100)));
        assert!(!bucket.allow(at(100)));
        // Ten seconds idle refill only the burst, not a hundred tokens.
        assert_eq!(bucket.tokens(at(10_100)), 3);
        assert!(bucket.is_full(at(10_100)));
        // A time before `last` adds nothing and takes nothing back.
        let mut early = TokenBucket::new(LIMIT, at(500));
        assert!((0..3).all(|_| early.allow(at(100))));
        assert!(!early.allow(at(200)));
        assert_eq!(early.last_seen(), at(500));
    }

    #[test]
    fn a_steady_stream_gets_exactly_the_rate() {
        let mut bucket = TokenBucket::new(LIMIT, at(0));
        let allowed = (0..10_000u64).filter(|&ms| bucket.allow(at(ms))).count();
        // Burst of 3 plus 10 per second for 10 s (the last refill lands at 9,999 ms: 99 more).
        assert_eq!(allowed, 3 + 99);
    }

    #[test]
    fn one_flooding_peer_does_not_starve_another() {
        let mut limits = RateLimits::new(LIMIT, 16);
        let mut flood_allowed = 0;
        for ms in 0..1_000 {
            flood_allowed += usize::from(limits.allow(&"flood", at(ms)));
        }
        assert_eq!(flood_allowed, 3 + 9);
        assert!((0..3).all(|_| limits.allow(&"quiet", at(999))));
        assert_eq!(limits.len(), 2);
        limits.remove(&"flood");
        assert_eq!(limits.len(), 1);
        assert!(!limits.is_empty());
    }

    #[test]
    fn the_peer_table_is_bounded_and_evicts_full_buckets_first() {
        let mut limits = RateLimits::new(LIMIT, 4);
        // Peer 0 is depleted and stays so; peers 1 to 3 use one token each.
        for _ in 0..3 {
            assert!(limits.allow(&0, at(0)));
        }
        for peer in 1..4 {
            assert!(limits.allow(&peer, at(0)));
        }
        // At 150 ms peers 1 to 3 are full again, peer 0 is not: they go, it stays.
        assert!(limits.allow(&4, at(150)));
        assert_eq!(limits.len(), 2);
        assert!(limits.allow(&0, at(150)), "peer 0 earned one token in 150 ms");
        assert!(!limits.allow(&0, at(150)), "and kept its debt: no fresh burst");
        // With no full bucket, the one idle longest goes.
        let mut tight = RateLimits::new(RateLimit { per_second: 1, burst: 1 }, 2);
        assert!(tight.allow(&"a", at(0)));
        assert!(tight.allow(&"b", at(10)));
        assert!(tight.allow(&"c", at(20)));
        assert_eq!(tight.len(), 2);
        assert!(!tight.allow(&"b", at(30)), "b kept its debt");
        assert!(tight.allow(&"a", at(40)), "a was evicted and comes back full");
    }
}
