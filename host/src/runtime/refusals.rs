//! Components refused recently, by hash: the same bytes uploaded again are refused with the same
//! error without being read or compiled again.
//!
//! Bounded in both directions an uploader controls: at most `capacity` entries (the oldest is
//! forgotten first), each for at most `ttl`; every message is already truncated by the runtime,
//! so the memory is a few MiB at worst.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::RuntimeError;
use crate::types::ComponentHash;

pub(crate) struct Refusals {
    capacity: usize,
    ttl: Duration,
    by_hash: HashMap<ComponentHash, (Instant, RuntimeError)>,
    /// Insertion order, oldest first, for eviction and expiry.
    order: VecDeque<(Instant, ComponentHash)>,
}

impl Refusals {
    /// `capacity` 0 remembers nothing.
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            capacity,
            ttl,
            by_hash: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The remembered refusal of `hash`, unless it has expired by `now`.
    pub(crate) fn get(&mut self, hash: &ComponentHash, now: Instant) -> Option<RuntimeError> {
        self.expire(now);
        self.by_hash.get(hash).and_then(|(_, e)| e.rejection_copy())
    }

    /// Remember that `hash` was refused with `error` at `now`.
    pub(crate) fn insert(&mut self, hash: ComponentHash, error: RuntimeError, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        self.expire(now);
        if self.by_hash.insert(hash, (now, error)).is_some() {
            // Two loads of the same bytes were refused at the same time: keep one position per
            // hash in `order`.
            self.order.retain(|(_, h)| *h != hash);
        }
        self.order.push_back((now, hash));
        while self.by_hash.len() > self.capacity {
            match self.order.pop_front() {
                Some((_, old)) => {
                    self.by_hash.remove(&old);
                }
                None => break,
            }
        }
    }

    /// How many refusals are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_hash.len()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, hash)) = self.order.front().copied() {
            if now.saturating_duration_since(at) < self.ttl {
                break;
            }
            self.order.pop_front();
            self.by_hash.remove(&hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(n: u8) -> (ComponentHash, RuntimeError) {
        let hash = ComponentHash::of(&[n]);
        (
            hash,
            RuntimeError::ForbiddenImport {
                hash,
                import: format!("evil:net/exfil-{n}"),
                reason: "not linked".into(),
            },
        )
    }

    #[test]
    fn remembers_the_same_error_for_the_same_hash() {
        let mut r = Refusals::new(4, Duration::from_secs(60));
        let now = Instant::now();
        let (h, e) = refusal(1);
        r.insert(h, e, now);
        match r.get(&h, now) {
            Some(RuntimeError::ForbiddenImport { import, .. }) => {
                assert_eq!(import, "evil:net/exfil-1")
            }
            other => panic!("{other:?}"),
        }
        assert!(r.get(&refusal(2).0, now).is_none());
    }

    #[test]
    fn bounded_in_count_oldest_forgotten_first() {
        let mut r = Refusals::new(3, Duration::from_secs(60));
        let now = Instant::now();
        for n in 0..100 {
            let (h, e) = refusal(n);
            r.insert(h, e, now);
            assert!(r.len() <= 3);
        }
        assert_eq!(r.order.len(), 3);
        assert!(r.get(&refusal(96).0, now).is_none());
        assert!(r.get(&refusal(97).0, now).is_some());
        assert!(r.get(&refusal(99).0, now).is_some());
    }

    #[test]
    fn bounded_in_time() {
        let ttl = Duration::from_secs(60);
        let mut r = Refusals::new(10, ttl);
        let t0 = Instant::now();
        let (h, e) = refusal(1);
        r.insert(h, e, t0);
        assert!(r.get(&h, t0 + ttl - Duration::from_millis(1)).is_some());
        assert!(r.get(&h, t0 + ttl).is_none());
        assert_eq!((r.len(), r.order.len()), (0, 0));
    }

    #[test]
    fn the_same_hash_twice_keeps_one_entry() {
        let mut r = Refusals::new(2, Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..5 {
            let (h, e) = refusal(7);
            r.insert(h, e, now);
        }
        assert_eq!((r.len(), r.order.len()), (1, 1));
    }

    #[test]
    fn capacity_zero_remembers_nothing() {
        let mut r = Refusals::new(0, Duration::from_secs(60));
        let now = Instant::now();
        let (h, e) = refusal(1);
        r.insert(h, e, now);
        assert!(r.get(&h, now).is_none());
    }
}
