//! The configuration: GomalizingFlow.jl's TOML (tables [config], [device], [training],
//! [physical], [model]) accepted unchanged, its Julia-expression strings parsed in the forms its
//! configs use, and every value validated with an error that names the file, the key and what
//! is accepted. Keys this project adds live in the same tables (see README).

use anyhow::{Context, Result, anyhow, bail};
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
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where it was read from (named in every error).
    pub source: PathBuf,
    pub version: String,
    /// GomalizingFlow's device_id: N >= 0 the N-th adapter, -1 the software adapter.
    pub device_id: Option<i64>,
    pub training: Training,
    pub physical: Physical,
    pub model: Model,
}

/// Largest lattice volume L^Nd (the adapter's buffer limits usually bind first).
pub const MAX_SITES: u64 = 1 << 26;

/// Largest channel count a coupling net may use (the kernels keep one accumulator per channel
/// in registers).
pub const MAX_CHANNELS: usize = 128;

/// Every table and its keys (GomalizingFlow's and ours).
pub const TABLES: &[(&str, &[&str])] = &[
    ("config", &["version"]),
    ("device", &["device_id"]),
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
        ],
    ),
];

/// Reads typed values out of one table, naming file, table and key in every error.
struct Reader<'a> {
    file: &'a str,
    table: &'a str,
    t: Option<&'a toml::Table>,
}

impl<'a> Reader<'a> {
    fn err(&self, key: &str, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}: [{}].{key} {msg}", self.file, self.table)
    }

    fn get(&self, key: &str) -> Option<&'a toml::Value> {
        self.t.and_then(|t| t.get(key))
    }

    fn required(&self, key: &str, what: &str) -> Result<&'a toml::Value> {
        self.get(key)
            .ok_or_else(|| anyhow!("{}: missing key [{}].{key} ({what})", self.file, self.table))
    }

    fn int(&self, key: &str, default: Option<i64>, what: &str) -> Result<i64> {
        match (self.get(key), default) {
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.required(key, what).unwrap_err()),
            (Some(toml::Value::Integer(i)), _) => Ok(*i),
            (Some(v), _) => Err(self.err(key, format!("must be {what}, got {v}"))),
        }
    }

    /// An integer in [lo, hi].
    fn int_in(&self, key: &str, default: Option<i64>, lo: i64, hi: i64, what: &str) -> Result<i64> {
        let v = self.int(key, default, what)?;
        if v < lo || v > hi {
            return Err(self.err(key, format!("must be {what}, got {v}")));
        }
        Ok(v)
    }

    fn float(&self, key: &str, default: Option<f64>, what: &str) -> Result<f64> {
        let v = match (self.get(key), default) {
            (None, Some(d)) => d,
            (None, None) => return Err(self.required(key, what).unwrap_err()),
            (Some(toml::Value::Float(f)), _) => *f,
            (Some(toml::Value::Integer(i)), _) => *i as f64,
            (Some(v), _) => return Err(self.err(key, format!("must be {what}, got {v}"))),
        };
        if !v.is_finite() {
            return Err(self.err(key, format!("must be {what}, got {v}")));
        }
        Ok(v)
    }

    fn string(&self, key: &str, default: &str) -> Result<String> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(toml::Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(self.err(key, format!("must be a string, got {v}"))),
        }
    }

    fn boolean(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(toml::Value::Boolean(b)) => Ok(*b),
            Some(v) => Err(self.err(key, format!("must be true or false, got {v}"))),
        }
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
        let root: toml::Table = toml::from_str(text)
            .map_err(|e| anyhow!("{file}: malformed TOML: {}", e.to_string().trim_end()))?;

        for (name, value) in &root {
            let Some((_, keys)) = TABLES.iter().find(|(t, _)| t == name) else {
                bail!(
                    "{file}: unknown table or key {name:?} at top level; accepted tables: {}",
                    TABLES
                        .iter()
                        .map(|(t, _)| format!("[{t}]"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            let Some(t) = value.as_table() else {
                bail!("{file}: {name} must be a table [{name}], got {value}");
            };
            for k in t.keys() {
                if !keys.contains(&k.as_str()) {
                    bail!(
                        "{file}: unknown key [{name}].{k}; accepted keys of [{name}]: {}",
                        keys.join(", ")
                    );
                }
            }
        }
        let table = |name: &'static str| Reader {
            file: &file,
            table: name,
            t: root.get(name).and_then(|v| v.as_table()),
        };

        let c = table("config");
        let version = match c.get("version") {
            None => "0.1.0".to_string(),
            Some(toml::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        };

        let d = table("device");
        let device_id = match d.get("device_id") {
            None => None,
            Some(_) => Some(d.int_in(
                "device_id",
                None,
                -1,
                i64::from(u16::MAX),
                "-1 (the software adapter) or the index N >= 0 of an adapter in `gomaflow-wgpu devices`",
            )?),
        };

        let p = table("physical");
        let nd = p.int_in("Nd", None, 1, 4, "the number of dimensions, 1, 2, 3 or 4")? as usize;
        let l = p.int_in(
            "L",
            None,
            2,
            1 << 16,
            "the lattice extent, an even integer >= 2",
        )?;
        if l % 2 != 0 {
            return Err(p.err(
                "L",
                format!(
                    "must be even so that the checkerboard closes across the periodic boundary, got {l}"
                ),
            ));
        }
        let volume = (l as u128).pow(nd as u32);
        if volume > MAX_SITES as u128 {
            return Err(p.err(
                "L",
                format!(
                    "= {l} with Nd = {nd} gives {volume} sites; at most {MAX_SITES} are supported"
                ),
            ));
        }
        let m2 = p.float("M2", None, "the bare mass squared m², a number")?;
        let lam = p.float("lam", None, "the quartic coupling λ, a number >= 0")?;
        if lam < 0.0 {
            return Err(p.err(
                "lam",
                format!("must be >= 0 (a negative λ leaves the action unbounded below), got {lam}"),
            ));
        }
        if lam == 0.0 && m2 <= 0.0 {
            return Err(p.err(
                "M2",
                format!(
                    "must be > 0 when lam = 0 (the free field needs a positive mass), got {m2}"
                ),
            ));
        }
        let physical = Physical {
            l: l as usize,
            nd,
            m2,
            lam,
        };

        let m = table("model");
        let hidden_sizes = match m.get("hidden_sizes") {
            None => vec![8, 8],
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    toml::Value::Integer(i) if *i >= 1 && *i as usize <= MAX_CHANNELS => {
                        Ok(*i as usize)
                    }
                    _ => Err(m.err(
                        "hidden_sizes",
                        format!(
                            "must be a list of channel counts in 1..={MAX_CHANNELS}, e.g. [8, 8]; got {v}"
                        ),
                    )),
                })
                .collect::<Result<Vec<_>>>()?,
            Some(v) => {
                return Err(m.err(
                    "hidden_sizes",
                    format!("must be a list of channel counts, e.g. [8, 8]; got {v}"),
                ));
            }
        };
        let kernel_size = m.int_in(
            "kernel_size",
            Some(3),
            1,
            15,
            "an odd kernel size in 1..=15",
        )?;
        if kernel_size % 2 == 0 {
            return Err(m.err(
                "kernel_size",
                format!("must be odd (a centred periodic window), got {kernel_size}"),
            ));
        }
        let in_c = m.int("inC", Some(1), "1")?;
        if in_c != 1 {
            return Err(m.err(
                "inC",
                format!("must be 1 (one real field per site), got {in_c}"),
            ));
        }
        let out_c = m.int("outC", Some(2), "2")?;
        if out_c != 2 {
            return Err(m.err(
                "outC",
                format!("must be 2 (the coupling's s and t), got {out_c}"),
            ));
        }
        let use_bn = m.boolean("use_bn", false)?;
        if use_bn {
            return Err(m.err(
                "use_bn",
                "= true is not supported: batch normalisation makes log q depend on the batch; use false",
            ));
        }
        let model = Model {
            seed: m.int_in("seed", Some(2021), 0, i64::MAX, "a seed, an integer >= 0")? as u64,
            n_layers: m.int_in(
                "n_layers",
                Some(16),
                1,
                1024,
                "the number of coupling layers, 1..=1024",
            )? as usize,
            hidden_sizes,
            kernel_size: kernel_size as usize,
            in_c: 1,
            out_c: 2,
            use_final_tanh: m.boolean("use_final_tanh", true)?,
            use_bn,
        };

        let t = table("training");
        let opt = t.string("opt", "Adam")?;
        if !opt.eq_ignore_ascii_case("adam") {
            return Err(t.err(
                "opt",
                format!("= {opt:?} is not supported; accepted: \"Adam\""),
            ));
        }
        let prior_s = t.string("prior", "Normal{Float32}(0.f0, 1.f0)")?;
        let prior = julia::prior(&prior_s).map_err(|e| {
            t.err(
                "prior",
                format!(
                    "= {prior_s:?} is not understood ({e}); accepted: \"Normal{{Float32}}(0.f0, 1.f0)\" \
                     or \"Potential{{Float32}}(; m²=-4f0, λ=8f0)\" (optionally with xmin=, xmax=)"
                ),
            )
        })?;
        let sched_s = t.string("lr_scheduler", "")?;
        let lr_scheduler = julia::schedule(&sched_s).map_err(|e| {
            t.err(
                "lr_scheduler",
                format!(
                    "= {sched_s:?} is not understood ({e}); accepted: \"\" (constant) or \
                     \"Step(0.001f0, 0.1f0, [200])\" (start, decay, epochs per step)"
                ),
            )
        })?;
        let base_lr = t.float("base_lr", Some(1e-3), "the learning rate, a number > 0")?;
        if base_lr <= 0.0 {
            return Err(t.err("base_lr", format!("must be > 0, got {base_lr}")));
        }
        let batchsize = t.int_in(
            "batchsize",
            Some(64),
            1,
            65535,
            "the training batch, an integer in 1..=65535",
        )? as usize;
        let eval_samples = t.int_in(
            "eval_samples",
            Some(8192),
            1024,
            1 << 24,
            "the proposals of each evaluation, an integer >= 1024",
        )? as usize;
        let eval_batchsize = t.int_in(
            "eval_batchsize",
            Some(1024),
            1,
            65535,
            "the evaluation batch, an integer in 1..=65535",
        )? as usize;
        let training = Training {
            seed: t.int_in("seed", Some(12345), 0, i64::MAX, "a seed, an integer >= 0")? as u64,
            batchsize,
            epochs: t.int_in(
                "epochs",
                Some(40),
                1,
                i64::MAX,
                "the number of epochs, >= 1",
            )? as u64,
            iterations: t.int_in(
                "iterations",
                Some(100),
                1,
                i64::MAX,
                "the steps per epoch, >= 1",
            )? as u64,
            base_lr,
            opt: "Adam".into(),
            prior,
            lr_scheduler,
            pretrained: t.string("pretrained", "")?,
            eval_samples,
            eval_batchsize,
        };
        Ok(Config {
            source: path.to_path_buf(),
            version,
            device_id,
            training,
            physical,
            model,
        })
    }

    /// The learning rate of a (1-based) epoch.
    pub fn lr(&self, epoch: u64) -> f64 {
        self.training.lr_scheduler.lr(self.training.base_lr, epoch)
    }

    /// The resolved configuration as GomalizingFlow-compatible TOML, every key explicit.
    pub fn to_toml(&self) -> String {
        use toml::Value as V;
        let mut root = toml::Table::new();
        let mut c = toml::Table::new();
        c.insert("version".into(), V::String(self.version.clone()));
        root.insert("config".into(), V::Table(c));
        let mut d = toml::Table::new();
        if let Some(id) = self.device_id {
            d.insert("device_id".into(), V::Integer(id));
        }
        root.insert("device".into(), V::Table(d));
        let t = &self.training;
        let mut tr = toml::Table::new();
        tr.insert("seed".into(), V::Integer(t.seed as i64));
        tr.insert("batchsize".into(), V::Integer(t.batchsize as i64));
        tr.insert("epochs".into(), V::Integer(t.epochs as i64));
        tr.insert("iterations".into(), V::Integer(t.iterations as i64));
        tr.insert("base_lr".into(), V::Float(t.base_lr));
        tr.insert("opt".into(), V::String(t.opt.clone()));
        tr.insert("prior".into(), V::String(t.prior.julia()));
        tr.insert("lr_scheduler".into(), V::String(t.lr_scheduler.julia()));
        tr.insert("pretrained".into(), V::String(t.pretrained.clone()));
        tr.insert("eval_samples".into(), V::Integer(t.eval_samples as i64));
        tr.insert("eval_batchsize".into(), V::Integer(t.eval_batchsize as i64));
        root.insert("training".into(), V::Table(tr));
        let p = &self.physical;
        let mut ph = toml::Table::new();
        ph.insert("L".into(), V::Integer(p.l as i64));
        ph.insert("Nd".into(), V::Integer(p.nd as i64));
        ph.insert("M2".into(), V::Float(p.m2));
        ph.insert("lam".into(), V::Float(p.lam));
        root.insert("physical".into(), V::Table(ph));
        let m = &self.model;
        let mut mo = toml::Table::new();
        mo.insert("seed".into(), V::Integer(m.seed as i64));
        mo.insert("n_layers".into(), V::Integer(m.n_layers as i64));
        mo.insert(
            "hidden_sizes".into(),
            V::Array(
                m.hidden_sizes
                    .iter()
                    .map(|&h| V::Integer(h as i64))
                    .collect(),
            ),
        );
        mo.insert("kernel_size".into(), V::Integer(m.kernel_size as i64));
        mo.insert("inC".into(), V::Integer(1));
        mo.insert("outC".into(), V::Integer(2));
        mo.insert("use_final_tanh".into(), V::Boolean(m.use_final_tanh));
        mo.insert("use_bn".into(), V::Boolean(false));
        root.insert("model".into(), V::Table(mo));
        toml::to_string(&root).expect("a TOML table always serialises")
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
