//! `qk-sim`: runs the deterministic cluster simulation for one seed, a sweep
//! of seeds, or the small scale study.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use qk_sim::{keys_study, run, scale, NetProfile, PlantedBug, SimConfig};

#[derive(Debug, Parser)]
#[command(
    name = "qk-sim",
    about = "Deterministic simulation of a Quorumkey cluster"
)]
struct Args {
    /// First (or only) seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 4)]
    nodes: u64,
    #[arg(long, default_value_t = 2)]
    threshold: u16,
    /// Scheduler steps per seed.
    #[arg(long, default_value_t = 3_000)]
    steps: u64,
    /// Run seeds SEED..SEED+COUNT.
    #[arg(long)]
    sweep: Option<u64>,
    /// WAN-like delays (30-150 ms) instead of LAN-like (1-5 ms).
    #[arg(long)]
    wan: bool,
    /// No loss, duplication, partitions or crashes.
    #[arg(long)]
    no_faults: bool,
    /// No Byzantine holder.
    #[arg(long)]
    no_byzantine: bool,
    /// Plant a bug the checker must catch (docs/SIMULATION.md, "Planted
    /// bugs"): swap-apply, ignore-erase, skip-proof-check, trust-any-grant,
    /// skip-intent-check, holder-usability, holder-authorization,
    /// min-decrypt, refresh-erase, receipt-before-erase, skip-complaints.
    #[arg(long, value_parser = PlantedBug::parse, default_value = "none")]
    plant: PlantedBug,
    /// Print the scale table (one key; nodes 3 to 64, LAN and WAN) and exit.
    #[arg(long)]
    scale: bool,
    /// Largest cluster in the scale table.
    #[arg(long, default_value_t = 64)]
    scale_max_nodes: u64,
    /// Print the many-keys table (this many keys created at once) and exit.
    #[arg(long)]
    keys: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.scale {
        scale_table(args.scale_max_nodes);
        return ExitCode::SUCCESS;
    }
    if let Some(keys) = args.keys {
        keys_table(keys);
        return ExitCode::SUCCESS;
    }
    let mut cfg = SimConfig::new(args.seed);
    cfg.nodes = args.nodes;
    cfg.threshold = args.threshold;
    cfg.steps = args.steps;
    cfg.net = if args.wan {
        NetProfile::WAN
    } else {
        NetProfile::LAN
    };
    cfg.faults = !args.no_faults;
    cfg.byzantine = !args.no_byzantine;
    cfg.bug = args.plant;
    let count = args.sweep.unwrap_or(1);
    let started = Instant::now();
    for seed in args.seed..args.seed.saturating_add(count) {
        let mut c = cfg.clone();
        c.seed = seed;
        let out = run(c);
        if let Some(v) = &out.violation {
            eprintln!("{v}");
            return ExitCode::FAILURE;
        }
        let s = &out.stats;
        println!(
            "seed {seed}: ok  trace {}  sim {} ms, {} steps, {} log entries, {} Raft msgs ({} duplicated), {} msgs ({} lost), keys {}, enabled {}, refreshed {}, destroyed {}, unwraps {} ok / {} failed, liveness checks {}, crashes {} (disk loss {}, unflushed entries lost {}), partitions {}, wrong partials blamed {}, wrong-context unwraps {} ({} refused), forged commands {} ({} refused), forged partial requests {} ({} refused), unchecked partial requests {} ({} holder refusals), Byzantine DKGs {} (dealer excluded {}), snapshots installed {}, roots checked {}",
            out.trace_hex(),
            s.time_ms,
            s.steps,
            s.commits,
            s.raft_messages,
            s.raft_duplicates,
            s.messages_sent,
            s.messages_lost,
            s.keys_created,
            s.versions_enabled,
            s.refreshes_completed,
            s.versions_destroyed,
            s.unwraps_ok,
            s.unwraps_failed,
            s.liveness_checks,
            s.crashes,
            s.disk_losses,
            s.unflushed_entries_lost,
            s.partitions,
            s.byzantine_blamed,
            s.attacks,
            s.attacks_refused,
            s.forgeries,
            s.forgeries_refused,
            s.partial_forgeries,
            s.partial_forgeries_refused,
            s.unchecked_partials,
            s.unchecked_partials_refused,
            s.dkg_byzantine_sessions,
            s.dkg_byzantine_blamed,
            s.snapshots_installed,
            s.roots_reconstructed,
        );
    }
    if count > 1 {
        println!(
            "{count} seeds passed in {:.1} s wall time",
            started.elapsed().as_secs_f64()
        );
    }
    ExitCode::SUCCESS
}

fn profiles() -> [(&'static str, NetProfile); 2] {
    [
        ("LAN 1-5 ms", NetProfile::LAN),
        ("WAN 30-150 ms", NetProfile::WAN),
    ]
}

fn scale_table(max_nodes: u64) {
    println!("| nodes | t | profile | DKG ms | DKG msgs | DKG Raft msgs | DKG commands / entries | unwrap ms | unwrap msgs | refresh ms | refresh msgs | refresh Raft msgs | refresh commands / entries | wall s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, net) in profiles() {
        for n in [3u64, 5, 9, 16, 32, 64]
            .into_iter()
            .filter(|n| *n <= max_nodes)
        {
            let t = u16::try_from(n / 2 + 1).unwrap_or(2);
            let started = Instant::now();
            let r = scale(n, t, net, 7);
            println!(
                "| {n} | {t} | {name} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} / {} | {:.1} |",
                r.dkg_ms,
                r.dkg_messages,
                r.dkg_raft_messages,
                r.dkg_commands,
                r.dkg_log_entries,
                r.unwrap_ms,
                r.unwrap_messages,
                r.refresh_ms,
                r.refresh_messages,
                r.refresh_raft_messages,
                r.refresh_commands,
                r.refresh_log_entries,
                started.elapsed().as_secs_f64()
            );
        }
    }
}

fn keys_table(keys: usize) {
    println!("| keys | nodes | t | profile | enabled | all enabled ms | DKG p50 ms | DKG p99 ms | commands / log entries | protocol msgs | Raft msgs | unwraps | unwrap p50 ms | unwrap p99 ms | wall s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, net) in profiles() {
        let started = Instant::now();
        let r = keys_study(5, 3, keys, net, 7);
        println!(
            "| {} | 5 | 3 | {name} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {:.1} |",
            r.keys,
            r.enabled,
            r.all_enabled_ms,
            r.dkg_p50_ms,
            r.dkg_p99_ms,
            r.commands,
            r.log_entries,
            r.protocol_messages,
            r.raft_messages,
            r.unwraps,
            r.unwrap_p50_ms,
            r.unwrap_p99_ms,
            started.elapsed().as_secs_f64()
        );
    }
}
