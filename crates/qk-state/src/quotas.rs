//! Each principal's share of the request memory. Every command the state
//! remembers for deduplication stays until no proof of it can be fresh, and
//! past [`crate::MAX_FRESH_REQUESTS`] every new command is refused; without
//! a share per principal, one principal (a compromised node with its own
//! audit batches, or a user flooding refused break-glass requests) could
//! fill it and stop every other principal's writes and the audit of every
//! partial. Counted per window of the time the nodes vouch for, so every
//! replica counts alike.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::limits::{bounded, MAX_NAME_LEN};
use crate::proof::INTENT_MAX_AGE_MS;

/// Most commands one principal may have remembered in one window of
/// [`INTENT_MAX_AGE_MS`] of vouched time. An honest node sends at most 200
/// audit batches a second (60,000 a window) and little else; a principal's
/// fresh commands are at most two windows' worth, so one principal holds at
/// most 160,000 of the 400,000 the state may remember.
pub const MAX_REQUESTS_PER_PRINCIPAL: u64 = 80_000;

/// Commands remembered per principal in the current window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestQuotas {
    /// The window counted: vouched time ÷ [`INTENT_MAX_AGE_MS`].
    window: u64,
    counts: BTreeMap<String, u64>,
}

impl RequestQuotas {
    fn window_of(vouched_ms: u64) -> u64 {
        vouched_ms / INTENT_MAX_AGE_MS
    }

    /// Commands of `principal` remembered in the window of `vouched_ms`.
    pub fn used(&self, principal: &str, vouched_ms: u64) -> u64 {
        if Self::window_of(vouched_ms) != self.window {
            return 0;
        }
        self.counts
            .get(bounded(principal, MAX_NAME_LEN).as_str())
            .copied()
            .unwrap_or(0)
    }

    /// Whether `principal` has used its share of the window of `vouched_ms`.
    pub fn exhausted(&self, principal: &str, vouched_ms: u64) -> bool {
        self.used(principal, vouched_ms) >= MAX_REQUESTS_PER_PRINCIPAL
    }

    /// Counts one remembered command of `principal`; a new window starts
    /// every count at zero (the vouched time never moves back).
    pub(crate) fn count(&mut self, principal: &str, vouched_ms: u64) {
        let window = Self::window_of(vouched_ms);
        if window != self.window {
            self.window = window;
            self.counts.clear();
        }
        *self
            .counts
            .entry(bounded(principal, MAX_NAME_LEN))
            .or_default() += 1;
    }

    /// Principals counted in the current window (at most every principal
    /// and node that had a command remembered in it).
    pub fn principals_counted(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_counted_per_principal_and_starts_again_each_window() {
        let mut q = RequestQuotas::default();
        let window = INTENT_MAX_AGE_MS;
        for _ in 0..MAX_REQUESTS_PER_PRINCIPAL {
            q.count("mallory", window + 1);
        }
        q.count("alice", window + 2);
        assert!(q.exhausted("mallory", window + 3));
        assert!(!q.exhausted("alice", window + 3));
        assert_eq!(q.used("alice", window + 3), 1);
        assert!(!q.exhausted("mallory", 2 * window), "the next window");
        q.count("alice", 2 * window);
        assert_eq!(q.used("mallory", 2 * window), 0);
        assert_eq!(q.used("alice", 2 * window), 1);
        assert_eq!(q.principals_counted(), 1);
    }
}
