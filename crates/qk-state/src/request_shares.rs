//! Each principal's share of the request memory. Every command the state
//! remembers for deduplication stays until no proof of it can be fresh, and
//! past [`MAX_FRESH_REQUESTS`] every new command is refused; without a share
//! per principal, one principal (a compromised node with its own audit
//! batches, or a user sending refused break-glass requests) could fill it
//! and stop every other principal's writes and the audit of every partial.
//!
//! A share counts the commands of a principal that are remembered now: one
//! more when its command is remembered, one less when that command is
//! forgotten. It is enforced only while the memory is under pressure (more
//! than [`MAX_REMEMBERED_REQUESTS`] remembered), so a busy honest writer is
//! never refused while there is room, and only once the cluster enabled it
//! ([`crate::Operation::EnableRequestShares`], or its bootstrap), so that
//! every replica counts the same commands.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::RequestId;
use crate::limits::{bounded, MAX_FRESH_REQUESTS, MAX_NAME_LEN, MAX_REMEMBERED_REQUESTS};

/// Most commands one principal may have remembered while the memory is under
/// pressure. An honest node sends at most 200 audit batches a second (60,000
/// in the five minutes a command stays fresh) and little else. One
/// principal holds at most [`MAX_REMEMBERED_REQUESTS`] (if it took them all
/// before the pressure began) of the [`MAX_FRESH_REQUESTS`], and any `k`
/// principals at most `k` × this beyond that.
pub const MAX_REQUESTS_PER_PRINCIPAL: usize = MAX_FRESH_REQUESTS / 5;

/// Who sent each remembered command, counted per principal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "EncodedShares")]
pub struct RequestShares {
    /// Shares are counted and enforced (from the log entry that enabled them
    /// on, so every replica counts the same commands).
    active: bool,
    /// The author of each remembered command counted since then.
    authors: BTreeMap<RequestId, String>,
    /// Remembered commands per author: rebuilt from `authors` when decoded.
    #[serde(skip)]
    counts: BTreeMap<String, usize>,
}

/// The encoded form: the counts are derived, never trusted from the bytes.
#[derive(Deserialize)]
struct EncodedShares {
    active: bool,
    authors: BTreeMap<RequestId, String>,
}

impl From<EncodedShares> for RequestShares {
    fn from(e: EncodedShares) -> Self {
        let mut counts = BTreeMap::<String, usize>::new();
        for author in e.authors.values() {
            *counts.entry(author.clone()).or_default() += 1;
        }
        Self {
            active: e.active,
            authors: e.authors,
            counts,
        }
    }
}

impl RequestShares {
    /// Whether shares are counted and enforced.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Counts and enforces shares from now on; commands remembered before
    /// count towards the memory but towards no principal's share.
    pub(crate) fn activate(&mut self) {
        self.active = true;
    }

    /// Commands of `principal` remembered now (counted since activation).
    pub fn remembered_by(&self, principal: &str) -> usize {
        self.counts
            .get(bounded(principal, MAX_NAME_LEN).as_str())
            .copied()
            .unwrap_or(0)
    }

    /// Whether a new command of `principal` is refused while `remembered`
    /// commands are remembered in all (more than are kept in the long run,
    /// so the stale ones were forgotten first).
    pub fn refuses(&self, principal: &str, remembered: usize) -> bool {
        self.active
            && remembered > MAX_REMEMBERED_REQUESTS
            && self.remembered_by(principal) >= MAX_REQUESTS_PER_PRINCIPAL
    }

    /// `key`, a command of `principal`, is now remembered.
    pub(crate) fn remembered(&mut self, key: RequestId, principal: &str) {
        if !self.active || self.authors.contains_key(&key) {
            return;
        }
        let author = bounded(principal, MAX_NAME_LEN);
        *self.counts.entry(author.clone()).or_default() += 1;
        self.authors.insert(key, author);
    }

    /// `key` is forgotten.
    pub(crate) fn forgot(&mut self, key: &RequestId) {
        let Some(author) = self.authors.remove(key) else {
            return;
        };
        if let Some(count) = self.counts.get_mut(&author) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&author);
            }
        }
    }

    /// Keeps only the authors of commands still remembered (`is_remembered`):
    /// a decoded snapshot cannot charge a principal for commands it lacks.
    pub(crate) fn retain(&mut self, is_remembered: impl Fn(&RequestId) -> bool) {
        let forgotten: Vec<RequestId> = self
            .authors
            .keys()
            .filter(|k| !is_remembered(k))
            .copied()
            .collect();
        for key in &forgotten {
            self.forgot(key);
        }
    }

    /// Principals with a command remembered (at most every principal and
    /// node that sent one in the last few minutes).
    pub fn principals_counted(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> RequestId {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        RequestId(bytes)
    }

    #[test]
    fn nothing_is_counted_before_activation() {
        let mut shares = RequestShares::default();
        shares.remembered(id(1), "mallory");
        assert_eq!(shares.remembered_by("mallory"), 0);
        shares.activate();
        shares.remembered(id(2), "mallory");
        assert_eq!(shares.remembered_by("mallory"), 1);
        shares.forgot(&id(1));
        assert_eq!(shares.remembered_by("mallory"), 1, "id 1 was never counted");
    }

    #[test]
    fn a_share_counts_what_is_remembered_now() {
        let mut shares = RequestShares::default();
        shares.activate();
        for n in 0..3 {
            shares.remembered(id(n), "mallory");
        }
        shares.remembered(id(2), "mallory");
        shares.remembered(id(9), "alice");
        assert_eq!(shares.remembered_by("mallory"), 3, "a key counts once");
        shares.forgot(&id(0));
        shares.forgot(&id(0));
        assert_eq!(shares.remembered_by("mallory"), 2);
        shares.forgot(&id(9));
        assert_eq!(shares.remembered_by("alice"), 0);
        assert_eq!(shares.principals_counted(), 1);
    }

    #[test]
    fn a_full_share_is_refused_only_under_pressure() {
        let mut shares = RequestShares::default();
        shares.activate();
        for n in 0..MAX_REQUESTS_PER_PRINCIPAL as u32 {
            shares.remembered(id(n), "mallory");
        }
        assert!(!shares.refuses("mallory", MAX_REMEMBERED_REQUESTS));
        assert!(shares.refuses("mallory", MAX_REMEMBERED_REQUESTS + 1));
        assert!(!shares.refuses("alice", MAX_FRESH_REQUESTS - 1));
        shares.forgot(&id(0));
        assert!(!shares.refuses("mallory", MAX_REMEMBERED_REQUESTS + 1));
    }

    #[test]
    fn decoding_rebuilds_the_counts_and_drops_unknown_commands() {
        let mut shares = RequestShares::default();
        shares.activate();
        shares.remembered(id(1), "mallory");
        shares.remembered(id(2), "mallory");
        let bytes = postcard::to_allocvec(&shares).expect("encodes");
        let mut back: RequestShares = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, shares);
        back.retain(|k| *k == id(2));
        assert_eq!(back.remembered_by("mallory"), 1);
    }
}
