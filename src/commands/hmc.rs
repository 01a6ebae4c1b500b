//! `gomaflow-wgpu hmc CONFIG.toml`: the HMC baseline on the GPU, with the same observables.

use crate::config::Config;
use crate::gpu::{AdapterChoice, Gpu};
use crate::lattice::Lattice;
use crate::mcmc::{HmcOptions, run_hmc};
use crate::observables::Summary;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

pub struct Args {
    pub config: PathBuf,
    pub trajectories: usize,
    pub chains: usize,
    pub burn_in: usize,
    pub steps: usize,
    pub step_size: f64,
    pub seed: Option<u64>,
    pub json: bool,
    pub adapter: Option<String>,
}

pub fn run(a: Args) -> Result<()> {
    let cfg = Config::load(&a.config)?;
    let gpu = Gpu::new(&AdapterChoice::new(a.adapter.as_deref(), cfg.device_id))?;
    let opts = HmcOptions {
        chains: a.chains,
        trajectories: a.trajectories,
        burn_in: a.burn_in,
        eps: a.step_size,
        n_steps: a.steps,
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
    if a.json {
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
