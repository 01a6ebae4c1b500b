//! Sampling with a trained flow: proposals drawn on the GPU in batches (log q and S computed
//! there), the independence Metropolis-Hastings chain on the host, and the observables measured
//! on the chain's configurations.

use crate::checkpoint;
use crate::config::Config;
use crate::files::{FloatType, NpyWriter};
use crate::flow::FlowSpec;
use crate::gpu::{Gpu, Precision};
use crate::kernels::reduce::reference::ess_per_sample;
use crate::lattice::Lattice;
use crate::observables::{Measurement, pareto_k, tau_acceptance_replicas};
use crate::proposals::Proposer;
use crate::rng::Philox;
use crate::rng::stream;
use crate::shards::{ShardId, ShardWriter};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// Chain length (proposals drawn), burn-in included.
    pub samples: usize,
    pub burn_in: usize,
    /// Keys the proposals and the accept/reject uniforms (default: training.seed).
    pub seed: Option<u64>,
    pub batch: usize,
    /// Use checkpoint.safetensors instead of best.safetensors.
    pub latest: bool,
    pub save_npy: Option<PathBuf>,
    /// The float type of `save_npy`'s array.
    pub npy_dtype: FloatType,
    /// Run chain I of N with its own streams and write its measurements to `dir/shards/`.
    pub shard: Option<ShardId>,
    /// Overrides the run's `[device] precision` (`crate::commands::set_precision`).
    pub precision: Option<Precision>,
}

pub struct SampleRun {
    pub cfg: Config,
    pub checkpoint: PathBuf,
    /// Primaries of the chain's state at each step after burn-in.
    pub primaries: Vec<Vec<f64>>,
    pub accepted: Vec<bool>,
    /// log w of every proposal, burn-in included.
    pub logw: Vec<f64>,
    /// Acceptance, ESS, Pareto k of the weights and the acceptance-based tau.
    pub stats: ChainStats,
    pub seconds: f64,
    /// The proposals' seed.
    pub seed: u64,
}

/// The chain-level statistics `sample` and `merge` report, over one or more independent chains.
pub struct ChainStats {
    /// Accepted fraction of the steps after burn-in (the start excluded).
    pub acceptance: f64,
    pub ess: f64,
    /// Pareto k of the weights' tail (PSIS): above 0.7 the chain's errors are not trustworthy.
    pub pareto_k: f64,
    pub tau_acc: f64,
}

/// One chain's record for `ChainStats`: log w and the decision of every step, burn-in included.
pub struct ChainRecord<'a> {
    pub logw: &'a [f64],
    pub accepted: &'a [bool],
    pub burn_in: usize,
}

impl ChainStats {
    pub fn of(chains: &[ChainRecord]) -> ChainStats {
        let after: Vec<&[bool]> = chains
            .iter()
            .map(|c| &c.accepted[c.burn_in.max(1).min(c.accepted.len())..])
            .collect();
        let steps: usize = after.iter().map(|a| a.len()).sum();
        let acc: usize = after.iter().map(|a| a.iter().filter(|&&x| x).count()).sum();
        let logw: Vec<f64> = chains.iter().flat_map(|c| c.logw.iter().copied()).collect();
        ChainStats {
            acceptance: acc as f64 / steps.max(1) as f64,
            ess: ess_per_sample(&logw),
            pareto_k: pareto_k(&logw),
            tau_acc: tau_acceptance_replicas(&after),
        }
    }
}

/// The config and the checkpoint a run directory offers.
pub fn open_run(dir: &Path, latest: bool) -> Result<(Config, PathBuf)> {
    if !dir.is_dir() {
        bail!(
            "run directory {} does not exist (train one with `gomaflow-wgpu train CONFIG.toml --out {}`)",
            dir.display(),
            dir.display()
        );
    }
    let cfg_path = dir.join("config.toml");
    let cfg = Config::load(&cfg_path)
        .with_context(|| format!("{} is not a usable run directory", dir.display()))?;
    let best = dir.join("best.safetensors");
    let last = dir.join("checkpoint.safetensors");
    let ck = if !latest && best.exists() { best } else { last };
    if !ck.exists() {
        bail!(
            "{} holds no checkpoint (checkpoint.safetensors or best.safetensors)",
            dir.display()
        );
    }
    Ok((cfg, ck))
}

pub fn run(
    gpu: &Gpu,
    dir: &Path,
    o: &SampleOptions,
    mut progress: impl FnMut(usize),
) -> Result<SampleRun> {
    if o.burn_in >= o.samples {
        bail!(
            "--burn-in {} must be below --samples {}",
            o.burn_in,
            o.samples
        );
    }
    let (mut cfg, ck_path) = open_run(dir, o.latest)?;
    crate::commands::set_precision(&mut cfg, o.precision, gpu);
    let flow = FlowSpec::from_config(&cfg);
    let ck = checkpoint::load(&ck_path, &flow, true)?;
    let params = gpu.upload_params(&ck.params)?;
    let seed = o.seed.unwrap_or(cfg.training.seed);
    let batch = o.batch.min(o.samples);
    // Shard I of N draws batches I, I + N, ... and decides with its own uniforms; shard 0 of 1
    // is the unsharded chain.
    let (shard, shards) = o.shard.map_or((0, 1), |s| (s.index, s.count));
    let batches = o.samples.div_ceil(batch) as u64;
    if (batches - 1) * shards as u64 + shard as u64 > u32::MAX as u64 {
        bail!(
            "--samples {} in batches of {batch} over {shards} shards needs more than 2^32 GPU \
             draws: raise --batch",
            o.samples
        );
    }
    let proposer = Proposer::new(gpu, &cfg, &params, batch, seed, stream::SAMPLE, "--batch")?;
    let lat = Lattice::new(cfg.physical.nd, cfg.physical.l);
    let v = lat.volume();
    let mut npy = match &o.save_npy {
        Some(p) => {
            let mut shape = vec![o.samples - o.burn_in];
            shape.extend(lat.shape());
            Some(NpyWriter::create(p, &shape, o.npy_dtype)?)
        }
        None => None,
    };
    let mut rows = match o.shard {
        Some(id) => Some(ShardWriter::create(dir, id, &lat, o.samples)?),
        None => None,
    };

    let start = Instant::now();
    let mut rng = Philox::new(seed, stream::sample_mh_shard(shard));
    let mut logw_all = Vec::with_capacity(o.samples);
    let mut accepted = Vec::with_capacity(o.samples);
    let mut primaries = Vec::with_capacity(o.samples - o.burn_in);
    let mut cur_lw = f64::NAN;
    let mut cur_phi: Vec<f32> = vec![];
    let mut cur_meas: Vec<f64> = vec![];
    let mut draw = 0u32;
    while logw_all.len() < o.samples {
        let take = batch.min(o.samples - logw_all.len());
        let p = proposer.draw(gpu, draw * shards + shard, take, true, |_| {})?;
        draw += 1;
        for (k, lw) in p.logw().into_iter().enumerate() {
            let i = logw_all.len();
            let acc = i == 0 || {
                let a = lw - cur_lw;
                a >= 0.0 || rng.uniform() < a.exp()
            };
            if acc {
                cur_lw = lw;
                cur_phi = p.phi[k * v..(k + 1) * v].to_vec();
                cur_meas = Measurement::of(&lat, &cur_phi).primaries();
            }
            accepted.push(acc);
            logw_all.push(lw);
            if let Some(w) = rows.as_mut() {
                w.push(&cur_meas, lw, acc)?;
            }
            if i >= o.burn_in {
                primaries.push(cur_meas.clone());
                if let Some(w) = npy.as_mut() {
                    w.write_row(&cur_phi)?;
                }
            }
        }
        progress(logw_all.len());
    }
    if let Some(w) = npy {
        w.finish()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some(w) = rows {
        w.finish()?;
    }
    let stats = ChainStats::of(&[ChainRecord {
        logw: &logw_all,
        accepted: &accepted,
        burn_in: o.burn_in,
    }]);
    Ok(SampleRun {
        cfg,
        checkpoint: ck_path,
        stats,
        primaries,
        accepted,
        logw: logw_all,
        seconds,
        seed,
    })
}
