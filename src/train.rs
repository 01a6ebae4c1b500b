//! The training loop: epochs x iterations steps of one submit each, an evaluation after every
//! epoch (loss, ESS and MH acceptance on fresh proposals), `evaluations.csv`, plots, and
//! checkpoints that let `--resume` continue bit for bit after a kill.

use crate::checkpoint::{self, Checkpoint};
use crate::config::Config;
use crate::files::{ensure_dir, write_atomic};
use crate::flow::FlowSpec;
use crate::gpu::{Gpu, GpuBuffer};
use crate::kernels::reduce::{METRICS, reference::ess_per_sample};
use crate::mcmc::MhChain;
use crate::plots::{self, Panel};
use crate::proposals::Proposer;
use crate::rng::Philox;
use crate::rng::stream;
use crate::tape::{Tape, TapeSpec};
use crate::tune::{self, TuneMode};
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Steps between reads of the loss history (the only host-GPU synchronisation of training).
pub const REPORT_EVERY: u64 = 10;

/// Proposals of the evaluation after the last epoch.
pub const FINAL_EVAL_SAMPLES: usize = 16384;

pub struct TrainOptions {
    /// The run directory.
    pub out: PathBuf,
    pub resume: bool,
    /// Overrides training.epochs.
    pub epochs: Option<u64>,
    /// How the convolutions' tilings are chosen (a resumed run uses the ones it recorded).
    pub tune: TuneMode,
}

/// One row of evaluations.csv.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub epoch: u64,
    pub step: u64,
    pub loss: f64,
    pub loss_per_site: f64,
    pub ess: f64,
    pub acceptance_rate: f64,
    pub lr: f64,
    pub elapsed_s: f64,
}

pub const CSV_HEADER: &str = "epoch,step,loss,loss_per_site,ess,acceptance_rate,lr,elapsed_s";

impl Row {
    fn csv(&self) -> String {
        format!(
            "{},{},{:.6},{:.6},{:.6},{:.6},{:e},{:.3}",
            self.epoch,
            self.step,
            self.loss,
            self.loss_per_site,
            self.ess,
            self.acceptance_rate,
            self.lr,
            self.elapsed_s
        )
    }

    fn parse(line: &str) -> Option<Row> {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 8 {
            return None;
        }
        Some(Row {
            epoch: f[0].parse().ok()?,
            step: f[1].parse().ok()?,
            loss: f[2].parse().ok()?,
            loss_per_site: f[3].parse().ok()?,
            ess: f[4].parse().ok()?,
            acceptance_rate: f[5].parse().ok()?,
            lr: f[6].parse().ok()?,
            elapsed_s: f[7].parse().ok()?,
        })
    }
}

/// What an evaluation measured on fresh proposals.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub samples: usize,
    pub loss: f64,
    pub loss_std_err: f64,
    pub ess: f64,
    pub acceptance: f64,
}

/// The result of `train`.
pub enum Outcome {
    Finished {
        last: Option<Row>,
        final_eval: Evaluation,
        train_s: f64,
    },
    Interrupted {
        step: u64,
    },
}

/// Measure loss, ESS and MH acceptance on `n` fresh proposals drawn with indices from `first`.
pub fn evaluate(
    gpu: &Gpu,
    proposer: &Proposer,
    first: u32,
    n: usize,
    mh_seed: u64,
    mh_stream: u32,
) -> Result<Evaluation> {
    let p = proposer.draw(gpu, first, n, false, |_| {})?;
    let lw = p.logw();
    let per: Vec<f64> = lw.iter().map(|w| -w).collect();
    let mean = per.iter().sum::<f64>() / n as f64;
    let var = per.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
    let chain = MhChain::run(&lw, &mut Philox::new(mh_seed, mh_stream));
    Ok(Evaluation {
        samples: n,
        loss: mean,
        loss_std_err: (var / n as f64).sqrt(),
        ess: ess_per_sample(&lw),
        acceptance: chain.acceptance(0),
    })
}

/// The parameters a fresh run starts from: `pretrained` weights, or the seeded initialisation.
fn initial_params(cfg: &Config, flow: &FlowSpec) -> Result<Vec<f32>> {
    let pre = cfg.training.pretrained.trim();
    if pre.is_empty() {
        return Ok(flow.init_params(cfg.model.seed));
    }
    let mut path = PathBuf::from(pre);
    if path.is_dir() {
        path = path.join("checkpoint.safetensors");
    }
    let ck = checkpoint::load(&path, flow, false).with_context(|| {
        format!(
            "{}: [training].pretrained = {pre:?} could not be loaded",
            cfg.source.display()
        )
    })?;
    Ok(ck.params)
}

fn read_rows(path: &Path, keep_to_epoch: u64) -> Vec<Row> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(Row::parse)
        .filter(|r| r.epoch <= keep_to_epoch)
        .collect()
}

fn write_rows(path: &Path, rows: &[Row]) -> Result<()> {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in rows {
        s.push_str(&r.csv());
        s.push('\n');
    }
    write_atomic(path, s.as_bytes())
}

fn plot_rows(path: &Path, rows: &[Row]) -> Result<()> {
    let col = |f: fn(&Row) -> f64| rows.iter().map(|r| (r.epoch as f64, f(r))).collect();
    let panel = |title, points| Panel {
        title,
        x_label: "epoch",
        points,
        errors: None,
        reference: None,
    };
    plots::panels(
        path,
        3,
        &[
            panel("loss (reverse KL + log Z)", col(|r| r.loss)),
            panel("loss per site", col(|r| r.loss_per_site)),
            panel("ESS per sample", col(|r| r.ess)),
            panel("MH acceptance", col(|r| r.acceptance_rate)),
            panel("learning rate", col(|r| r.lr)),
            panel("elapsed seconds", col(|r| r.elapsed_s)),
        ],
    )
}

/// The draw index of an epoch's evaluation batches (distinct from every other epoch's).
fn eval_draw(epoch: u64, batches: usize) -> u32 {
    ((epoch - 1) * batches as u64) as u32
}

/// Train `cfg` on `gpu` into `opts.out`. `interrupt` (set by Ctrl-C) stops after the current
/// step with a checkpoint.
pub fn train(
    gpu: &Gpu,
    cfg: &Config,
    opts: &TrainOptions,
    interrupt: &AtomicBool,
) -> Result<Outcome> {
    let flow = FlowSpec::from_config(cfg);
    let t = &cfg.training;
    let dir = &opts.out;
    let ckpt_path = dir.join("checkpoint.safetensors");
    let best_path = dir.join("best.safetensors");
    let csv_path = dir.join("evaluations.csv");
    if opts.resume && !ckpt_path.exists() {
        bail!(
            "--resume: {} holds no checkpoint.safetensors to continue from",
            dir.display()
        );
    }
    if !opts.resume && ckpt_path.exists() {
        bail!(
            "{} already holds a run (checkpoint.safetensors); continue it with --resume, \
             or choose another directory with --out",
            dir.display()
        );
    }
    ensure_dir(dir)?;
    write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;

    let ck = if opts.resume {
        let ck = checkpoint::load(&ckpt_path, &flow, true)?;
        if ck.adam.is_none() {
            bail!(
                "--resume: {} holds no Adam moments for this model, so the run cannot continue \
                 exactly; start a new run with training.pretrained = {:?} instead",
                ckpt_path.display(),
                ckpt_path.display().to_string()
            );
        }
        ck
    } else {
        Checkpoint {
            params: initial_params(cfg, &flow)?,
            adam: None,
            step: 0,
            evaluated_epochs: 0,
            best_acceptance: f64::NEG_INFINITY,
            elapsed_s: 0.0,
        }
    };

    // The kernels' tilings: those the resumed run recorded, else the rules or (`--tune`)
    // measured on this adapter; recorded for a later --resume.
    let eval_batch = t.eval_batchsize.min(t.eval_samples);
    let train_spec = TapeSpec::training(cfg);
    let eval_spec = TapeSpec {
        batch: eval_batch,
        mode: crate::tape::Mode::Infer,
        ..train_spec.clone()
    };
    let tilings_path = dir.join("tilings.json");
    let tuner = tune::choose(
        gpu,
        opts.tune,
        &[train_spec, eval_spec],
        opts.resume.then_some(tilings_path.as_path()),
    )?;
    tuner.record(&tilings_path)?;

    // The model and both tapes, planned once.
    let params = gpu.upload_params(&ck.params)?;
    let counter = gpu.upload("step counter", &[ck.step as u32, 0, 0, 0])?;
    let mut tape = Tape::new(gpu, TapeSpec::training(cfg), &params, &counter)
        .with_context(|| cfg.sizes("training.batchsize", cfg.training.batchsize))?;
    if let Some((m, v)) = &ck.adam {
        gpu.write(tape.adam_m.as_ref().unwrap(), m);
        gpu.write(tape.adam_v.as_ref().unwrap(), v);
    }
    let proposer = Proposer::new(
        gpu,
        cfg,
        &params,
        eval_batch,
        t.seed,
        stream::EVAL,
        "training.eval_batchsize",
    )?;
    let eval_batches = t.eval_samples.div_ceil(eval_batch);
    // Per-step metrics are copied here inside each step's submit and read every REPORT_EVERY.
    let history = gpu.storage("loss history", REPORT_EVERY as usize * METRICS)?;
    gpu.check()?;

    let epochs = opts.epochs.unwrap_or(t.epochs);
    let total = epochs * t.iterations;
    let mut step = ck.step;
    let mut evaluated = ck.evaluated_epochs;
    let mut best = ck.best_acceptance;
    let mut saved_step = ck.step;
    let mut rows = if opts.resume {
        read_rows(&csv_path, evaluated)
    } else {
        vec![]
    };
    let start = Instant::now();
    let elapsed = |s: &Instant| ck.elapsed_s + s.elapsed().as_secs_f64();

    let save = |path: &Path, tape: &Tape, step: u64, evaluated: u64, best: f64| -> Result<()> {
        let c = Checkpoint {
            params: gpu.read(&tape.params)?,
            adam: Some((
                gpu.read(tape.adam_m.as_ref().unwrap())?,
                gpu.read(tape.adam_v.as_ref().unwrap())?,
            )),
            step,
            evaluated_epochs: evaluated,
            best_acceptance: best,
            elapsed_s: elapsed(&start),
        };
        checkpoint::save(path, &flow, &c)
    };

    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} steps {per_sec} ETA {eta}  {msg}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    pb.set_position(step.min(total));
    let say = |pb: &ProgressBar, line: String| {
        if pb.is_hidden() {
            eprintln!("{line}");
        } else {
            pb.println(line);
        }
    };
    say(
        &pb,
        format!(
            "training {} parameters, batch {}, {} epochs x {} steps on {}",
            flow.n_params(),
            t.batchsize,
            epochs,
            t.iterations,
            gpu.describe()
        ),
    );
    let pretrained = t.pretrained.trim();
    if !opts.resume && !pretrained.is_empty() {
        say(
            &pb,
            format!(
                "starting from the weights of {pretrained} ([training].pretrained; Adam's moments start at zero)"
            ),
        );
    }
    let mut last_acc = rows.last().map(|r| r.acceptance_rate).unwrap_or(f64::NAN);

    while evaluated < epochs {
        let epoch = evaluated + 1;
        let lr = cfg.lr(epoch);
        tape.adam.as_mut().unwrap().set_lr(gpu, lr);
        pb.set_prefix(format!("epoch {epoch}/{epochs}"));
        let end = epoch * t.iterations;
        let mut pending = 0u64;
        while step < end {
            let mut enc = gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("step"),
                });
            tape.record(&mut enc);
            let bytes = (METRICS * 4) as u64;
            enc.copy_buffer_to_buffer(
                &tape.metrics.buffer,
                0,
                &history.buffer,
                pending * bytes,
                bytes,
            );
            gpu.queue.submit([enc.finish()]);
            step += 1;
            pending += 1;
            let stop = interrupt.load(Ordering::SeqCst);
            if pending == REPORT_EVERY || step == end || stop {
                let h: Vec<f32> = gpu.read_range(&history, 0, pending * bytes)?;
                for (i, m) in h.chunks(METRICS).enumerate() {
                    if !m[0].is_finite() {
                        let bad = step - pending + i as u64 + 1;
                        bail!(
                            "training diverged: the loss is {} at step {bad} (epoch {epoch}); \
                             nothing after the last checkpoint was saved ({}, step {}). \
                             Lower training.base_lr or add an lr_scheduler.",
                            m[0],
                            ckpt_path.display(),
                            saved_step
                        );
                    }
                }
                let n = h.len() / METRICS;
                let loss = h.chunks(METRICS).map(|m| m[0] as f64).sum::<f64>() / n as f64;
                let ess = h.chunks(METRICS).map(|m| m[1] as f64).sum::<f64>() / n as f64;
                pb.set_position(step);
                pb.set_message(format!(
                    "loss {loss:.3}  batch ESS {ess:.3}  acceptance {last_acc:.3}"
                ));
                pending = 0;
            }
            if stop {
                gpu.wait()?;
                save(&ckpt_path, &tape, step, evaluated, best)?;
                pb.finish_and_clear();
                return Ok(Outcome::Interrupted { step });
            }
        }

        let ev = evaluate(
            gpu,
            &proposer,
            eval_draw(epoch, eval_batches),
            t.eval_samples,
            t.seed,
            stream::EVAL_MH + epoch as u32,
        )?;
        let v = flow.lattice.volume() as f64;
        let row = Row {
            epoch,
            step,
            loss: ev.loss,
            loss_per_site: ev.loss / v,
            ess: ev.ess,
            acceptance_rate: ev.acceptance,
            lr,
            elapsed_s: elapsed(&start),
        };
        last_acc = ev.acceptance;
        say(
            &pb,
            format!(
                "epoch {epoch:>4}  step {step:>7}  loss {:>10.4} (per site {:>8.5})  ESS {:.4}  acceptance {:.4}  lr {lr:.1e}  {:.1} s",
                row.loss, row.loss_per_site, row.ess, row.acceptance_rate, row.elapsed_s
            ),
        );
        rows.push(row);
        evaluated = epoch;
        // The CSV first: a kill between the two leaves a row that the resume drops and redoes.
        write_rows(&csv_path, &rows)?;
        plot_rows(&dir.join("history.png"), &rows)?;
        if ev.acceptance > best {
            best = ev.acceptance;
            save(&best_path, &tape, step, evaluated, best)?;
        }
        save(&ckpt_path, &tape, step, evaluated, best)?;
        saved_step = step;
    }
    pb.finish_and_clear();
    let train_s = elapsed(&start);

    // The final word on quality: many more fresh proposals than an epoch's evaluation.
    let final_eval = evaluate(
        gpu,
        &proposer,
        0x8000_0000,
        FINAL_EVAL_SAMPLES.max(t.eval_samples),
        t.seed,
        stream::FINAL_EVAL_MH,
    )?;
    let summary = serde_json::json!({
        "adapter": gpu.describe(),
        "parameters": flow.n_params(),
        "steps": step,
        "train_s": train_s,
        "final_evaluation": {
            "samples": final_eval.samples,
            "loss": final_eval.loss,
            "loss_std_err": final_eval.loss_std_err,
            "loss_per_site": final_eval.loss / flow.lattice.volume() as f64,
            "ess_per_sample": final_eval.ess,
            "acceptance": final_eval.acceptance,
        },
    });
    write_atomic(
        &dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(Outcome::Finished {
        last: rows.last().cloned(),
        final_eval,
        train_s,
    })
}

/// Parameters of a run directory's checkpoint, for tests and `sample`.
pub fn run_params(gpu: &Gpu, dir: &Path, cfg: &Config, best: bool) -> Result<GpuBuffer> {
    let flow = FlowSpec::from_config(cfg);
    let path = dir.join(if best {
        "best.safetensors"
    } else {
        "checkpoint.safetensors"
    });
    let ck = checkpoint::load(&path, &flow, true)?;
    gpu.upload_params(&ck.params)
}
