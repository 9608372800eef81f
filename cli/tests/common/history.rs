//! A linearizability check of per-key metadata reads, for the fault suite.
//!
//! Each key's primary version is a register that only a rotation changes,
//! by one version at most (a rotation whose generation fails makes none).
//! The history holds every read (`qk key show`: when it was invoked, when
//! it returned, the version it saw) and every rotation (when invoked; if
//! acknowledged, when it returned and the primary version it then reported,
//! which is itself a read: `qk key rotate` reads the key back before it
//! returns, so an acknowledged rotation also joins the reads).
//! A linearizable history satisfies, per key:
//!
//! 1. no stale read: a read invoked after an acknowledged rotation to `w`
//!    returned sees at least `w`;
//! 2. no read goes back: a read invoked after another read returned `v`
//!    sees at least `v`;
//! 3. no read from the future: a read that sees `v` returned after at
//!    least `v - initial` rotations of the key had been invoked.
//!
//! For this register (a counter only incremented, every read timed by its
//! caller) these conditions are also sufficient: order the writes by
//! version and place each read after the write of the version it saw.

use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct Read {
    pub key: String,
    pub invoked_ms: u64,
    pub returned_ms: u64,
    pub version: u64,
    /// Where it was read, for the report.
    pub node: u16,
}

#[derive(Clone, Debug)]
pub struct Rotation {
    pub key: String,
    pub invoked_ms: u64,
    /// `(returned_ms, version)` when acknowledged; a failed or timed-out
    /// rotation may or may not have happened.
    pub acknowledged: Option<(u64, u64)>,
}

/// Every violation of the three conditions, one line each.
pub fn violations(
    initial: &BTreeMap<String, u64>,
    reads: &[Read],
    rotations: &[Rotation],
) -> Vec<String> {
    let read_backs: Vec<Read> = rotations
        .iter()
        .filter_map(|w| {
            let (returned_ms, version) = w.acknowledged?;
            Some(Read {
                key: w.key.clone(),
                invoked_ms: w.invoked_ms,
                returned_ms,
                version,
                node: 0,
            })
        })
        .collect();
    let reads: Vec<&Read> = reads.iter().chain(&read_backs).collect();
    let mut found = Vec::new();
    for r in reads.iter().copied() {
        let of_key = || rotations.iter().filter(|w| w.key == r.key);
        if let Some(w) = of_key()
            .filter_map(|w| w.acknowledged)
            .filter(|(returned_ms, _)| *returned_ms < r.invoked_ms)
            .map(|(_, version)| version)
            .max()
            .filter(|w| r.version < *w)
        {
            found.push(format!(
                "stale read: {} v{} at node {} ({}..{} ms), after rotation to v{w} was acknowledged",
                r.key, r.version, r.node, r.invoked_ms, r.returned_ms
            ));
        }
        if let Some(earlier) = reads
            .iter()
            .copied()
            .filter(|e| e.key == r.key && e.returned_ms < r.invoked_ms && e.version > r.version)
            .max_by_key(|e| e.version)
        {
            found.push(format!(
                "read went back: {} v{} at node {} ({}..{} ms), after v{} was read at node {} ({} ms)",
                r.key,
                r.version,
                r.node,
                r.invoked_ms,
                r.returned_ms,
                earlier.version,
                earlier.node,
                earlier.returned_ms
            ));
        }
        let base = initial.get(&r.key).copied().unwrap_or(1);
        // `<=`: clocks in milliseconds cannot order events within one.
        let invoked_before = of_key().filter(|w| w.invoked_ms <= r.returned_ms).count() as u64;
        if r.version > base + invoked_before {
            found.push(format!(
                "read from the future: {} v{} at node {} ({}..{} ms), with only {invoked_before} \
                 rotations invoked from v{base}",
                r.key, r.version, r.node, r.invoked_ms, r.returned_ms
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(invoked_ms: u64, returned_ms: u64, version: u64) -> Read {
        Read {
            key: "k".into(),
            invoked_ms,
            returned_ms,
            version,
            node: 8201,
        }
    }

    fn rotation(invoked_ms: u64, acknowledged: Option<(u64, u64)>) -> Rotation {
        Rotation {
            key: "k".into(),
            invoked_ms,
            acknowledged,
        }
    }

    fn initial() -> BTreeMap<String, u64> {
        BTreeMap::from([("k".to_owned(), 1)])
    }

    /// The one violation the history has.
    fn the_violation(reads: &[Read], rotations: &[Rotation]) -> String {
        let found = violations(&initial(), reads, rotations);
        assert_eq!(found.len(), 1, "{found:?}");
        found[0].clone()
    }

    #[test]
    fn a_linearizable_history_passes() {
        let reads = [
            read(0, 5, 1),
            read(12, 20, 1),
            read(15, 30, 2),
            read(40, 45, 3),
        ];
        let rotations = [rotation(10, Some((25, 2))), rotation(26, None)];
        assert_eq!(
            violations(&initial(), &reads, &rotations),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_stale_read_is_found() {
        let reads = [read(30, 35, 1)];
        let rotations = [rotation(10, Some((25, 2)))];
        let found = violations(&initial(), &reads, &rotations);
        assert!(found[0].starts_with("stale read: k v1"), "{found:?}");
    }

    #[test]
    fn a_read_going_back_is_found() {
        let found = the_violation(&[read(10, 20, 2), read(25, 30, 1)], &[rotation(5, None)]);
        assert!(found.starts_with("read went back: k v1"), "{found}");
    }

    /// A rotation's acknowledgement is the primary version it read back,
    /// so it must not go back from an earlier read either.
    #[test]
    fn a_rotation_reporting_an_older_version_than_an_earlier_read_is_found() {
        let rotations = [rotation(5, None), rotation(25, Some((40, 1)))];
        let found = the_violation(&[read(10, 20, 2)], &rotations);
        assert!(found.starts_with("read went back: k v1"), "{found}");
    }

    #[test]
    fn a_read_from_the_future_is_found() {
        let rotations = [rotation(5, Some((30, 2))), rotation(21, None)];
        let found = the_violation(&[read(10, 20, 3)], &rotations);
        assert!(found.starts_with("read from the future"), "{found}");
    }
}
