//! `gomaflow-wgpu hmc CONFIG.toml`: the HMC baseline on the GPU, with the same observables.

use super::CommonArgs;
use crate::config::Config;
use crate::gpu::{AdapterChoice, Gpu};
use crate::lattice::Lattice;
use crate::mcmc::{HmcOptions, run_hmc};
use crate::observables::Summary;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct HmcArgs {
    pub config: PathBuf,
    /// Measured trajectories per chain (after burn-in).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(2..=10_000_000))]
    pub trajectories: u64,
    /// Independent chains run side by side.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65535))]
    pub chains: u64,
    /// Trajectories discarded first; the step size is tuned in the first half.
    #[arg(long, default_value_t = 200)]
    pub burn_in: u64,
    /// Leapfrog steps per trajectory.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10000))]
    pub steps: u64,
    /// Initial leapfrog step size (tuned towards 80% acceptance during burn-in).
    #[arg(long, default_value_t = 0.1)]
    pub step_size: f64,
    /// Seed [default: training.seed].
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn run(a: HmcArgs) -> Result<()> {
    let cfg = Config::load(&a.config)?;
    let gpu = Gpu::new(&AdapterChoice::new(
        a.common.adapter.as_deref(),
        cfg.device_id,
    ))?;
    let opts = HmcOptions {
        chains: a.chains as usize,
        trajectories: a.trajectories as usize,
        burn_in: a.burn_in as usize,
        eps: a.step_size,
        n_steps: a.steps as usize,
        target_acceptance: 0.8,
        seed: a.seed.unwrap_or(cfg.training.seed),
    };
    let total = (opts.burn_in + opts.trajectories) as u64;
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("hmc [{bar:30}] {pos}/{len} trajectories {per_sec} {msg}")
            .unwrap()
            .progress_chars("=> "),
    );
    let run = run_hmc(&gpu, &cfg, &opts, |i, _, eps| {
        pb.set_position(i as u64);
        pb.set_message(format!("step size {eps:.4}"));
    })?;
    pb.finish_and_clear();
    let lat = Lattice::new(cfg.physical.nd, cfg.physical.l);
    let s = Summary::of(&lat, &run.primaries);
    let per_sample = run.seconds / (opts.trajectories * opts.chains).max(1) as f64;
    if a.common.json {
        let (obs, corr) = s.json();
        let j = serde_json::json!({
            "config": a.config.display().to_string(),
            "adapter": gpu.describe(),
            "chains": opts.chains,
            "trajectories": opts.trajectories,
            "burn_in": opts.burn_in,
            "leapfrog_steps": run.n_steps,
            "step_size": run.eps,
            "acceptance": run.acceptance,
            "seconds": run.seconds,
            "seconds_per_sample": per_sample,
            "cost_per_independent_sample_s": s.cost_json(per_sample),
            "observables": obs,
            "correlator": corr,
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!(
            "HMC on {}: {} chains x {} trajectories (after {} burn-in), {} leapfrog steps of {:.4}",
            gpu.describe(),
            opts.chains,
            opts.trajectories,
            opts.burn_in,
            run.n_steps,
            run.eps
        );
        println!(
            "acceptance {:.4}; {:.3} s, {:.3e} s per sample",
            run.acceptance, run.seconds, per_sample
        );
        s.print_cost(per_sample);
        s.print();
    }
    Ok(())
}
