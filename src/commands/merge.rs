//! `gomaflow-wgpu merge RUN_DIR`: the shards of `sample --shard I/N` as one analysis. Each
//! shard is an independent chain of the same flow, a replicum in Wolff's sense: Gamma(t) is
//! estimated within each about the common mean and summed over them; derived quantities take
//! the jackknife over bins of every shard. Needs no GPU.

use super::sample::{chain_json, plot_correlator, print_chain, warn_heavy_tails};
use crate::config::Config;
use crate::lattice::Lattice;
use crate::observables::{Consistency, Summary, idx, replica_consistency};
use crate::sample::ChainStats;
use crate::shards::{self, Shard};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct MergeArgs {
    /// The run directory whose shards/ holds the finished set <I>-of-<N>.npy and .json.
    pub run_dir: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The merged analysis of one set of shards.
pub struct Merged {
    pub shards: Vec<Shard>,
    pub stats: ChainStats,
    pub summary: Summary,
    /// Whether the shards' means of |m|, phi^2 and chi_2 agree within their errors.
    pub consistency: [(&'static str, Consistency); 3],
    /// Measurements per shard after burn-in, summed.
    pub samples: usize,
}

/// Read and analyse the shards of `run_dir` (shard order, so the result does not depend on the
/// order the files are listed in).
pub fn merge(run_dir: &Path) -> Result<Merged> {
    let cfg_path = run_dir.join("config.toml");
    let cfg = Config::load(&cfg_path)
        .with_context(|| format!("{} is not a usable run directory", run_dir.display()))?;
    let lat = Lattice::new(cfg.physical.nd, cfg.physical.l);
    let shards = shards::read_set(run_dir, &lat, &shards::fingerprint(&cfg_path)?)?;
    Ok(analyse(&lat, shards))
}

/// The analysis of shards already read and checked, in shard order whatever order they come in
/// (floating-point sums depend on it).
pub fn analyse(lat: &Lattice, mut shards: Vec<Shard>) -> Merged {
    shards.sort_by_key(|s| s.meta.shard);
    let chains: Vec<Vec<Vec<f64>>> = shards
        .iter()
        .map(|s| s.primaries[s.meta.burn_in..].to_vec())
        .collect();
    let summary = Summary::of(lat, &chains);
    let stats = ChainStats::of(&shards.iter().map(Shard::record).collect::<Vec<_>>());
    let v = lat.volume() as f64;
    let check = |k: usize, scale: f64| {
        let series: Vec<Vec<f64>> = chains
            .iter()
            .map(|c| c.iter().map(|row| scale * row[k]).collect())
            .collect();
        let refs: Vec<&[f64]> = series.iter().map(|x| x.as_slice()).collect();
        replica_consistency(&refs)
    };
    let consistency = [
        ("abs_m", check(idx::ABS_M, 1.0)),
        ("phi2", check(idx::PHI2, 1.0)),
        ("chi2", check(idx::M2, v)),
    ];
    Merged {
        samples: chains.iter().map(|c| c.len()).sum(),
        shards,
        stats,
        summary,
        consistency,
    }
}

pub fn run(args: MergeArgs) -> Result<()> {
    let dir = args.run_dir;
    let m = merge(&dir)?;
    let n = m.shards.len();
    let first = &m.shards[0].meta;
    // Proposals over all shards (shards may differ in length and burn-in).
    let proposals: usize = m.shards.iter().map(|s| s.meta.samples).sum();
    let seconds: f64 = m.shards.iter().map(|s| s.meta.seconds).sum();
    let wall = m
        .shards
        .iter()
        .map(|s| s.meta.seconds)
        .fold(0.0f64, f64::max);
    let png = shards::shards_dir(&dir).join("correlator.png");
    plot_correlator(&png, &m.summary, &format!("flow + MH, {n} shards"))?;
    warn_heavy_tails(&m.stats);
    let low_q: Vec<String> = m
        .consistency
        .iter()
        .filter(|(_, c)| c.q < 0.01)
        .map(|(name, c)| format!("{name} (Q {:.2e})", c.q))
        .collect();
    if !low_q.is_empty() {
        eprintln!(
            "warning: the shards' means of {} scatter more than their errors allow: a shard \
             may be out of equilibrium (burn-in too short) or its chain too short for its error",
            low_q.join(", ")
        );
    }
    let per_shard: Vec<serde_json::Value> = m
        .shards
        .iter()
        .map(|s| {
            let stats = ChainStats::of(&[s.record()]);
            serde_json::json!({
                "shard": s.meta.shard.index,
                "file": s.npy.display().to_string(),
                "samples": s.meta.samples,
                "burn_in": s.meta.burn_in,
                "acceptance": stats.acceptance,
                "seconds": s.meta.seconds,
            })
        })
        .collect();
    if args.json {
        let mut j = chain_json(proposals, first.burn_in, &m.stats, seconds, &m.summary);
        j.insert("run".into(), dir.display().to_string().into());
        j.insert("checkpoint".into(), first.checkpoint.clone().into());
        j.insert(
            "checkpoint_fingerprint".into(),
            first.checkpoint_fingerprint.clone().into(),
        );
        j.insert("seed".into(), first.seed.into());
        j.insert("shards".into(), n.into());
        j.insert("measurements".into(), m.samples.into());
        j.insert("wall_seconds".into(), wall.into());
        j.insert("per_shard".into(), per_shard.into());
        let cons: serde_json::Map<String, serde_json::Value> = m
            .consistency
            .iter()
            .map(|(k, c)| (k.to_string(), serde_json::to_value(c).unwrap()))
            .collect();
        j.insert("shard_consistency".into(), cons.into());
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!(
            "{n} shard{} of {} merged: independent flow + independence Metropolis-Hastings \
             chains from {} (seed {}), analysed as replicas",
            if n == 1 { "" } else { "s" },
            dir.display(),
            first.checkpoint,
            first.seed
        );
        print_chain(proposals, first.burn_in, &m.stats, seconds, &m.summary);
        let burn_in = if m.shards.iter().all(|s| s.meta.burn_in == first.burn_in) {
            format!("burn-in {} per shard", first.burn_in)
        } else {
            "burn-in varies by shard (--json lists it)".to_string()
        };
        println!("  (seconds summed over shards; the slowest took {wall:.2} s; {burn_in})");
        if n > 1 {
            println!(
                "shard means against the merged mean (chi^2 / dof, Q; Q < 0.01 means they \
                 disagree):"
            );
            for (name, c) in &m.consistency {
                println!("  {name:<6} {:>8.2} / {:<4} Q {:.3}", c.chi2, c.dof, c.q);
            }
        }
        println!("plots: {}", png.display());
    }
    Ok(())
}
