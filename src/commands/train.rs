//! `gomaflow-wgpu train CONFIG.toml`: train a flow into a run directory.

use crate::config::Config;
use crate::flow::FlowSpec;
use crate::gpu::{AdapterChoice, Gpu, Precision};
use crate::proposals::Proposer;
use crate::rng::stream;
use crate::tape::{Tape, TapeSpec};
use crate::train::{Outcome, TrainOptions, train};
use crate::tune::{self, TuneMode};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// The config file.
    pub config: PathBuf,
    /// The run directory [default: runs/<config file stem>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in the run directory from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Check the config, build the model and the buffer plan, print them, and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Use the adapter whose name contains this (see `devices`); overrides device_id.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Train this many epochs instead of training.epochs (e.g. to extend a run).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub epochs: Option<u64>,
    /// How the convolution kernels' tilings are chosen: off (fixed rules per adapter kind),
    /// auto (measured on this adapter once, then read from the cache), full (measure again).
    /// A resumed run uses the tilings it recorded.
    #[arg(long, value_enum, default_value_t = TuneMode::Off)]
    pub tune: TuneMode,
    /// Storage of the nets' activations and their gradients [default: the config's [device]
    /// precision, else f32]: f16 halves their memory where the adapter has SHADER_F16 (every
    /// sum, log q, the action, the weights and Adam stay f32).
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
}

/// `runs/<config file stem>`.
pub fn default_run_dir(config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    PathBuf::from("runs").join(stem)
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / (1 << 20) as f64)
}

/// `--dry-run`: the config, the model, the buffer plan, the adapter.
fn dry_run(gpu: &Gpu, cfg: &Config, out: &Path) -> Result<()> {
    let flow = FlowSpec::from_config(cfg);
    let t = &cfg.training;
    let params = gpu.upload_params(&flow.init_params(cfg.model.seed))?;
    let counter = gpu.upload("step counter", &[0u32; 4])?;
    let tape = Tape::new(gpu, TapeSpec::training(cfg), &params, &counter)
        .with_context(|| cfg.sizes("training.batchsize", cfg.training.batchsize))?;
    let eval = Proposer::new(
        gpu,
        cfg,
        &params,
        t.eval_batchsize.min(t.eval_samples),
        t.seed,
        stream::EVAL,
        "training.eval_batchsize",
    )?;
    let p = &cfg.physical;
    println!("config      {}", cfg.source.display());
    println!(
        "physics     Nd = {}, L = {} ({} sites), m² = {}, λ = {}",
        p.nd,
        p.l,
        flow.lattice.volume(),
        p.m2,
        p.lam
    );
    println!(
        "model       {} coupling layers, channels {:?}, kernel {}^{}, final tanh {}: {} parameters",
        flow.n_layers,
        flow.channels(),
        flow.kernel_size,
        p.nd,
        flow.final_tanh,
        flow.n_params()
    );
    let variant = flow.variant();
    if !variant.is_empty() {
        println!("variant     {variant}");
    }
    println!("prior       {}", t.prior.julia());
    println!(
        "training    {} epochs x {} steps, batch {}, Adam lr {} (schedule {:?}), seed {}",
        t.epochs,
        t.iterations,
        t.batchsize,
        cfg.lr(1),
        t.lr_scheduler.julia(),
        t.seed
    );
    println!(
        "evaluation  {} proposals per epoch in batches of {}",
        t.eval_samples,
        t.eval_batchsize.min(t.eval_samples)
    );
    println!(
        "work        {:.3} GFLOP per training step (forward + backward convolutions)",
        3.0 * 2.0 * (flow.macs_per_sample() * t.batchsize) as f64 / 1e9
    );
    println!(
        "step        {} dispatches in one submit ({})",
        tape.step_dispatches().len(),
        match tape.exec.first() {
            None => "no coupling layers",
            Some(e) => e.describe(),
        }
    );
    println!(
        "precision   activations and their gradients {} ({} of the training tape's); sums, \
         log q, the action, weights and Adam f32",
        cfg.precision.name(),
        mib(tape.activation_bytes)
    );
    println!("buffers     training tape {}:", mib(tape.memory_bytes()));
    // Per-layer buffers grouped: "h[*][0] x16" (the first index is the layer).
    let mut groups: Vec<(String, usize, u64)> = Vec::new();
    for (label, bytes) in &tape.buffers {
        let key = match (label.find('['), label.find(']')) {
            (Some(a), Some(b)) if label[a + 1..b].chars().all(|c| c.is_ascii_digit()) => {
                format!("{}[*]{}", &label[..a], &label[b + 1..])
            }
            _ => label.clone(),
        };
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => {
                g.1 += 1;
                g.2 += bytes;
            }
            None => groups.push((key, 1, *bytes)),
        }
    }
    for (key, n, bytes) in groups {
        if bytes >= 1 << 16 {
            let count = if n > 1 {
                format!(" x{n}")
            } else {
                String::new()
            };
            println!("              {:<30} {}", key + &count, mib(bytes));
        }
    }
    println!(
        "            evaluation tape {}; smaller buffers not listed",
        mib(eval.tape.memory_bytes())
    );
    println!(
        "total       {} on the GPU",
        mib(tape.memory_bytes() + eval.tape.memory_bytes())
    );
    println!("adapter     {}", gpu.describe());
    println!("run dir     {}", out.display());
    Ok(())
}

/// Returns the process exit code.
pub fn run(args: TrainArgs) -> Result<u8> {
    let mut cfg = Config::load(&args.config)?;
    let gpu = Gpu::new(&AdapterChoice::new(args.adapter.as_deref(), cfg.device_id))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_run_dir(&args.config));
    // A resumed run continues in the precision it recorded unless --precision says otherwise.
    let recorded = (args.resume)
        .then(|| Config::load(&out.join("config.toml")).ok())
        .flatten()
        .map(|c| c.precision);
    super::set_precision(&mut cfg, args.precision.or(recorded), &gpu);
    if args.dry_run {
        // The tilings the run would use (measured now if --tune asks for it).
        let train_spec = TapeSpec::training(&cfg);
        let eval_spec = TapeSpec {
            batch: cfg.training.eval_batchsize.min(cfg.training.eval_samples),
            mode: crate::tape::Mode::Infer,
            ..train_spec.clone()
        };
        let tuner = tune::choose(&gpu, args.tune, &[train_spec, eval_spec], None)?;
        dry_run(&gpu, &cfg, &out)?;
        println!(
            "tilings     convolution kernels (--tune {}):",
            args.tune.key()
        );
        for line in tuner.describe() {
            println!("              {line}");
        }
        return Ok(0);
    }
    // Ctrl-C: finish the step in flight, save a checkpoint, exit.
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            // A second Ctrl-C: the user insists.
            std::process::exit(130);
        }
    });
    let outcome = train(
        &gpu,
        &cfg,
        &TrainOptions {
            out: out.clone(),
            resume: args.resume,
            epochs: args.epochs,
            tune: args.tune,
        },
        &interrupt,
    )?;
    match outcome {
        Outcome::Interrupted { step } => {
            eprintln!(
                "interrupted at step {step}: checkpoint saved in {}; continue with\n  \
                 gomaflow-wgpu train {} --out {} --resume",
                out.display(),
                args.config.display(),
                out.display()
            );
            Ok(130)
        }
        Outcome::Finished {
            last,
            final_eval,
            train_s,
        } => {
            let v = FlowSpec::from_config(&cfg).lattice.volume() as f64;
            println!("trained in {train_s:.1} s on {}", gpu.describe());
            if let Some(r) = last {
                println!(
                    "last epoch {}: loss {:.4}, ESS {:.4}, acceptance {:.4}",
                    r.epoch, r.loss, r.ess, r.acceptance_rate
                );
            }
            println!(
                "final evaluation on {} fresh proposals: loss {:.4} ± {:.4} (per site {:.5}), \
                 ESS per sample {:.4}, MH acceptance {:.4}",
                final_eval.samples,
                final_eval.loss,
                final_eval.loss_std_err,
                final_eval.loss / v,
                final_eval.ess,
                final_eval.acceptance
            );
            println!(
                "run directory {}: config.toml, evaluations.csv, history.png, \
                 checkpoint.safetensors, best.safetensors, summary.json, tilings.json",
                out.display()
            );
            Ok(0)
        }
    }
}
