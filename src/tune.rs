//! Tilings chosen by measurement on the adapter at hand (`--tune`). The fixed rules of
//! `kernels::tiling` were measured on one machine, and the best tiling of a convolution differs
//! per kernel and per adapter, sometimes in opposite directions. So for every convolution
//! shape of a tape the tuner times a few candidate tilings (`ConvCandidates`) with timestamp
//! queries, after a warm-up run, and keeps the fastest; the choice goes to a cache in the
//! user's cache directory keyed by the adapter, its driver and (for a CPU adapter) the CPU, so
//! the next run measures nothing. A run directory records the tiling every kernel used
//! (`tilings.json`), and `--resume` uses those, so a resumed run is bit-identical to an
//! uninterrupted one whatever the cache holds by then.
//!
//! The search is coordinate-wise, as the kernel entries split the parameters: samples per
//! thread on forward + backward_input, then (taps, output channels) per weight-gradient
//! thread at the rule's chunking, then the chunking, on backward_weight + its reduction. A
//! candidate replaces the rule's choice only if it is at least `MIN_GAIN` faster, so noise
//! does not trade a rule for an equal tiling.

use crate::files::write_atomic;
use crate::gpu::timing::median;
use crate::gpu::{Gpu, Precision};
use crate::kernels::LatticeBuffers;
use crate::kernels::conv::{Conv, ConvBuffers, ConvGrads, ConvSpec, InputGrad};
use crate::kernels::tiling::{ConvCandidates, ConvTiling};
use crate::tape::{Fusion, Mode, Tape, TapeSpec, can_fuse, conv_specs};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `--tune`: how the convolutions' tilings are chosen.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TuneMode {
    /// The fixed rules per adapter kind (`kernels::tiling`), measured on one machine.
    #[default]
    Off,
    /// The cached choice for this adapter where there is one; measure the rest.
    Auto,
    /// Measure every kernel again and refresh the cache.
    Full,
}

impl TuneMode {
    /// The command line's spelling.
    pub fn key(self) -> &'static str {
        match self {
            TuneMode::Off => "off",
            TuneMode::Auto => "auto",
            TuneMode::Full => "full",
        }
    }
}

/// Where a kernel's tiling came from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The fixed rule.
    Rule,
    /// Timed in this run.
    Measured,
    /// Timed in an earlier run on this adapter (the cache).
    Cached,
    /// Read from the run directory being resumed.
    Recorded,
}

impl Source {
    pub fn word(self) -> &'static str {
        match self {
            Source::Rule => "rule",
            Source::Measured => "measured",
            Source::Cached => "cached",
            Source::Recorded => "recorded",
        }
    }
}

/// One kernel's tiling and, where measured, the step time (µs) of the rule's and of the
/// chosen tiling.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Choice {
    pub tiling: ConvTiling,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_us: Option<f64>,
}

/// Whole layers or one launch per kernel for one `Fusion::Auto` tape (`TapeSpec::fusion_key`),
/// and, where measured, the step time (ms) of the rule's choice and of the chosen one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FusionChoice {
    pub whole_layers: bool,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_ms: Option<f64>,
}

/// What a run directory records in `tilings.json`, by kernel and by tape.
#[derive(Serialize, Deserialize, Default, Debug)]
pub struct Record {
    pub convolutions: BTreeMap<String, Choice>,
    #[serde(default)]
    pub fusion: BTreeMap<String, FusionChoice>,
}

/// A candidate must beat the rule's time by this fraction to replace it.
const MIN_GAIN: f64 = 0.03;
/// Timed repetitions of each candidate (the median is kept), after one warm-up run; one for
/// kernels whose warm-up run took longer than `LONG`.
const REPS: usize = 3;
const LONG: Duration = Duration::from_millis(50);
/// Measuring stops once this much time has gone (the remaining kernels keep the rule and are
/// not cached, so a later run measures them).
const BUDGET: Duration = Duration::from_secs(300);
/// The cache file's format version; another version is ignored (4: choices made with 4-site
/// forward and backward_input candidates, `ConvTiling::forward_sites`).
const CACHE_VERSION: u32 = 4;

#[derive(Serialize, Deserialize, Default)]
struct CacheFile {
    version: u32,
    /// "adapter | kernel" -> choice.
    entries: BTreeMap<String, Choice>,
    /// "adapter | tape" -> whole layers or per kernel.
    #[serde(default)]
    fusion: BTreeMap<String, FusionChoice>,
}

/// The tiling cache: `$GOMAFLOW_CACHE_DIR/tilings.json`, or `tilings.json` in the user's cache
/// directory (`~/.cache/gomaflow-wgpu` on Linux).
pub fn cache_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("GOMAFLOW_CACHE_DIR") {
        return Some(PathBuf::from(dir).join("tilings.json"));
    }
    directories::ProjectDirs::from("", "", "gomaflow-wgpu")
        .map(|d| d.cache_dir().join("tilings.json"))
}

/// What the best tiling depends on besides the kernel's shape: the adapter, its backend and
/// driver, and for a CPU adapter (whose compiler targets the host) the CPU's model and the
/// vector extensions it has.
pub fn adapter_key(gpu: &Gpu) -> String {
    let i = &gpu.info;
    let mut key = format!(
        "{} ({:?}, driver {} {})",
        i.name, i.backend, i.driver, i.driver_info
    );
    if gpu.is_software() {
        key.push_str(" on ");
        key.push_str(&cpu_signature());
    }
    key
}

/// The CPU's model name, family and model, and the vector extensions lavapipe's compiler
/// uses (from /proc/cpuinfo on Linux; the architecture elsewhere).
pub fn cpu_signature() -> String {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return std::env::consts::ARCH.to_string();
    };
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let flags = field("flags");
    let ext: Vec<&str> = ["avx512f", "avx2", "fma", "neon", "asimd"]
        .into_iter()
        .filter(|e| flags.split_whitespace().any(|f| f == *e))
        .collect();
    format!(
        "{} (family {} model {}; {})",
        field("model name"),
        field("cpu family"),
        field("model"),
        ext.join(" ")
    )
}

/// Chooses tilings for tapes on one adapter and installs them there (`Gpu::set_conv_tiling`),
/// where `Tape::new` finds them.
pub struct Tuner<'g> {
    gpu: &'g Gpu,
    mode: TuneMode,
    adapter: String,
    cache_path: Option<PathBuf>,
    cache: CacheFile,
    cache_dirty: bool,
    /// Every kernel's choice so far, by kernel key.
    pub choices: BTreeMap<String, Choice>,
    /// Every `Fusion::Auto` tape's choice so far, by `TapeSpec::fusion_key`.
    pub fusion: BTreeMap<String, FusionChoice>,
    /// Seconds spent measuring.
    pub spent: Duration,
    /// Warnings for the user (an unreadable cache).
    pub warnings: Vec<String>,
}

impl<'g> Tuner<'g> {
    /// A tuner with the user's cache (`cache_path`).
    pub fn new(gpu: &'g Gpu, mode: TuneMode) -> Tuner<'g> {
        Self::with_cache(gpu, mode, cache_path())
    }

    /// A tuner whose cache is the file `cache_path` (none: nothing is cached).
    pub fn with_cache(gpu: &'g Gpu, mode: TuneMode, cache_path: Option<PathBuf>) -> Tuner<'g> {
        let mut warnings = vec![];
        let cache = match (&cache_path, mode) {
            (Some(p), TuneMode::Auto) if p.exists() => match read_cache(p) {
                Ok(c) => c,
                Err(e) => {
                    warnings.push(format!(
                        "ignoring the tiling cache {}: {e:#}; it will be rewritten",
                        p.display()
                    ));
                    CacheFile::default()
                }
            },
            // Full re-measures, but keeps the other adapters' entries.
            (Some(p), TuneMode::Full) if p.exists() => read_cache(p).unwrap_or_default(),
            _ => CacheFile::default(),
        };
        Tuner {
            gpu,
            mode,
            adapter: adapter_key(gpu),
            cache_path,
            cache,
            cache_dirty: false,
            choices: BTreeMap::new(),
            fusion: BTreeMap::new(),
            spent: Duration::ZERO,
            warnings,
        }
    }

    /// Use the tilings a run directory recorded (`record`), for a resumed run. A run directory
    /// without the file was trained with the rules, and keeps them.
    pub fn resume(&mut self, path: &Path) -> Result<()> {
        if !path.exists() {
            self.mode = TuneMode::Off;
            return Ok(());
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let recorded: Record = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a tiling record of this tool (delete it to resume with the rules)",
                path.display()
            )
        })?;
        for (key, f) in recorded.fusion {
            self.gpu.set_fusion_choice(&key, f.whole_layers);
            self.fusion.insert(
                key,
                FusionChoice {
                    source: Source::Recorded,
                    ..f
                },
            );
        }
        for (key, c) in recorded.convolutions {
            self.gpu.set_conv_tiling(&key, c.tiling);
            self.choices.insert(
                key,
                Choice {
                    source: Source::Recorded,
                    ..c
                },
            );
        }
        // Kernels the record lacks keep the rule, as they had.
        self.mode = TuneMode::Off;
        Ok(())
    }

    /// Choose a tiling for every convolution `spec`'s tape runs per kernel, calling
    /// `progress(done, total, kernel)` before each measurement.
    pub fn prepare(
        &mut self,
        spec: &TapeSpec,
        progress: &mut dyn FnMut(usize, usize, &str),
    ) -> Result<()> {
        let train = spec.mode == Mode::Train;
        // Whole layers or per kernel first: it decides which convolutions run per kernel.
        self.prepare_fusion(spec, progress)?;
        let specs = conv_specs(self.gpu, spec);
        let mut todo = vec![];
        for s in specs {
            let key = s.tune_key();
            if self.choices.contains_key(&key) {
                continue;
            }
            let cache_key = format!("{} | {key}", self.adapter);
            let cached = self.cache.entries.get(&cache_key).cloned();
            match (self.mode, cached) {
                (TuneMode::Off, _) => self.keep_rule(&key, s.tiling),
                (TuneMode::Auto, Some(c)) if Conv::tiling_valid(&s, &c.tiling) => {
                    self.gpu.set_conv_tiling(&key, c.tiling);
                    self.choices.insert(
                        key,
                        Choice {
                            source: Source::Cached,
                            ..c
                        },
                    );
                }
                _ => todo.push(s),
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let lattice = LatticeBuffers::new(self.gpu, spec.flow.lattice, &spec.flow.tap_sets())?;
        let total = todo.len();
        for (i, s) in todo.into_iter().enumerate() {
            let key = s.tune_key();
            if self.spent >= BUDGET {
                self.keep_rule(&key, s.tiling);
                continue;
            }
            progress(i, total, &key);
            let t0 = Instant::now();
            let (tiling, rule_s, best_s) =
                measure(self.gpu, &lattice, &s, train).with_context(|| format!("tuning {key}"))?;
            self.spent += t0.elapsed();
            let c = Choice {
                tiling,
                source: Source::Measured,
                rule_us: Some(rule_s * 1e6),
                best_us: Some(best_s * 1e6),
            };
            self.gpu.set_conv_tiling(&key, tiling);
            self.cache
                .entries
                .insert(format!("{} | {key}", self.adapter), c.clone());
            self.cache_dirty = true;
            self.choices.insert(key, c);
        }
        progress(total, total, "");
        Ok(())
    }

    /// For a `Fusion::Auto` tape some of whose layers could run whole: whole layers or one
    /// launch per kernel, recorded, cached or measured (both tapes timed step by step,
    /// alternately; the rule's choice changes only for a gain of `MIN_GAIN`).
    fn prepare_fusion(
        &mut self,
        spec: &TapeSpec,
        progress: &mut dyn FnMut(usize, usize, &str),
    ) -> Result<()> {
        let key = spec.fusion_key();
        if spec.fusion != Fusion::Auto
            || self.fusion.contains_key(&key)
            || !can_fuse(self.gpu, spec)
        {
            return Ok(());
        }
        let rule = Fusion::auto_rule(self.gpu, spec);
        let cache_key = format!("{} | {key}", self.adapter);
        let cached = self.cache.fusion.get(&cache_key).cloned();
        let by_rule = FusionChoice {
            whole_layers: rule,
            source: Source::Rule,
            rule_ms: None,
            best_ms: None,
        };
        let choice = match (self.mode, cached) {
            (TuneMode::Off, _) => by_rule,
            (TuneMode::Auto, Some(c)) => FusionChoice {
                source: Source::Cached,
                ..c
            },
            _ if self.spent >= BUDGET => by_rule,
            _ => {
                progress(0, 1, &format!("whole layers or per kernel: {key}"));
                let t0 = Instant::now();
                let (whole_s, split_s) = measure_fusion(self.gpu, spec)
                    .with_context(|| format!("tuning whole layers for the {key}"))?;
                self.spent += t0.elapsed();
                let (rule_s, other_s) = if rule {
                    (whole_s, split_s)
                } else {
                    (split_s, whole_s)
                };
                let switch = other_s < rule_s * (1.0 - MIN_GAIN);
                let c = FusionChoice {
                    whole_layers: rule != switch,
                    source: Source::Measured,
                    rule_ms: Some(rule_s * 1e3),
                    best_ms: Some(if switch { other_s } else { rule_s } * 1e3),
                };
                self.cache.fusion.insert(cache_key, c.clone());
                self.cache_dirty = true;
                c
            }
        };
        if choice.source != Source::Rule {
            self.gpu.set_fusion_choice(&key, choice.whole_layers);
        }
        self.fusion.insert(key, choice);
        Ok(())
    }

    /// The rule's tiling for `key`, recorded as such (nothing installed: the rule applies).
    fn keep_rule(&mut self, key: &str, tiling: ConvTiling) {
        self.choices.insert(
            key.to_string(),
            Choice {
                tiling,
                source: Source::Rule,
                rule_us: None,
                best_us: None,
            },
        );
    }

    /// Write the cache back if anything was measured. A cache that cannot be written costs
    /// only the next run's measurement: a warning, not an error.
    pub fn save_cache(&mut self) {
        if !self.cache_dirty {
            return;
        }
        let Some(path) = &self.cache_path else {
            return;
        };
        self.cache.version = CACHE_VERSION;
        let result = (|| -> Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            write_atomic(path, serde_json::to_string_pretty(&self.cache)?.as_bytes())
        })();
        if let Err(e) = result {
            self.warnings.push(format!(
                "could not write the tiling cache {}: {e:#}",
                path.display()
            ));
        }
        self.cache_dirty = false;
    }

    /// Record every kernel's tiling in a run directory (`resume` reads it back).
    pub fn record(&self, path: &Path) -> Result<()> {
        let r = Record {
            convolutions: self.choices.clone(),
            fusion: self.fusion.clone(),
        };
        write_atomic(path, serde_json::to_string_pretty(&r)?.as_bytes())
    }

    /// One line per tape (whole layers or per kernel) and per kernel (its tiling), and where
    /// each came from.
    pub fn describe(&self) -> Vec<String> {
        let tapes = self.fusion.iter().map(|(k, c)| {
            let times = match (c.rule_ms, c.best_ms) {
                (Some(r), Some(b)) if c.source != Source::Rule => {
                    format!(", {b:.1} ms per step against the rule's {r:.1}")
                }
                _ => String::new(),
            };
            let how = if c.whole_layers {
                "whole layers"
            } else {
                "one launch per kernel"
            };
            format!("{k}: {how} ({}{times})", c.source.word())
        });
        let kernels = self.choices.iter().map(|(k, c)| {
            let t = &c.tiling;
            let times = match (c.rule_us, c.best_us) {
                (Some(r), Some(b)) if c.source != Source::Rule => {
                    format!(", {b:.0} µs against the rule's {r:.0}")
                }
                _ => String::new(),
            };
            let branches = match t.branches_per_thread {
                1 => String::new(),
                q => format!(" x {q} branches"),
            };
            let sites = match t.sites_per_thread {
                1 => String::new(),
                n => format!(" x {n} sites"),
            };
            let fsites = match t.forward_sites {
                1 => String::new(),
                n => format!(" x {n} sites"),
            };
            format!(
                "{k}: {} samples{fsites}/thread, weight gradient {} taps x {} \
                     channels{branches}{sites}/thread, chunks of {} ({}{times})",
                t.samples_per_thread,
                t.taps_per_thread,
                t.couts_per_thread,
                t.chunk,
                c.source.word()
            )
        });
        tapes.chain(kernels).collect()
    }
}

fn read_cache(path: &Path) -> Result<CacheFile> {
    let text = std::fs::read_to_string(path)?;
    let c: CacheFile = serde_json::from_str(&text).context("not a tiling cache")?;
    anyhow::ensure!(
        c.version == CACHE_VERSION,
        "format version {} (this build reads {CACHE_VERSION})",
        c.version
    );
    Ok(c)
}

/// Scratch buffers for timing one convolution: its inputs filled with small values (zeros
/// would let an adapter skip work, and denormals slow some), its outputs written.
struct Scratch {
    params: crate::gpu::GpuBuffer,
    x: crate::gpu::GpuBuffer,
    y: crate::gpu::GpuBuffer,
    hb: crate::gpu::GpuBuffer,
    hb_in: crate::gpu::GpuBuffer,
    gy: crate::gpu::GpuBuffer,
    gx: crate::gpu::GpuBuffer,
    grads: crate::gpu::GpuBuffer,
    partial: crate::gpu::GpuBuffer,
}

fn filled(n: usize, seed: u64) -> Vec<f32> {
    // A small xorshift: values in [-0.5, 0.5).
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

impl Scratch {
    /// Buffers for `s` in its storage types (`ConvSpec::precision`), so that the kernels timed
    /// are the ones the tape runs.
    fn new(gpu: &Gpu, s: &ConvSpec, max_partial: usize) -> Result<Scratch> {
        let d = s.dims;
        let rows = |n: usize, stride: usize| (s.branches - 1) * stride + n;
        let n_in = rows(d.batch * d.cin * d.volume, s.stride_in());
        let n_out = rows(d.batch * d.cout * d.volume, s.stride());
        // Room for the layer's slice read as whole vec4s through a uniform binding.
        let np = s.w_off + s.param_span().div_ceil(4) * 4;
        Ok(Scratch {
            params: gpu.upload_params(&filled(np, 1))?,
            x: gpu.upload_activations("tune x", &filled(n_in, 2), s.in_type())?,
            y: gpu.activations("tune y", n_out, s.precision)?,
            // Sign words are u32 whatever the precision.
            hb: gpu.activations(
                "tune hb",
                n_out,
                if s.signs() {
                    Precision::F32
                } else {
                    s.precision
                },
            )?,
            hb_in: gpu.upload_activations("tune hb_in", &filled(n_in, 3), s.in_type())?,
            gy: gpu.upload_activations("tune gy", &filled(n_out, 4), s.precision)?,
            gx: gpu.activations("tune gx", n_in, s.in_type())?,
            grads: gpu.storage("tune grads", np)?,
            partial: gpu.storage("tune partial", max_partial.max(1))?,
        })
    }
}

/// Seconds per step of `spec`'s tape with whole layers and with one launch per kernel:
/// after a warm-up step each, three rounds alternating between the two, each round enough
/// steps for about 50 ms; the medians.
fn measure_fusion(gpu: &Gpu, spec: &TapeSpec) -> Result<(f64, f64)> {
    let params = gpu.upload_params(&spec.flow.init_params(0))?;
    let tape = |fusion| -> Result<Tape> {
        let counter = gpu.upload("tune counter", &[0u32; 4])?;
        Tape::new(
            gpu,
            TapeSpec {
                fusion,
                lr: 0.0,
                ..spec.clone()
            },
            &params,
            &counter,
        )
    };
    let (whole, split) = (tape(Fusion::On)?, tape(Fusion::Off)?);
    let steps = |t: &Tape, k: usize| -> Result<f64> {
        let s = Instant::now();
        for _ in 0..k {
            t.submit_step(gpu);
        }
        gpu.wait()?;
        Ok(s.elapsed().as_secs_f64() / k as f64)
    };
    let warm = steps(&whole, 1)?.max(steps(&split, 1)?);
    let k = ((0.05 / warm).ceil() as usize).clamp(1, 20);
    let (mut a, mut b) = (vec![], vec![]);
    for _ in 0..3 {
        a.push(steps(&whole, k)?);
        b.push(steps(&split, k)?);
    }
    Ok((median(a), median(b)))
}

/// Time `s` with each candidate; returns the chosen tiling, the rule's time and the chosen
/// one's (seconds per call of the timed kernels).
fn measure(
    gpu: &Gpu,
    lattice: &LatticeBuffers,
    s: &ConvSpec,
    train: bool,
) -> Result<(ConvTiling, f64, f64)> {
    let rule = s.tiling;
    let software = gpu.is_software();
    let cands = ConvCandidates::for_stage(&s.dims, s.taps.row(), s.branches, &rule);
    // The largest scratch of partial sums any candidate needs (the smallest chunk).
    let mut max_partial = s.partial_len();
    if train {
        for &(t, c, _, _) in &cands.weight_blocks {
            for chunk in ConvCandidates::chunks(&s.dims, t, c, software) {
                let mut x = s.clone();
                x.tiling.chunk = chunk;
                max_partial = max_partial.max(x.partial_len());
            }
        }
    }
    let sc = Scratch::new(gpu, s, max_partial)?;
    let time = |t: ConvTiling, weights: bool| -> Result<f64> {
        let mut spec = s.clone();
        spec.tiling = t;
        let conv = Conv::new(
            gpu,
            spec,
            &ConvBuffers {
                lattice,
                params: &sc.params,
                x: &sc.x,
                y: &sc.y,
                hb: (s.branches > 1).then_some(&sc.hb),
                grad: train.then(|| ConvGrads {
                    grads: &sc.grads,
                    gy: &sc.gy,
                    gx: &sc.gx,
                    partial: &sc.partial,
                    hb_in: matches!(s.input_grad, InputGrad::ToBranches(_)).then_some(&sc.hb_in),
                }),
            },
        )?;
        // Samples per thread: forward and backward_input; the rest: the weight gradient and
        // its reduction.
        let ds: Vec<_> = if weights {
            conv.backward.iter().take(2).collect()
        } else {
            std::iter::once(&conv.forward)
                .chain(conv.backward.get(2))
                .collect()
        };
        // The warm-up run, timed by the wall clock: a long kernel is timed once (the
        // confirmation against the rule repeats what matters).
        let warm = Instant::now();
        gpu.run(&ds)?;
        let reps = if warm.elapsed() > LONG { 1 } else { REPS };
        Ok(gpu.time_dispatches(&ds, reps)?.iter().sum())
    };
    let log = std::env::var_os("GOMAFLOW_TUNE_LOG").is_some();
    // Keep `best` unless a candidate beats it by MIN_GAIN.
    let pick = |best: &mut (ConvTiling, f64), t: ConvTiling, secs: f64| {
        if log {
            eprintln!("  {t:?}: {:.0} µs", secs * 1e6);
        }
        if secs < best.1 * (1.0 - MIN_GAIN) {
            *best = (t, secs);
        }
    };
    // A winner other than the rule is timed again, alternating with the rule, and kept only
    // if the medians still differ by MIN_GAIN: a load spike during the rule's first timing
    // must not decide (this machine's speed drifts by 2x between minutes).
    let confirm = |(rule_t, rule_s): (ConvTiling, f64),
                   (best_t, best_s): (ConvTiling, f64),
                   weights: bool|
     -> Result<(ConvTiling, f64, f64)> {
        if best_t == rule_t {
            return Ok((rule_t, rule_s, rule_s));
        }
        let (mut r, mut b) = (vec![rule_s], vec![best_s]);
        for _ in 0..2 {
            r.push(time(rule_t, weights)?);
            b.push(time(best_t, weights)?);
        }
        let (r, b) = (median(r), median(b));
        if log {
            eprintln!(
                "  confirming {best_t:?}: {:.0} µs against the rule's {:.0}",
                b * 1e6,
                r * 1e6
            );
        }
        Ok(if b < r * (1.0 - MIN_GAIN) {
            (best_t, r, b)
        } else {
            (rule_t, r, r)
        })
    };

    let rule_fwd = time(rule, false)?;
    if log {
        eprintln!("{} (rule {rule:?}: {:.0} µs)", s.tune_key(), rule_fwd * 1e6);
    }
    let mut fwd = (rule, rule_fwd);
    for &block in &cands.forward_blocks {
        if block != rule.forward_block() {
            let t = rule.with_forward_block(block);
            pick(&mut fwd, t, time(t, false)?);
        }
    }
    let (nb_t, rule_fwd, best_fwd) = confirm((rule, rule_fwd), fwd, false)?;
    if !train {
        return Ok((nb_t, rule_fwd, best_fwd));
    }
    let rule_w = time(rule, true)?;
    let mut w = (rule, rule_w);
    for &block in &cands.weight_blocks {
        if block != rule.weight_block() {
            let (tpt, cob, _, _) = block;
            let t = ConvTiling {
                chunk: ConvTiling::rule_chunk(&s.dims, tpt, cob, software),
                ..rule.with_weight_block(block)
            };
            pick(&mut w, t, time(t, true)?);
        }
    }
    let (bt, bc) = (w.0.taps_per_thread, w.0.couts_per_thread);
    for chunk in ConvCandidates::chunks(&s.dims, bt, bc, software) {
        if chunk != w.0.chunk {
            let t = ConvTiling { chunk, ..w.0 };
            pick(&mut w, t, time(t, true)?);
        }
    }
    let (w_t, rule_w, best_w) = confirm((rule, rule_w), w, true)?;
    let chosen = w_t.with_forward_block(nb_t.forward_block());
    Ok((chosen, rule_fwd + rule_w, best_fwd + best_w))
}

/// The tilings of the tapes `specs` on `gpu`, installed there: those `resume` recorded (a
/// resumed run's `tilings.json`), else cached or measured as `mode` says, with a progress bar
/// while measuring. Warnings (an unreadable cache) go to stderr.
pub fn choose<'g>(
    gpu: &'g Gpu,
    mode: TuneMode,
    specs: &[TapeSpec],
    resume: Option<&Path>,
) -> Result<Tuner<'g>> {
    let mut tuner = Tuner::new(gpu, mode);
    if let Some(path) = resume {
        tuner.resume(path)?;
    }
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "tuning [{bar:30}] {pos}/{len} kernels {elapsed}  {msg}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    let mut measured = false;
    for s in specs {
        tuner.prepare(s, &mut |done, total, key| {
            measured = true;
            pb.set_length(total as u64);
            pb.set_position(done as u64);
            pb.set_message(key.to_string());
        })?;
    }
    pb.finish_and_clear();
    if measured {
        eprintln!(
            "tuned {} kernels on {} in {:.1} s{}",
            tuner
                .choices
                .values()
                .filter(|c| c.source == Source::Measured)
                .count(),
            gpu.info.name,
            tuner.spent.as_secs_f64(),
            cache_path().map_or(String::new(), |p| format!(" (cached in {})", p.display()))
        );
    }
    tuner.save_cache();
    for w in &tuner.warnings {
        eprintln!("warning: {w}");
    }
    Ok(tuner)
}
