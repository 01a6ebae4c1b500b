//! `gomaflow-wgpu sample RUN_DIR`: the exact Markov chain a trained flow drives, and the physics
//! measured on it.

use super::CommonArgs;
use crate::files::FloatType;
use crate::gpu::{AdapterChoice, Gpu, Precision};
use crate::lattice::Lattice;
use crate::observables::Summary;
use crate::plots::{self, Panel};
use crate::sample::{self, ChainStats, SampleOptions};
use crate::shards::{self, ShardId};
use crate::tape::{Fusion, Mode, TapeSpec};
use crate::tune::{self, TuneMode};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

/// Above this Pareto k of the weights (or below this ESS) `sample` warns that its error bars
/// may not be trustworthy. Measured on the tutorial theory against HMC: flows with ESS 0.014
/// (k 0.64, 200k proposals) and 0.05 (k 0.49, 16k proposals) read <phi^2> 2.9 and 4 sigma low;
/// one with ESS 0.52 (k 0.42) agreed within 1 sigma.
pub const HIGH_PARETO_K: f64 = 0.7;
pub const LOW_ESS: f64 = 0.1;

/// Plot C(t) and m_eff(t) with error bars.
pub fn plot_correlator(path: &Path, s: &Summary, title: &str) -> Result<()> {
    let c: Vec<(f64, f64)> =
        s.c.iter()
            .enumerate()
            .map(|(t, x)| (t as f64, x.0))
            .collect();
    let ce: Vec<f64> = s.c.iter().map(|x| x.1).collect();
    let (m, me): (Vec<(f64, f64)>, Vec<f64>) = s
        .m_eff
        .iter()
        .enumerate()
        .filter(|(_, x)| x.0.is_finite() && x.1.is_finite())
        .map(|(i, x)| (((i + 1) as f64, x.0), x.1))
        .unzip();
    let t1 = format!("C(t), {title}");
    let t2 = format!("effective mass, {title}");
    plots::panels(
        path,
        2,
        &[
            Panel {
                title: &t1,
                x_label: "t",
                points: c,
                errors: Some(ce),
                reference: None,
            },
            Panel {
                title: &t2,
                x_label: "t",
                points: m,
                errors: Some(me),
                reference: None,
            },
        ],
    )
}

#[derive(clap::Args, Debug, Clone)]
pub struct SampleArgs {
    /// The run directory of `train`.
    pub run_dir: PathBuf,
    /// Chain length (proposals), burn-in included.
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u64).range(2..=100_000_000))]
    pub samples: u64,
    /// Steps discarded at the start of the chain.
    #[arg(long, default_value_t = 1000)]
    pub burn_in: u64,
    /// Seed of the proposals and the accept/reject decisions [default: training.seed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the chain's configurations (after burn-in) as .npy, shape [N, L, ..., L].
    #[arg(long)]
    pub save_npy: Option<PathBuf>,
    /// The float type of --save-npy's array: f16 halves the file (relative rounding at most
    /// 2^-11; the chain itself is computed in f32 whatever is saved).
    #[arg(long, value_enum, default_value_t = FloatType::F32, requires = "save_npy")]
    pub npy_dtype: FloatType,
    /// Proposals per GPU batch.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65535))]
    pub batch: u64,
    /// Use the last checkpoint instead of the best (by acceptance).
    #[arg(long)]
    pub latest: bool,
    /// How the convolution kernels' tilings are chosen: off (fixed rules per adapter kind),
    /// auto (measured on this adapter once, then read from the cache), full (measure again).
    #[arg(long, value_enum, default_value_t = TuneMode::Off)]
    pub tune: TuneMode,
    /// Run chain I of N (0 <= I < N) with its own random streams, and write its measurements to
    /// RUN_DIR/shards/ for `merge`; e.g. `--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<ShardId>,
    /// Storage of the nets' activations and their gradients [default: the run's [device]
    /// precision, else f32]: f16 halves their memory where the adapter has SHADER_F16 (every
    /// sum, log q, the action, the weights and Adam stay f32).
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The JSON fields `sample` and `merge` share: the chain statistics, the observables and the
/// correlator (see README, "sample --json").
pub fn chain_json(
    samples: usize,
    burn_in: usize,
    stats: &ChainStats,
    seconds: f64,
    s: &Summary,
) -> serde_json::Map<String, serde_json::Value> {
    let per_sample = seconds / samples as f64;
    let (obs, corr) = s.json();
    let j = serde_json::json!({
        "samples": samples,
        "burn_in": burn_in,
        "acceptance": stats.acceptance,
        "ess_per_sample": stats.ess,
        "pareto_k": stats.pareto_k,
        "tau_int_acc": stats.tau_acc,
        "seconds": seconds,
        "seconds_per_sample": per_sample,
        "cost_per_independent_sample_s": s.cost_json(per_sample),
        "observables": obs,
        "correlator": corr,
    });
    match j {
        serde_json::Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// The table `sample` and `merge` print after their first line.
pub fn print_chain(samples: usize, burn_in: usize, stats: &ChainStats, seconds: f64, s: &Summary) {
    let per_sample = seconds / samples as f64;
    println!(
        "{} proposals, burn-in {}: acceptance {:.4}, ESS per sample {:.4}, Pareto k {:.2}, \
         acceptance-based tau_int {:.2}; {:.2} s ({:.2e} s per sample)",
        samples,
        burn_in,
        stats.acceptance,
        stats.ess,
        stats.pareto_k,
        stats.tau_acc,
        seconds,
        per_sample
    );
    s.print_cost(per_sample);
    s.print();
}

/// The warning of a flow whose weights make the chain's errors untrustworthy.
pub fn warn_heavy_tails(stats: &ChainStats) {
    if stats.pareto_k > HIGH_PARETO_K || stats.ess < LOW_ESS {
        eprintln!(
            "warning: the flow's weights are heavy-tailed (Pareto k {:.2}, ESS per sample {:.4}): \
             the flow misses part of the target, mostly at large |phi|. The chain is exact in the \
             limit, but a finite one under-samples what the flow misses, so averages are biased \
             and their error bars too small, however good the acceptance ({:.3}) looks. Train \
             longer, or check against `gomaflow-wgpu hmc`.",
            stats.pareto_k, stats.ess, stats.acceptance
        );
    }
}

pub fn run(args: SampleArgs) -> Result<()> {
    let dir = args.run_dir;
    let json = args.common.json;
    let opts = SampleOptions {
        samples: args.samples as usize,
        burn_in: args.burn_in as usize,
        seed: args.seed,
        batch: args.batch as usize,
        latest: args.latest,
        save_npy: args.save_npy,
        npy_dtype: args.npy_dtype,
        shard: args.shard,
        precision: args.precision,
    };
    let (mut cfg, _) = sample::open_run(&dir, opts.latest)?;
    let gpu = Gpu::new(&AdapterChoice::new(
        args.common.adapter.as_deref(),
        cfg.device_id,
    ))?;
    super::set_precision(&mut cfg, opts.precision, &gpu);
    // The sampling tape's tilings (the chain's numbers do not depend on them beyond rounding).
    let sampling = TapeSpec {
        batch: opts.batch.min(opts.samples),
        mode: Mode::Infer,
        fusion: Fusion::Auto,
        ..TapeSpec::training(&cfg)
    };
    tune::choose(&gpu, args.tune, &[sampling], None)?;
    let what = match opts.shard {
        Some(id) => format!("sample shard {id} "),
        None => "sample ".to_string(),
    };
    let pb = ProgressBar::new(opts.samples as u64);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what}[{{bar:30}}] {{pos}}/{{len}} proposals {{per_sec}} ETA {{eta}}"
        ))
        .unwrap()
        .progress_chars("=> "),
    );
    let r = sample::run(&gpu, &dir, &opts, |n| pb.set_position(n as u64))?;
    pb.finish_and_clear();
    let lat = Lattice::new(r.cfg.physical.nd, r.cfg.physical.l);
    let s = Summary::of(&lat, std::slice::from_ref(&r.primaries));
    let stats = &r.stats;
    let mut j = chain_json(opts.samples, opts.burn_in, stats, r.seconds, &s);
    j.insert("run".into(), dir.display().to_string().into());
    j.insert(
        "checkpoint".into(),
        r.checkpoint.display().to_string().into(),
    );
    j.insert("adapter".into(), gpu.describe().into());
    // A shard's summary, beside its rows; `merge` checks the set with these fields.
    let shard_files = match opts.shard {
        Some(id) => {
            let mut sj = j.clone();
            sj.insert("format".into(), shards::FORMAT.into());
            sj.insert("shard".into(), id.index.into());
            sj.insert("shards".into(), id.count.into());
            sj.insert("seed".into(), r.seed.into());
            sj.insert("precision".into(), r.cfg.precision.name().into());
            sj.insert("batch".into(), opts.batch.min(opts.samples).into());
            sj.insert(
                "config_fingerprint".into(),
                shards::fingerprint(&dir.join("config.toml"))?.into(),
            );
            let ck_name = r.checkpoint.file_name().unwrap_or_default();
            sj.insert("checkpoint".into(), ck_name.to_string_lossy().into());
            sj.insert(
                "checkpoint_fingerprint".into(),
                shards::fingerprint(&r.checkpoint)?.into(),
            );
            shards::write_summary(&dir, id, &serde_json::Value::Object(sj))?;
            Some(id.paths(&dir))
        }
        None => None,
    };
    // A shard is one part of a chain: the plot is `merge`'s to draw.
    let png = dir.join("correlator.png");
    if opts.shard.is_none() {
        plot_correlator(&png, &s, "flow + MH")?;
    }
    warn_heavy_tails(stats);
    if json {
        if let Some((npy, sj)) = &shard_files {
            j.insert("shard_files".into(), serde_json::json!([npy, sj]));
        }
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!(
            "flow + independence Metropolis-Hastings from {} on {}",
            r.checkpoint.display(),
            gpu.describe()
        );
        print_chain(opts.samples, opts.burn_in, stats, r.seconds, &s);
        match &shard_files {
            Some((npy, sj)) => println!(
                "shard {}: {} and {} (`gomaflow-wgpu merge {}` once all are done)",
                opts.shard.unwrap(),
                npy.display(),
                sj.display(),
                dir.display()
            ),
            None => println!("plots: {}", png.display()),
        }
        if let Some(p) = &opts.save_npy {
            let ty = match opts.npy_dtype {
                FloatType::F32 => "float32",
                FloatType::F16 => "float16",
            };
            println!("configurations: {} ({ty}, numpy.load)", p.display());
        }
    }
    Ok(())
}
