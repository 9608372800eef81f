//! The simulator's own guarantees: replayable runs, a passing bounded
//! sweep, and planted bugs caught within the sweep.

use std::time::Instant;

use qk_sim::{run, sweep, PlantedBug, SimConfig};

/// Seeds the CI sweep covers (`cargo test --workspace` runs this test).
const SWEEP_SEEDS: u64 = 100;

#[test]
fn same_seed_gives_the_same_trace_hash() {
    let a = run(SimConfig::new(42));
    let b = run(SimConfig::new(42));
    assert!(a.violation.is_none(), "{:?}", a.violation);
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.stats, b.stats);
    let c = run(SimConfig::new(43));
    assert_ne!(a.trace_hash, c.trace_hash, "the seed drives the run");
}

#[test]
fn sweep_of_100_seeds_passes() {
    let started = Instant::now();
    let (ran, violation) = sweep(&SimConfig::new(1), SWEEP_SEEDS);
    if let Some(v) = violation {
        panic!("{v}");
    }
    assert_eq!(ran, SWEEP_SEEDS);
    eprintln!(
        "{SWEEP_SEEDS} seeds in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn the_sweep_exercises_faults_and_invariants() {
    // Not vacuous: across a few seeds the workload enables, unwraps,
    // refreshes and destroys versions through openraft (with forwarded
    // proposals), faults happen, the Byzantine holder is blamed for its
    // partials and left out of QUAL for its DKG shares, roots are
    // reconstructed and liveness is probed.
    let mut total = qk_sim::Stats::default();
    for seed in 1..=5 {
        let out = run(SimConfig::new(seed));
        assert!(out.violation.is_none(), "{:?}", out.violation);
        let s = out.stats;
        total.versions_enabled += s.versions_enabled;
        total.versions_destroyed += s.versions_destroyed;
        total.unwraps_ok += s.unwraps_ok;
        total.crashes += s.crashes;
        total.disk_losses += s.disk_losses;
        total.partitions += s.partitions;
        total.messages_lost += s.messages_lost;
        total.byzantine_blamed += s.byzantine_blamed;
        total.roots_reconstructed += s.roots_reconstructed;
        total.liveness_checks += s.liveness_checks;
        total.refreshes_completed += s.refreshes_completed;
        total.dkg_byzantine_blamed += s.dkg_byzantine_blamed;
        total.raft_messages += s.raft_messages;
        total.forwards += s.forwards;
        total.attacks_refused += s.attacks_refused;
        total.forgeries_refused += s.forgeries_refused;
        total.partial_forgeries_refused += s.partial_forgeries_refused;
        total.raft_duplicates += s.raft_duplicates;
        total.unflushed_entries_lost += s.unflushed_entries_lost;
    }
    assert!(total.versions_enabled > 0, "{total:?}");
    assert!(total.versions_destroyed > 0, "{total:?}");
    assert!(total.unwraps_ok > 0, "{total:?}");
    assert!(total.crashes > 0, "{total:?}");
    assert!(total.disk_losses > 0, "{total:?}");
    assert!(total.partitions > 0, "{total:?}");
    assert!(total.messages_lost > 0, "{total:?}");
    assert!(total.byzantine_blamed > 0, "{total:?}");
    assert!(total.roots_reconstructed > 0, "{total:?}");
    assert!(total.liveness_checks > 0, "{total:?}");
    assert!(total.refreshes_completed > 0, "{total:?}");
    assert!(total.dkg_byzantine_blamed > 0, "{total:?}");
    assert!(total.raft_messages > 0, "{total:?}");
    assert!(total.forwards > 0, "{total:?}");
    assert!(total.attacks_refused > 0, "{total:?}");
    assert!(total.forgeries_refused > 0, "{total:?}");
    assert!(total.partial_forgeries_refused > 0, "{total:?}");
    assert!(total.raft_duplicates > 0, "{total:?}");
}

/// Sweeps with `bug` planted; the sweep must stop at a violation whose
/// replay command names the seed and the bug.
fn caught(bug: PlantedBug) -> qk_sim::Violation {
    let mut cfg = SimConfig::new(1);
    cfg.bug = bug;
    let (_, violation) = sweep(&cfg, SWEEP_SEEDS);
    let v = violation.unwrap_or_else(|| panic!("{bug:?} not caught in {SWEEP_SEEDS} seeds"));
    assert!(v.replay.contains(&format!("--plant {}", bug.name())), "{v}");
    assert!(v.replay.contains(&format!("--seed {}", v.seed)), "{v}");
    v
}

/// What the checker may say when it catches `bug` (the invariants it
/// breaks, docs/SIMULATION.md).
fn expected_violations(bug: PlantedBug) -> &'static [&'static str] {
    match bug {
        PlantedBug::None => &[""],
        PlantedBug::SwapApply => &["applied a different entry"],
        // The erase receipt check or the refresh switch sees it first.
        PlantedBug::IgnoreErase => &[
            "still stores an old-epoch share",
            "committed while its store still holds a share",
        ],
        PlantedBug::RefreshErase => &["still stores an old-epoch share"],
        PlantedBug::SkipProofCheck => &["ciphertext proof does not verify"],
        PlantedBug::TrustAnyGrant => &["a forged command took effect"],
        PlantedBug::SkipIntentCheck => &["never signed"],
        PlantedBug::HolderUsability => &["which is disabled"],
        PlantedBug::HolderAuthorization => &["guest may not unwrap"],
        PlantedBug::MinDecrypt => &["below the key's minimum decryption version"],
        PlantedBug::ReceiptBeforeErase => &["committed while its store still holds a share"],
        PlantedBug::SkipComplaints => &["posted no complaint against it"],
        PlantedBug::CombineShort => &["below the threshold"],
    }
}

#[test]
fn every_planted_bug_is_caught_within_the_sweep() {
    for bug in PlantedBug::ALL {
        let v = caught(bug);
        let expected = expected_violations(bug);
        assert!(expected.iter().any(|e| v.what.contains(e)), "{bug:?}: {v}");
        eprintln!("{bug:?} caught at seed {}", v.seed);
    }
}

#[test]
fn the_holder_rules_are_tried_by_signed_requests_the_coordinator_never_checked() {
    // Not vacuous: the compromised node passes callers' signed unwraps of
    // barred versions (and guest's) straight to the holders, who refuse.
    let out = run(SimConfig::new(1));
    assert!(out.violation.is_none(), "{:?}", out.violation);
    assert!(out.stats.unchecked_partials > 0, "{:?}", out.stats);
    assert!(out.stats.unchecked_partials_refused > 0, "{:?}", out.stats);
}

#[test]
fn planted_bug_names_parse_back() {
    for bug in PlantedBug::ALL {
        assert_eq!(PlantedBug::parse(bug.name()), Ok(bug));
    }
    let err = PlantedBug::parse("nonsense").expect_err("an unknown name is refused");
    assert!(err.to_string().contains("holder-usability"), "{err}");
}
