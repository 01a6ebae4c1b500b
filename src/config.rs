//! The configuration: GomalizingFlow.jl's TOML (tables [config], [device], [training],
//! [physical], [model]) accepted unchanged, its Julia-expression strings parsed in the forms its
//! configs use, and every value validated with an error that names the file, the key and what
//! is accepted. Keys this project adds live in the same tables (see README).
//!
//! Reading takes two steps. serde reads the file into one struct per table (`ConfigTable`,
//! `DeviceTable`, `TrainingTable`, `PhysicalTable`, `ModelTable`: each key's spelling, TOML type
//! and GomalizingFlow default; an unknown key or a wrong type is serde's error, named with the
//! file, the key and what the key accepts). Then `validate` applies the rules the physics and
//! the kernels need and parses the Julia expressions, giving `Config`. `to_toml` writes a
//! `Config` back through the same structs.

use crate::flow::{Combi, CombiAct};
use crate::gpu::Precision;
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The prior of the flow's base distribution.
#[derive(Clone, Debug, PartialEq)]
pub enum PriorKind {
    /// i.i.d. normal per site, `Normal{Float32}(mu, sigma)`.
    Normal { mu: f64, sigma: f64 },
    /// GomalizingFlow's one-site density proportional to exp(-m2 x^2 - lam x^4) on [xmin, xmax].
    Potential {
        m2: f64,
        lam: f64,
        xmin: f64,
        xmax: f64,
    },
}

impl PriorKind {
    /// The Julia expression that denotes it (what the resolved config.toml holds).
    pub fn julia(&self) -> String {
        match self {
            PriorKind::Normal { mu, sigma } => format!("Normal{{Float32}}({mu:?}, {sigma:?})"),
            PriorKind::Potential {
                m2,
                lam,
                xmin,
                xmax,
            } => format!(
                "Potential{{Float32}}(; m²={m2:?}, λ={lam:?}, xmin={xmin:?}, xmax={xmax:?})"
            ),
        }
    }
}

/// The learning-rate schedule over epochs (1-based, as GomalizingFlow counts them).
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    Constant,
    /// `Step(lr0, decay, [n1, n2, ...])`: lr0 * decay^i, i = the number of cumulative
    /// boundaries n1, n1+n2, ... below the epoch, at most the list's length.
    Step {
        lr0: f64,
        decay: f64,
        steps: Vec<u64>,
    },
}

impl Schedule {
    pub fn lr(&self, base_lr: f64, epoch: u64) -> f64 {
        match self {
            Schedule::Constant => base_lr,
            Schedule::Step { lr0, decay, steps } => {
                let mut boundary = 0;
                let mut i = 0;
                for s in steps {
                    boundary += s;
                    if boundary < epoch {
                        i += 1;
                    }
                }
                lr0 * decay.powi(i)
            }
        }
    }

    pub fn julia(&self) -> String {
        match self {
            Schedule::Constant => String::new(),
            Schedule::Step { lr0, decay, steps } => format!("Step({lr0:?}, {decay:?}, {steps:?})"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Training {
    pub seed: u64,
    pub batchsize: usize,
    pub epochs: u64,
    pub iterations: u64,
    pub base_lr: f64,
    pub opt: String,
    pub prior: PriorKind,
    pub lr_scheduler: Schedule,
    /// A run directory or checkpoint whose weights initialise the model ("" for none).
    pub pretrained: String,
    /// Ours: fresh proposals drawn for each epoch's evaluation (loss, ESS, MH acceptance).
    pub eval_samples: usize,
    /// Ours: batch of the evaluation's forward passes.
    pub eval_batchsize: usize,
    /// Ours: Adam's beta1 and beta2.
    pub adam_betas: [f64; 2],
}

#[derive(Clone, Debug, PartialEq)]
pub struct Physical {
    pub l: usize,
    pub nd: usize,
    pub m2: f64,
    pub lam: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub seed: u64,
    pub n_layers: usize,
    pub hidden_sizes: Vec<usize>,
    pub kernel_size: usize,
    pub in_c: usize,
    pub out_c: usize,
    pub use_final_tanh: bool,
    pub use_bn: bool,
    /// Ours: symmetrised couplings, an odd flow (`flow::CouplingKind::AffineZ2`).
    pub z2_equivariant: bool,
    /// Ours (`init = "identity"`): the last convolution of each net starts at zero.
    pub identity_init: bool,
    /// Ours (`combi_r`, `combi_activation`): GomalizingFlow's combinational convolutions,
    /// 1 <= r < Nd; None (`combi_r = 0`) for the full convolution.
    pub combi: Option<Combi>,
    /// Ours (`spline_bins`, `spline_bound`): rational-quadratic spline couplings with K bins on
    /// [-B, B] (`flow::CouplingKind::Spline`); 0 bins for the affine coupling.
    pub spline_bins: usize,
    pub spline_bound: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where it was read from (named in every error).
    pub source: PathBuf,
    pub version: String,
    /// GomalizingFlow's device_id: N >= 0 the N-th adapter, -1 the software adapter.
    pub device_id: Option<i64>,
    /// Ours: the storage type of activations and their gradients (f16 where the adapter has
    /// SHADER_F16; `Gpu::precision`).
    pub precision: Precision,
    pub training: Training,
    pub physical: Physical,
    pub model: Model,
}

/// Largest lattice volume L^Nd (the adapter's buffer limits usually bind first).
pub const MAX_SITES: u64 = 1 << 26;

/// Largest channel count a coupling net may use (the kernels keep one accumulator per channel
/// in registers).
pub const MAX_CHANNELS: usize = 128;

/// Every table and its keys (GomalizingFlow's and ours): the fields of the table structs below,
/// as the file spells them (tests/config.rs checks that the two agree).
pub const TABLES: &[(&str, &[&str])] = &[
    ("config", &["version"]),
    ("device", &["device_id", "precision"]),
    (
        "training",
        &[
            "seed",
            "batchsize",
            "epochs",
            "iterations",
            "base_lr",
            "opt",
            "prior",
            "lr_scheduler",
            "pretrained",
            "eval_samples",
            "eval_batchsize",
            "adam_betas",
        ],
    ),
    ("physical", &["L", "Nd", "M2", "lam"]),
    (
        "model",
        &[
            "seed",
            "n_layers",
            "hidden_sizes",
            "kernel_size",
            "inC",
            "outC",
            "use_final_tanh",
            "use_bn",
            "z2_equivariant",
            "init",
            "combi_r",
            "combi_activation",
            "spline_bins",
            "spline_bound",
        ],
    ),
];

/// What a key accepts, as every error about it says.
fn accepted(table: &str, key: &str) -> Option<String> {
    let what = match (table, key) {
        ("config", "version") => "any value (GomalizingFlow's config version, e.g. \"0.1.0\")",
        ("device", "device_id") => {
            "-1 (the software adapter) or the index N >= 0 of an adapter in `gomaflow-wgpu devices`"
        }
        ("device", "precision") => {
            "\"f32\" or \"f16\" (activations stored as f16 where the adapter has SHADER_F16)"
        }
        ("physical", "L") => "the lattice extent, an even integer >= 2",
        ("physical", "Nd") => "the number of dimensions, 1, 2, 3 or 4",
        ("physical", "M2") => "the bare mass squared m², a number",
        ("physical", "lam") => "the quartic coupling λ, a number >= 0",
        ("model", "seed") | ("training", "seed") => "a seed, an integer >= 0",
        ("model", "n_layers") => "the number of coupling layers, 1..=1024",
        ("model", "hidden_sizes") => {
            return Some(format!(
                "a list of channel counts in 1..={MAX_CHANNELS}, e.g. [8, 8]"
            ));
        }
        ("model", "kernel_size") => "an odd kernel size in 1..=15",
        ("model", "inC") => "1",
        ("model", "outC") => "2",
        ("model", "use_final_tanh") | ("model", "use_bn") | ("model", "z2_equivariant") => {
            "true or false"
        }
        ("model", "init") => {
            "\"torch\" (PyTorch's default) or \"identity\" (last convolution zero)"
        }
        ("model", "combi_r") => {
            "0 (the full convolution) or r with 1 <= r < Nd (C(Nd, r) r-dimensional branches)"
        }
        ("model", "spline_bins") => {
            "0 (the affine coupling) or K in 2..=32 (rational-quadratic spline couplings, K bins)"
        }
        ("model", "spline_bound") => "B > 0, a number: the spline covers [-B, B], e.g. 5.0",
        ("model", "combi_activation") => {
            "\"branch\" (mean of the activated branches) or \"last\" (activation of the mean)"
        }
        ("training", "adam_betas") => "[beta1, beta2], each in [0, 1), e.g. [0.9, 0.999]",
        ("training", "batchsize") => "the training batch, an integer in 1..=65535",
        ("training", "epochs") => "the number of epochs, >= 1",
        ("training", "iterations") => "the steps per epoch, >= 1",
        ("training", "base_lr") => "the learning rate, a number > 0",
        ("training", "opt") => "\"Adam\"",
        ("training", "prior") => {
            "a string, \"Normal{Float32}(0.f0, 1.f0)\" or \"Potential{Float32}(; m²=-4f0, λ=8f0)\""
        }
        ("training", "lr_scheduler") => {
            "a string, \"\" (constant) or \"Step(0.001f0, 0.1f0, [200])\""
        }
        ("training", "pretrained") => "a string, a run directory or checkpoint (\"\" for none)",
        ("training", "eval_samples") => "the proposals of each evaluation, an integer >= 1024",
        ("training", "eval_batchsize") => "the evaluation batch, an integer in 1..=65535",
        _ => return None,
    };
    Some(what.to_string())
}

// The file as serde reads and writes it: one struct per table, each key with its spelling in
// the file, its TOML type (integers as TOML holds them, i64, so that `validate` can say what an
// out-of-range value should have been) and GomalizingFlow's default. A missing table takes every
// default; an unknown table or key, or a value of the wrong type, is serde's error.

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct Document {
    #[serde(deserialize_with = "table")]
    config: ConfigTable,
    #[serde(deserialize_with = "table")]
    device: DeviceTable,
    #[serde(deserialize_with = "table")]
    training: TrainingTable,
    #[serde(deserialize_with = "table")]
    physical: PhysicalTable,
    #[serde(deserialize_with = "table")]
    model: ModelTable,
}

/// A table and nothing else (serde's derived structs also take an array, `[[model]]`, as their
/// fields in order).
fn table<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    struct Table<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Table<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a table")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_map(Table(std::marker::PhantomData))
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct ConfigTable {
    /// Any value: a string is kept as it is, anything else as its TOML text.
    version: toml::Value,
}

impl Default for ConfigTable {
    fn default() -> Self {
        ConfigTable {
            version: toml::Value::String("0.1.0".into()),
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct DeviceTable {
    #[serde(skip_serializing_if = "Option::is_none")]
    device_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    precision: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct TrainingTable {
    seed: i64,
    batchsize: i64,
    epochs: i64,
    iterations: i64,
    base_lr: f64,
    opt: String,
    /// A Julia expression (`julia::prior`).
    prior: String,
    /// A Julia expression (`julia::schedule`).
    lr_scheduler: String,
    pretrained: String,
    eval_samples: i64,
    eval_batchsize: i64,
    adam_betas: Vec<f64>,
}

impl Default for TrainingTable {
    fn default() -> Self {
        TrainingTable {
            seed: 12345,
            batchsize: 64,
            epochs: 40,
            iterations: 100,
            base_lr: 1e-3,
            opt: "Adam".into(),
            prior: "Normal{Float32}(0.f0, 1.f0)".into(),
            lr_scheduler: String::new(),
            pretrained: String::new(),
            eval_samples: 8192,
            eval_batchsize: 1024,
            adam_betas: vec![0.9, 0.999],
        }
    }
}

/// No defaults: `validate` names a missing key.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct PhysicalTable {
    #[serde(rename = "L")]
    l: Option<i64>,
    #[serde(rename = "Nd")]
    nd: Option<i64>,
    /// m².
    #[serde(rename = "M2")]
    m2: Option<f64>,
    /// λ.
    lam: Option<f64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct ModelTable {
    seed: i64,
    n_layers: i64,
    hidden_sizes: Vec<i64>,
    kernel_size: i64,
    #[serde(rename = "inC")]
    in_c: i64,
    #[serde(rename = "outC")]
    out_c: i64,
    use_final_tanh: bool,
    use_bn: bool,
    z2_equivariant: bool,
    init: String,
    combi_r: i64,
    combi_activation: String,
    spline_bins: i64,
    spline_bound: f64,
}

impl Default for ModelTable {
    fn default() -> Self {
        ModelTable {
            seed: 2021,
            n_layers: 16,
            hidden_sizes: vec![8, 8],
            kernel_size: 3,
            in_c: 1,
            out_c: 2,
            use_final_tanh: true,
            use_bn: false,
            z2_equivariant: false,
            init: "torch".into(),
            combi_r: 0,
            combi_activation: CombiAct::Branch.key().into(),
            spline_bins: 0,
            spline_bound: 5.0,
        }
    }
}

/// The checks of one table, each error naming file, table and key.
struct Check<'a> {
    file: &'a str,
    table: &'static str,
}

impl Check<'_> {
    fn err(&self, key: &str, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}: [{}].{key} {msg}", self.file, self.table)
    }

    fn what(&self, key: &str) -> String {
        accepted(self.table, key).unwrap_or_default()
    }

    fn required<T>(&self, key: &str, value: Option<T>) -> Result<T> {
        value.ok_or_else(|| {
            anyhow!(
                "{}: missing key [{}].{key} ({})",
                self.file,
                self.table,
                self.what(key)
            )
        })
    }

    /// An integer in [lo, hi].
    fn int_in(&self, key: &str, v: i64, lo: i64, hi: i64) -> Result<i64> {
        if v < lo || v > hi {
            return Err(self.err(key, format!("must be {}, got {v}", self.what(key))));
        }
        Ok(v)
    }

    fn finite(&self, key: &str, v: f64) -> Result<f64> {
        if !v.is_finite() {
            return Err(self.err(key, format!("must be {}, got {v}", self.what(key))));
        }
        Ok(v)
    }
}

impl Document {
    /// The rules the physics and the kernels need, checked table by table ([device],
    /// [physical], [model], [training]); the Julia expressions parsed.
    fn validate(self, path: &Path) -> Result<Config> {
        let file = path.display().to_string();
        let version = match self.config.version {
            toml::Value::String(s) => s,
            v => v.to_string(),
        };
        let (device_id, precision) = self.device.validate(&file)?;
        let physical = self.physical.validate(&file)?;
        let model = self.model.validate(&file)?;
        if let Some(c) = model.combi
            && c.r >= physical.nd
        {
            bail!(
                "{file}: [model].combi_r = {} needs 1 <= r < Nd, and [physical].Nd = {}; accepted: {}",
                c.r,
                physical.nd,
                accepted("model", "combi_r").unwrap_or_default()
            );
        }
        Ok(Config {
            source: path.to_path_buf(),
            version,
            device_id,
            precision,
            physical,
            model,
            training: self.training.validate(&file)?,
        })
    }
}

impl DeviceTable {
    fn validate(self, file: &str) -> Result<(Option<i64>, Precision)> {
        let c = Check {
            file,
            table: "device",
        };
        let id = (self.device_id)
            .map(|id| c.int_in("device_id", id, -1, i64::from(u16::MAX)))
            .transpose()?;
        let precision = match self.precision {
            None => Precision::F32,
            Some(p) => p.parse().map_err(|_| {
                c.err(
                    "precision",
                    format!("must be {}, got {p:?}", c.what("precision")),
                )
            })?,
        };
        Ok((id, precision))
    }
}

impl PhysicalTable {
    fn validate(self, file: &str) -> Result<Physical> {
        let c = Check {
            file,
            table: "physical",
        };
        let nd = c.int_in("Nd", c.required("Nd", self.nd)?, 1, 4)? as usize;
        let l = c.int_in("L", c.required("L", self.l)?, 2, 1 << 16)?;
        if l % 2 != 0 {
            return Err(c.err(
                "L",
                format!(
                    "must be even so that the checkerboard closes across the periodic boundary, got {l}"
                ),
            ));
        }
        let volume = (l as u128).pow(nd as u32);
        if volume > MAX_SITES as u128 {
            return Err(c.err(
                "L",
                format!(
                    "= {l} with Nd = {nd} gives {volume} sites; at most {MAX_SITES} are supported"
                ),
            ));
        }
        let m2 = c.finite("M2", c.required("M2", self.m2)?)?;
        let lam = c.finite("lam", c.required("lam", self.lam)?)?;
        if lam < 0.0 {
            return Err(c.err(
                "lam",
                format!("must be >= 0 (a negative λ leaves the action unbounded below), got {lam}"),
            ));
        }
        if lam == 0.0 && m2 <= 0.0 {
            return Err(c.err(
                "M2",
                format!(
                    "must be > 0 when lam = 0 (the free field needs a positive mass), got {m2}"
                ),
            ));
        }
        Ok(Physical {
            l: l as usize,
            nd,
            m2,
            lam,
        })
    }
}

impl ModelTable {
    fn validate(self, file: &str) -> Result<Model> {
        let c = Check {
            file,
            table: "model",
        };
        let hidden_sizes = self
            .hidden_sizes
            .iter()
            .map(|&h| {
                if (1..=MAX_CHANNELS as i64).contains(&h) {
                    Ok(h as usize)
                } else {
                    Err(c.err(
                        "hidden_sizes",
                        format!("must be {}; got {h}", c.what("hidden_sizes")),
                    ))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let kernel_size = c.int_in("kernel_size", self.kernel_size, 1, 15)?;
        if kernel_size % 2 == 0 {
            return Err(c.err(
                "kernel_size",
                format!("must be odd (a centred periodic window), got {kernel_size}"),
            ));
        }
        if self.in_c != 1 {
            return Err(c.err(
                "inC",
                format!("must be 1 (one real field per site), got {}", self.in_c),
            ));
        }
        if self.out_c != 2 {
            return Err(c.err(
                "outC",
                format!("must be 2 (the coupling's s and t), got {}", self.out_c),
            ));
        }
        if self.use_bn {
            return Err(c.err(
                "use_bn",
                "= true is not supported: batch normalisation makes log q depend on the batch; use false",
            ));
        }
        let identity_init = match self.init.as_str() {
            "torch" => false,
            "identity" => true,
            other => {
                return Err(c.err(
                    "init",
                    format!("= {other:?} is not known; accepted: {}", c.what("init")),
                ));
            }
        };
        let Some(combi_act) = CombiAct::from_key(&self.combi_activation) else {
            return Err(c.err(
                "combi_activation",
                format!(
                    "= {:?} is not known; accepted: {}",
                    self.combi_activation,
                    c.what("combi_activation")
                ),
            ));
        };
        // r < Nd is checked against [physical] (`Document::validate`).
        let combi = match c.int_in("combi_r", self.combi_r, 0, 3)? {
            0 => None,
            r => Some(Combi {
                r: r as usize,
                act: combi_act,
            }),
        };
        if self.spline_bins != 0 {
            c.int_in("spline_bins", self.spline_bins, 2, 32)?;
        }
        let spline_bound = c.finite("spline_bound", self.spline_bound)?;
        if spline_bound <= 0.0 {
            return Err(c.err(
                "spline_bound",
                format!("must be {}, got {spline_bound}", c.what("spline_bound")),
            ));
        }
        if self.spline_bins != 0 && self.z2_equivariant {
            return Err(c.err(
                "spline_bins",
                format!(
                    "= {} needs z2_equivariant = false: spline couplings are not symmetrised",
                    self.spline_bins
                ),
            ));
        }
        Ok(Model {
            seed: c.int_in("seed", self.seed, 0, i64::MAX)? as u64,
            n_layers: c.int_in("n_layers", self.n_layers, 1, 1024)? as usize,
            hidden_sizes,
            kernel_size: kernel_size as usize,
            in_c: 1,
            out_c: 2,
            use_final_tanh: self.use_final_tanh,
            use_bn: false,
            z2_equivariant: self.z2_equivariant,
            identity_init,
            combi,
            spline_bins: self.spline_bins as usize,
            spline_bound,
        })
    }
}

impl TrainingTable {
    fn validate(self, file: &str) -> Result<Training> {
        let c = Check {
            file,
            table: "training",
        };
        if !self.opt.eq_ignore_ascii_case("adam") {
            return Err(c.err(
                "opt",
                format!("= {:?} is not supported; accepted: \"Adam\"", self.opt),
            ));
        }
        let prior = julia::prior(&self.prior).map_err(|e| {
            c.err(
                "prior",
                format!(
                    "= {:?} is not understood ({e}); accepted: \"Normal{{Float32}}(0.f0, 1.f0)\" \
                     or \"Potential{{Float32}}(; m²=-4f0, λ=8f0)\" (optionally with xmin=, xmax=)",
                    self.prior
                ),
            )
        })?;
        let lr_scheduler = julia::schedule(&self.lr_scheduler).map_err(|e| {
            c.err(
                "lr_scheduler",
                format!(
                    "= {:?} is not understood ({e}); accepted: \"\" (constant) or \
                     \"Step(0.001f0, 0.1f0, [200])\" (start, decay, epochs per step)",
                    self.lr_scheduler
                ),
            )
        })?;
        let base_lr = c.finite("base_lr", self.base_lr)?;
        if base_lr <= 0.0 {
            return Err(c.err("base_lr", format!("must be > 0, got {base_lr}")));
        }
        let batchsize = c.int_in("batchsize", self.batchsize, 1, 65535)? as usize;
        let eval_samples = c.int_in("eval_samples", self.eval_samples, 1024, 1 << 24)? as usize;
        let eval_batchsize = c.int_in("eval_batchsize", self.eval_batchsize, 1, 65535)? as usize;
        let adam_betas = match self.adam_betas[..] {
            [b1, b2] if (0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2) => [b1, b2],
            _ => {
                return Err(c.err(
                    "adam_betas",
                    format!(
                        "= {:?} is not accepted; accepted: {}",
                        self.adam_betas,
                        c.what("adam_betas")
                    ),
                ));
            }
        };
        Ok(Training {
            seed: c.int_in("seed", self.seed, 0, i64::MAX)? as u64,
            batchsize,
            epochs: c.int_in("epochs", self.epochs, 1, i64::MAX)? as u64,
            iterations: c.int_in("iterations", self.iterations, 1, i64::MAX)? as u64,
            base_lr,
            opt: "Adam".into(),
            prior,
            lr_scheduler,
            pretrained: self.pretrained,
            eval_samples,
            eval_batchsize,
            adam_betas,
        })
    }
}

impl From<&Config> for Document {
    /// Every key explicit.
    fn from(c: &Config) -> Document {
        let (t, p, m) = (&c.training, &c.physical, &c.model);
        Document {
            config: ConfigTable {
                version: toml::Value::String(c.version.clone()),
            },
            device: DeviceTable {
                device_id: c.device_id,
                // Written only where it is not the default.
                precision: (c.precision != Precision::F32).then(|| c.precision.name().into()),
            },
            training: TrainingTable {
                seed: t.seed as i64,
                batchsize: t.batchsize as i64,
                epochs: t.epochs as i64,
                iterations: t.iterations as i64,
                base_lr: t.base_lr,
                opt: t.opt.clone(),
                prior: t.prior.julia(),
                lr_scheduler: t.lr_scheduler.julia(),
                pretrained: t.pretrained.clone(),
                eval_samples: t.eval_samples as i64,
                eval_batchsize: t.eval_batchsize as i64,
                adam_betas: t.adam_betas.to_vec(),
            },
            physical: PhysicalTable {
                l: Some(p.l as i64),
                nd: Some(p.nd as i64),
                m2: Some(p.m2),
                lam: Some(p.lam),
            },
            model: ModelTable {
                seed: m.seed as i64,
                n_layers: m.n_layers as i64,
                hidden_sizes: m.hidden_sizes.iter().map(|&h| h as i64).collect(),
                kernel_size: m.kernel_size as i64,
                in_c: m.in_c as i64,
                out_c: m.out_c as i64,
                use_final_tanh: m.use_final_tanh,
                use_bn: m.use_bn,
                z2_equivariant: m.z2_equivariant,
                init: if m.identity_init { "identity" } else { "torch" }.into(),
                combi_r: m.combi.map_or(0, |c| c.r as i64),
                combi_activation: m.combi.map_or(CombiAct::Branch, |c| c.act).key().into(),
                spline_bins: m.spline_bins as i64,
                spline_bound: m.spline_bound,
            },
        }
    }
}

/// Where in the file an error points.
enum Place {
    /// `[table].key`.
    Key(String, String),
    /// A top-level table.
    Table(String),
    /// A top-level key whose value is not a table.
    TopKey(String),
}

/// The key (or table) at byte `at` of the file: serde's errors point at the offending key (an
/// unknown one) or value (a wrong type).
fn locate(text: &str, at: usize) -> Option<Place> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let hit = |s: std::ops::Range<usize>| s.contains(&at) || s.start == at;
    for (name, value) in doc.get_ref().iter() {
        if let Some(t) = value.get_ref().as_table() {
            for (k, v) in t.iter() {
                if hit(k.span()) || hit(v.span()) {
                    return Some(Place::Key(
                        name.get_ref().to_string(),
                        k.get_ref().to_string(),
                    ));
                }
            }
        }
    }
    for (name, value) in doc.get_ref().iter() {
        if hit(name.span()) || hit(value.span()) {
            let name = name.get_ref().to_string();
            return Some(match value.get_ref().as_table() {
                Some(_) => Place::Table(name),
                None => Place::TopKey(name),
            });
        }
    }
    None
}

/// serde's error (an unknown table or key, a value of the wrong type) with the file, the key and
/// what the key accepts.
fn serde_error(file: &str, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let msg = e.message().trim_end();
    match e.span().and_then(|s| locate(text, s.start)) {
        Some(Place::Key(table, key)) => match accepted(&table, &key) {
            Some(what) => anyhow!("{file}: [{table}].{key}: {msg}; accepted: {what}"),
            None => anyhow!("{file}: [{table}].{key}: {msg}"),
        },
        Some(Place::Table(name)) => anyhow!("{file}: [{name}]: {msg}"),
        Some(Place::TopKey(name)) => anyhow!("{file}: top-level key {name}: {msg}"),
        None => anyhow!("{file}: {}", e.to_string().trim_end()),
    }
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::parse(&text, path)
    }

    /// Validate config text; `path` is only used to name the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let file = path.display().to_string();
        let malformed =
            |e: toml::de::Error| anyhow!("{file}: malformed TOML: {}", e.to_string().trim_end());
        // Syntax first, so that a broken file is called that rather than blamed on a key.
        toml::from_str::<toml::Table>(text).map_err(malformed)?;
        let de = toml::de::Deserializer::parse(text).map_err(malformed)?;
        let doc = Document::deserialize(de).map_err(|e| serde_error(&file, text, &e))?;
        doc.validate(path)
    }

    /// The learning rate of a (1-based) epoch.
    /// The settings that size a tape, named as the user set them, for an error saying that
    /// the tape does not fit the adapter (`batch_key` names where `batch` came from).
    pub fn sizes(&self, batch_key: &str, batch: usize) -> String {
        format!(
            "planning a batch of {batch} ({batch_key}) on physical.L = {}, physical.Nd = {} \
             with model.hidden_sizes = {:?}, model.kernel_size = {} ({})",
            self.physical.l,
            self.physical.nd,
            self.model.hidden_sizes,
            self.model.kernel_size,
            self.source.display()
        )
    }

    pub fn lr(&self, epoch: u64) -> f64 {
        self.training.lr_scheduler.lr(self.training.base_lr, epoch)
    }

    /// The resolved configuration as GomalizingFlow-compatible TOML, every key explicit.
    pub fn to_toml(&self) -> String {
        toml::to_string(&Document::from(self)).expect("the config's tables always serialise")
    }
}

/// Parsing the Julia expressions GomalizingFlow's configs put in strings:
/// `Normal{Float32}(0.f0, 1.f0)`, `Potential{Float32}(; m²=-4f0, λ=8f0)`,
/// `Step(0.001f0, 0.1f0, [200])`. Anything else is an error saying what was not understood.
pub mod julia {
    use super::{PriorKind, Schedule};

    #[derive(Clone, Debug, PartialEq)]
    enum Tok {
        Ident(String),
        Num(f64),
        Punct(char),
    }

    /// A Julia number literal: `8`, `-4.0`, `0.f0`, `5.113f0`, `1e-3`, `1f-3`.
    pub fn number(s: &str) -> Result<f64, String> {
        let t = s.trim();
        // Float32 literals use `f` where Float64 ones use `e`.
        let mut n = t.replace('f', "e");
        // `0.e0` and `2.`: Rust wants a digit after the point.
        if let Some(i) = n.find('.') {
            let next = n[i + 1..].chars().next();
            if next.is_none_or(|c| !c.is_ascii_digit()) {
                n.insert(i + 1, '0');
            }
        }
        let ok = !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_digit() || "+-.eE_".contains(c));
        match n.replace('_', "").parse::<f64>() {
            Ok(v) if ok && v.is_finite() => Ok(v),
            _ => Err(format!("{t:?} is not a number")),
        }
    }

    fn lex(s: &str) -> Result<Vec<Tok>, String> {
        let mut out = Vec::new();
        let chars: Vec<char> = s.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c.is_whitespace() {
                i += 1;
            } else if "(){}[],;=".contains(c) {
                out.push(Tok::Punct(c));
                i += 1;
            } else if c.is_ascii_digit()
                || c == '.'
                || ((c == '-' || c == '+')
                    && chars
                        .get(i + 1)
                        .is_some_and(|d| d.is_ascii_digit() || *d == '.'))
            {
                let start = i;
                i += 1;
                while i < chars.len() {
                    let d = chars[i];
                    let exp_sign =
                        (d == '-' || d == '+') && matches!(chars[i - 1], 'e' | 'E' | 'f');
                    if d.is_ascii_digit()
                        || d == '.'
                        || d == 'e'
                        || d == 'E'
                        || d == 'f'
                        || d == '_'
                        || exp_sign
                    {
                        i += 1;
                    } else {
                        break;
                    }
                }
                let lit: String = chars[start..i].iter().collect();
                out.push(Tok::Num(number(&lit)?));
            } else if c.is_alphabetic() || c == '_' || c == '²' {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '²')
                {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            } else {
                return Err(format!("unexpected character {c:?}"));
            }
        }
        Ok(out)
    }

    #[derive(Debug, Default)]
    struct Call {
        name: String,
        args: Vec<Arg>,
        kwargs: Vec<(String, Arg)>,
    }

    #[derive(Debug, Clone)]
    enum Arg {
        Num(f64),
        List(Vec<f64>),
    }

    /// `Name{Type}(args...; kw=val, ...)`.
    fn call(s: &str) -> Result<Call, String> {
        let toks = lex(s)?;
        let mut it = toks.into_iter().peekable();
        let mut c = Call::default();
        match it.next() {
            Some(Tok::Ident(n)) => c.name = n,
            _ => return Err("expected a name such as Normal, Potential or Step".into()),
        }
        if it.peek() == Some(&Tok::Punct('{')) {
            it.next();
            match it.next() {
                Some(Tok::Ident(t)) if t == "Float32" || t == "Float64" => {}
                other => {
                    return Err(format!(
                        "expected Float32 or Float64 in braces, got {other:?}"
                    ));
                }
            }
            if it.next() != Some(Tok::Punct('}')) {
                return Err("expected '}'".into());
            }
        }
        if it.next() != Some(Tok::Punct('(')) {
            return Err("expected '('".into());
        }
        let mut keywords = false;
        loop {
            match it.next() {
                Some(Tok::Punct(')')) => break,
                Some(Tok::Punct(';')) => keywords = true,
                Some(Tok::Punct(',')) => {}
                Some(Tok::Num(v)) if !keywords => c.args.push(Arg::Num(v)),
                Some(Tok::Punct('[')) if !keywords => c.args.push(Arg::List(list(&mut it)?)),
                Some(Tok::Ident(k)) => {
                    if it.next() != Some(Tok::Punct('=')) {
                        return Err(format!("expected '=' after {k}"));
                    }
                    let v = match it.next() {
                        Some(Tok::Num(v)) => Arg::Num(v),
                        Some(Tok::Punct('[')) => Arg::List(list(&mut it)?),
                        other => return Err(format!("expected a value for {k}, got {other:?}")),
                    };
                    c.kwargs.push((k, v));
                }
                other => return Err(format!("unexpected {other:?}")),
            }
        }
        if let Some(t) = it.next() {
            return Err(format!("unexpected {t:?} after ')'"));
        }
        Ok(c)
    }

    fn list(it: &mut impl Iterator<Item = Tok>) -> Result<Vec<f64>, String> {
        let mut v = Vec::new();
        loop {
            match it.next() {
                Some(Tok::Punct(']')) => return Ok(v),
                Some(Tok::Punct(',')) => {}
                Some(Tok::Num(x)) => v.push(x),
                other => return Err(format!("unexpected {other:?} in a list")),
            }
        }
    }

    fn num(a: &Arg, what: &str) -> Result<f64, String> {
        match a {
            Arg::Num(v) => Ok(*v),
            Arg::List(_) => Err(format!("{what} must be a number")),
        }
    }

    pub fn prior(s: &str) -> Result<PriorKind, String> {
        let c = call(s)?;
        match c.name.as_str() {
            "Normal" => {
                if !c.kwargs.is_empty() {
                    return Err("Normal takes no keywords".into());
                }
                let (mu, sigma) = match c.args.as_slice() {
                    [] => (0.0, 1.0),
                    [m] => (num(m, "the mean")?, 1.0),
                    [m, s] => (num(m, "the mean")?, num(s, "the standard deviation")?),
                    _ => return Err("Normal takes (mean, standard deviation)".into()),
                };
                if sigma <= 0.0 {
                    return Err("the standard deviation must be > 0".into());
                }
                Ok(PriorKind::Normal { mu, sigma })
            }
            "Potential" => {
                if !c.args.is_empty() {
                    return Err("Potential takes keywords only: (; m²=..., λ=...)".into());
                }
                let (mut m2, mut lam, mut xmin, mut xmax) = (None, None, -2.0, 2.0);
                for (k, v) in &c.kwargs {
                    match k.as_str() {
                        "m²" | "m2" | "M2" => m2 = Some(num(v, "m²")?),
                        "λ" | "lam" | "lambda" => lam = Some(num(v, "λ")?),
                        "xmin" => xmin = num(v, "xmin")?,
                        "xmax" => xmax = num(v, "xmax")?,
                        _ => {
                            return Err(format!(
                                "unknown keyword {k} (accepted: m², λ, xmin, xmax)"
                            ));
                        }
                    }
                }
                let (Some(m2), Some(lam)) = (m2, lam) else {
                    return Err("Potential needs both m² and λ".into());
                };
                if xmin >= xmax {
                    return Err("xmin must be below xmax".into());
                }
                if lam < 0.0 {
                    return Err("λ must be >= 0".into());
                }
                Ok(PriorKind::Potential {
                    m2,
                    lam,
                    xmin,
                    xmax,
                })
            }
            other => Err(format!("unknown distribution {other}")),
        }
    }

    pub fn schedule(s: &str) -> Result<Schedule, String> {
        if s.trim().is_empty() {
            return Ok(Schedule::Constant);
        }
        let c = call(s)?;
        if c.name != "Step" {
            return Err(format!("unknown schedule {}", c.name));
        }
        if !c.kwargs.is_empty() {
            return Err("Step takes positional arguments (start, decay, steps)".into());
        }
        let [lr0, decay, steps] = c.args.as_slice() else {
            return Err("Step takes three arguments (start, decay, steps)".into());
        };
        let lr0 = num(lr0, "the start rate")?;
        let decay = num(decay, "the decay")?;
        let steps = match steps {
            Arg::Num(v) => vec![*v],
            Arg::List(v) => v.clone(),
        };
        if lr0 <= 0.0 || decay <= 0.0 {
            return Err("the start rate and the decay must be > 0".into());
        }
        if steps.is_empty() || steps.iter().any(|&n| n < 1.0 || n.fract() != 0.0) {
            return Err("the steps must be positive whole numbers of epochs".into());
        }
        Ok(Schedule::Step {
            lr0,
            decay,
            steps: steps.iter().map(|&n| n as u64).collect(),
        })
    }
}
