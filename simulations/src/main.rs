//! `qk-sim`: runs the deterministic cluster simulation for one seed, a sweep
//! of seeds, or the small scale study.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use qk_sim::{run, NetProfile, PlantedBug, Sim, SimConfig};

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
    /// Plant a bug: node 1 applies entries 2 and 3 in swapped order.
    #[arg(long)]
    plant_swap_apply: bool,
    /// Plant a bug: the simulated share store ignores every erase.
    #[arg(long)]
    plant_ignore_erase: bool,
    /// Print the scale table (nodes 3/5/9/16, LAN and WAN) and exit.
    #[arg(long)]
    scale: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.scale {
        scale();
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
    if args.plant_swap_apply {
        cfg.bug = PlantedBug::SwapApply;
    }
    if args.plant_ignore_erase {
        cfg.bug = PlantedBug::IgnoreErase;
    }
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
            "seed {seed}: ok  trace {}  sim {} ms, {} steps, {} commits, {} msgs ({} lost), keys {}, enabled {}, destroyed {}, unwraps {} ok / {} failed, liveness checks {}, crashes {} (disk loss {}), partitions {}, byzantine blamed {}, roots checked {}",
            out.trace_hex(),
            s.time_ms,
            s.steps,
            s.commits,
            s.messages_sent,
            s.messages_lost,
            s.keys_created,
            s.versions_enabled,
            s.versions_destroyed,
            s.unwraps_ok,
            s.unwraps_failed,
            s.liveness_checks,
            s.crashes,
            s.disk_losses,
            s.partitions,
            s.byzantine_blamed,
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

fn scale() {
    println!("| nodes | t | profile | DKG (sim ms) | DKG messages | DKG log entries | unwrap (sim ms) | unwrap messages |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, net) in [
        ("LAN 1-5 ms", NetProfile::LAN),
        ("WAN 30-150 ms", NetProfile::WAN),
    ] {
        for n in [3u64, 5, 9, 16] {
            let t = u16::try_from(n / 2 + 1).unwrap_or(2);
            let r = Sim::scale(n, t, net, 7);
            println!(
                "| {n} | {t} | {name} | {} | {} | {} | {} | {} |",
                r.dkg_ms, r.dkg_messages, r.dkg_commits, r.unwrap_ms, r.unwrap_messages
            );
        }
    }
}
