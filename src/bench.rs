//! The benchmark: the training step of a config (median wall time of one submitted and completed
//! step), each kernel of that step timed alone with GPU timestamps (GFLOP/s and GB/s from the
//! kernels' work models), proposals per second, and the planned memory.

use crate::config::Config;
use crate::flow::FlowSpec;
use crate::gpu::Gpu;
use crate::gpu::timing::median;
use crate::proposals::Proposer;
use crate::rng::stream;
use crate::tape::{Fusion, Mode, Tape, TapeSpec};
use crate::tune::{self, TuneMode};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Serialize, Debug, Clone)]
pub struct KernelRow {
    /// The kernel with its specialisation, e.g. `conv.forward[CIN=8,COUT=8,TAPS=9,WG=64,...]`.
    pub name: String,
    /// Launches per training step.
    pub calls: usize,
    /// Median seconds of one launch.
    pub median_s: f64,
    /// Seconds per training step (calls x median).
    pub step_s: f64,
    pub gflops: f64,
    pub gbs: f64,
}

#[derive(Serialize, Debug, Clone)]
pub struct BenchReport {
    pub adapter: String,
    pub backend: String,
    pub device_type: String,
    pub timestamps: bool,
    pub config: String,
    pub nd: usize,
    pub l: usize,
    pub batch: usize,
    pub parameters: usize,
    /// Median seconds of one training step, submitted and waited for alone.
    pub train_step_s: f64,
    /// Seconds per step when steps are queued back to back as training does.
    pub train_step_pipelined_s: f64,
    pub dispatches_per_step: usize,
    /// Whether the coupling layers ran as whole-layer dispatches (`--fusion`).
    pub fused_layers: bool,
    /// Useful GFLOP of the convolutions of one step (forward and both backwards).
    pub step_gflop: f64,
    /// Proposals per second at `sample_batch` (`None` with `--step-only`).
    pub sample_per_s: Option<f64>,
    pub sample_batch: usize,
    pub memory_bytes: u64,
    /// The storage of the activations ("f32" or "f16") and the training tape's bytes of them.
    pub precision: String,
    pub activation_bytes: u64,
    /// Sum of the kernels timed alone (the step minus launch and barrier overhead).
    pub kernels_sum_s: f64,
    pub kernels: Vec<KernelRow>,
    /// Seconds spent measuring tilings (`--tune`), and each convolution's tiling and where
    /// it came from.
    pub tuning_s: f64,
    pub tilings: Vec<String>,
}

/// About how long the sampling rate is measured for.
const SAMPLE_SECONDS: f64 = 10.0;

pub struct BenchOptions {
    pub steps: usize,
    pub reps: usize,
    pub sample_batch: usize,
    /// At most this many batches after the warm-up one (fewer where they would pass 10 s).
    pub sample_batches: usize,
    /// Whole coupling layers as single dispatches (`TapeSpec::fusion`).
    pub fusion: Fusion,
    /// How the convolutions' tilings are chosen (`crate::tune`).
    pub tune: TuneMode,
    /// Time the training step only (the kernel table stays empty, the sampling rate `None`).
    pub step_only: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            steps: 20,
            reps: 5,
            sample_batch: 1024,
            sample_batches: 4,
            fusion: Fusion::Auto,
            tune: TuneMode::Off,
            step_only: false,
        }
    }
}

pub fn run(gpu: &Gpu, cfg: &Config, name: &str, o: &BenchOptions) -> Result<BenchReport> {
    let flow = FlowSpec::from_config(cfg);
    let t = &cfg.training;
    let params = gpu.upload_params(&flow.init_params(cfg.model.seed))?;
    let counter = gpu.upload("step counter", &[0u32; 4])?;
    let train_spec = TapeSpec {
        // Tiny steps keep the weights near their start while we time them.
        lr: 1e-7,
        fusion: o.fusion,
        ..TapeSpec::training(cfg)
    };
    let sample_spec = TapeSpec {
        batch: o.sample_batch,
        seed: t.seed,
        stream: stream::SAMPLE,
        lr: 0.0,
        mode: Mode::Infer,
        ..train_spec.clone()
    };
    let tuner = tune::choose(
        gpu,
        o.tune,
        &[train_spec.clone(), sample_spec.clone()],
        None,
    )?;
    let tape = Tape::new(gpu, train_spec, &params, &counter)
        .with_context(|| cfg.sizes("training.batchsize", cfg.training.batchsize))?;
    // Warm up: pipelines compiled, caches filled.
    for _ in 0..3 {
        tape.submit_step(gpu);
    }
    gpu.wait()?;
    let mut step_times = Vec::with_capacity(o.steps);
    for _ in 0..o.steps {
        let s = Instant::now();
        tape.submit_step(gpu);
        gpu.wait()?;
        step_times.push(s.elapsed().as_secs_f64());
    }
    let s = Instant::now();
    for i in 0..o.steps {
        tape.submit_step(gpu);
        if i % 10 == 9 {
            gpu.wait()?;
        }
    }
    gpu.wait()?;
    let pipelined = s.elapsed().as_secs_f64() / o.steps as f64;

    // Each kernel alone, in step order.
    let dispatches = tape.step_dispatches();
    let times = if o.step_only {
        vec![]
    } else {
        gpu.time_dispatches(&dispatches, o.reps)?
    };
    let mut groups: BTreeMap<String, (usize, Vec<f64>, f64, f64)> = BTreeMap::new();
    for (d, t) in dispatches.iter().zip(&times) {
        let e = groups
            .entry(d.label.clone())
            .or_insert((0, vec![], d.work.flops, d.work.bytes));
        e.0 += 1;
        e.1.push(*t);
    }
    let mut kernels: Vec<KernelRow> = groups
        .into_iter()
        .map(|(name, (calls, ts, flops, bytes))| {
            let m = median(ts);
            KernelRow {
                name,
                calls,
                median_s: m,
                step_s: m * calls as f64,
                gflops: flops / m / 1e9,
                gbs: bytes / m / 1e9,
            }
        })
        .collect();
    kernels.sort_by(|a, b| b.step_s.total_cmp(&a.step_s));
    let kernels_sum_s = times.iter().sum();

    // Proposals per second at the sampling batch (its tape is built either way: its memory
    // counts).
    let proposer = Proposer::from_spec(gpu, sample_spec, &params)
        .with_context(|| cfg.sizes("--batch", o.sample_batch))?;
    let sample_per_s = if o.step_only {
        None
    } else {
        Some(sample_rate(
            gpu,
            &proposer,
            o.sample_batch,
            o.sample_batches,
        )?)
    };

    let info = &gpu.info;
    Ok(BenchReport {
        adapter: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        timestamps: gpu.has_timestamps(),
        config: name.to_string(),
        nd: flow.lattice.nd,
        l: flow.lattice.l,
        batch: t.batchsize,
        parameters: flow.n_params(),
        train_step_s: median(step_times),
        train_step_pipelined_s: pipelined,
        dispatches_per_step: dispatches.len(),
        fused_layers: tape.fused_layers(),
        step_gflop: 3.0 * 2.0 * (flow.macs_per_sample() * t.batchsize) as f64 / 1e9,
        sample_per_s,
        sample_batch: o.sample_batch,
        memory_bytes: tape.memory_bytes() + proposer.tape.memory_bytes(),
        precision: tape.spec.precision.name().into(),
        activation_bytes: tape.activation_bytes,
        kernels_sum_s,
        kernels,
        tuning_s: tuner.spent.as_secs_f64(),
        tilings: tuner.describe(),
    })
}

/// Proposals per second of a sampling tape at `batch`: a warm-up batch, then as many of at
/// most `batches` as fit in about 10 s; where one batch already takes longer (large lattices on
/// a CPU adapter), the warm-up is the measurement.
fn sample_rate(gpu: &Gpu, proposer: &Proposer, batch: usize, batches: usize) -> Result<f64> {
    let s = Instant::now();
    proposer.draw(gpu, 0, batch, false, |_| {})?;
    let first = s.elapsed().as_secs_f64();
    Ok(if first > SAMPLE_SECONDS {
        batch as f64 / first
    } else {
        let batches = ((SAMPLE_SECONDS / first) as usize).clamp(1, batches);
        let n = batch * batches;
        let s = Instant::now();
        proposer.draw(gpu, 1, n, false, |_| {})?;
        n as f64 / s.elapsed().as_secs_f64()
    })
}

/// The human-readable table.
pub fn print(r: &BenchReport) {
    println!(
        "{} ({}, {}), timestamps {}",
        r.adapter, r.backend, r.device_type, r.timestamps
    );
    println!(
        "config {}: Nd = {}, L = {}, batch {}, {} parameters, {} dispatches per step ({})",
        r.config,
        r.nd,
        r.l,
        r.batch,
        r.parameters,
        r.dispatches_per_step,
        if r.fused_layers {
            "whole coupling layers"
        } else {
            "one per kernel"
        }
    );
    println!(
        "training step {:.3} ms (alone), {:.3} ms (pipelined); {:.3} GFLOP -> {:.2} GFLOP/s",
        r.train_step_s * 1e3,
        r.train_step_pipelined_s * 1e3,
        r.step_gflop,
        r.step_gflop / r.train_step_s
    );
    let memory = format!(
        "planned memory {:.2} MiB, of which training activations {:.2} MiB ({})",
        r.memory_bytes as f64 / (1 << 20) as f64,
        r.activation_bytes as f64 / (1 << 20) as f64,
        r.precision
    );
    match r.sample_per_s {
        Some(rate) => println!(
            "sampling {rate:.0} proposals/s (batch {}); {memory}",
            r.sample_batch
        ),
        None => println!("{memory}"),
    }
    if !r.kernels.is_empty() {
        println!(
            "kernels timed alone sum to {:.3} ms per step:",
            r.kernels_sum_s * 1e3
        );
        println!(
            "  {:>9} {:>6} {:>10} {:>8} {:>8}  kernel",
            "ms/step", "calls", "us/call", "GFLOP/s", "GB/s"
        );
    }
    for k in &r.kernels {
        println!(
            "  {:>9.3} {:>6} {:>10.1} {:>8.2} {:>8.2}  {}",
            k.step_s * 1e3,
            k.calls,
            k.median_s * 1e6,
            k.gflops,
            k.gbs,
            k.name
        );
    }
    println!(
        "convolution tilings (tuning took {:.1} s; µs: the kernels a tiling changes, per call):",
        r.tuning_s
    );
    for t in &r.tilings {
        println!("  {t}");
    }
}
