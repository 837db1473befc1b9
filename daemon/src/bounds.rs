//! Counts held per key (a source address, a node id), for bounds that
//! one source must not exhaust for everyone; and warnings a peer can
//! trigger at will, logged at a bounded rate.
//!
//! Invariant: a key's count is the number of live [`KeyedSlot`]s for it,
//! and a key whose count falls to zero is forgotten, so the map holds no
//! more keys than there are slots alive. A [`RareLog`] says to log at
//! most once per [`RARE_LOG_INTERVAL_MS`].

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Warnings of one kind are logged at most this often: a flood of bad
/// requests or packets must not fill the disk.
pub const RARE_LOG_INTERVAL_MS: u64 = 1_000;

/// When to log a warning that may happen at any rate.
#[derive(Debug, Default)]
pub struct RareLog {
    /// When it was last logged, and how often it happened since.
    last: Mutex<(Option<std::time::Instant>, u64)>,
}

impl RareLog {
    pub const fn new() -> Self {
        Self {
            last: Mutex::new((None, 0)),
        }
    }

    /// `Some(times it happened unlogged since the last line)` when this
    /// occurrence is to be logged, `None` when it is only counted.
    pub fn due(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let interval = std::time::Duration::from_millis(RARE_LOG_INTERVAL_MS);
        if last.0.is_some_and(|at| at.elapsed() < interval) {
            last.1 += 1;
            return None;
        }
        let unlogged = last.1;
        *last = (Some(std::time::Instant::now()), 0);
        Some(unlogged)
    }

    /// Logs `message` as a warning if it is due.
    pub fn warn(&self, message: std::fmt::Arguments<'_>) {
        if let Some(unlogged) = self.due() {
            tracing::warn!(unlogged, "{message}");
        }
    }
}

/// Live slots per key.
#[derive(Debug)]
pub struct KeyedCounts<K: Hash + Eq + Copy> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    max: usize,
}

impl<K: Hash + Eq + Copy> Clone for KeyedCounts<K> {
    fn clone(&self) -> Self {
        Self {
            counts: self.counts.clone(),
            max: self.max,
        }
    }
}

impl<K: Hash + Eq + Copy> KeyedCounts<K> {
    /// At most `max` live slots per key.
    pub fn new(max: usize) -> Self {
        Self {
            counts: Arc::default(),
            max,
        }
    }

    /// A slot for `key`, or `None` when it holds `max` already.
    pub fn take(&self, key: K) -> Option<KeyedSlot<K>> {
        let mut held = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(KeyedSlot {
            counts: self.counts.clone(),
            key,
        })
    }
}

/// One slot counted against its key until dropped.
#[derive(Debug)]
pub struct KeyedSlot<K: Hash + Eq + Copy> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Hash + Eq + Copy> Drop for KeyedSlot<K> {
    fn drop(&mut self) {
        let mut held = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// Whom a connection or stream is counted against: its IPv4 address, or
/// its IPv6 /64 (one host usually holds a whole /64).
pub fn source_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().expect("checked")),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_key_and_forgotten_at_zero() {
        let counts = KeyedCounts::new(2);
        let a1 = counts.take(1u64).unwrap();
        let _a2 = counts.take(1).unwrap();
        assert!(counts.take(1).is_none());
        let b = counts.take(2).unwrap();
        drop(a1);
        assert!(counts.take(1).is_some());
        drop(b);
        assert!(!counts.counts.lock().unwrap().contains_key(&2));
    }

    #[test]
    fn an_ipv6_host_counts_as_its_slash_64() {
        let one: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(source_of(one), source_of(other));
        assert_ne!(
            source_of(one),
            source_of("2001:db8:1:3::5".parse().unwrap())
        );
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(source_of(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_rare_log_logs_the_first_and_counts_the_rest() {
        let log = RareLog::new();
        assert_eq!(log.due(), Some(0));
        for _ in 0..1000 {
            assert_eq!(log.due(), None);
        }
        // Once the interval has passed, the next line carries the count.
        log.last.lock().unwrap().0 = Some(
            std::time::Instant::now() - std::time::Duration::from_millis(RARE_LOG_INTERVAL_MS),
        );
        assert_eq!(log.due(), Some(1000));
        assert_eq!(log.due(), None);
    }
}
