//! One flow's Markov chain spread over many processes: `sample --shard I/N` runs chain I of N
//! with its own random streams and writes its per-configuration measurements to
//! `RUN_DIR/shards/`; `merge` reads the whole set back and analyses the chains as replicas.
//!
//! A shard is two files, written to temporary names and renamed, the JSON last (its presence
//! marks a finished shard):
//! - `<I>-of-<N>.npy`: one row per chain step, burn-in included, as a NumPy structured array
//!   (`numpy.load(f)["phi2"]`): `m` (the magnetisation of the chain's current configuration),
//!   `phi2`, `G` (L values: G(r) averaged over the axes, before subtracting <m>^2; G[1] is the
//!   Ising-energy term), `C` (L values: the zero-momentum correlator before subtracting
//!   <m>^2 L^(Nd-1)), all float64; `logw` (log p - log q of the step's proposal, float64) and
//!   `accepted` (bool);
//! - `<I>-of-<N>.json`: the shard's own summary (as `sample --json` prints it) and what `merge`
//!   checks the set with: the shard's index and count, seed, chain length and burn-in, and
//!   fingerprints of the run's config and of the checkpoint it sampled.

use crate::files::{NpyWriter, write_atomic};
use crate::lattice::Lattice;
use crate::observables::{Measurement, idx};
use crate::sample::ChainRecord;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The `format` field of a shard's JSON; a different one is refused.
pub const FORMAT: &str = "gomaflow-wgpu shard 1";

/// Chain `index` of `count` (0 <= index < count).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ShardId {
    pub index: u32,
    pub count: u32,
}

impl FromStr for ShardId {
    type Err = String;

    /// "I/N", as Slurm gives it: `--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT` with
    /// `--array=0-(N-1)`.
    fn from_str(s: &str) -> Result<ShardId, String> {
        let err = || format!("expected I/N with 0 <= I < N <= 2^30 (e.g. 0/4), got '{s}'");
        let (i, n) = s.split_once('/').ok_or_else(err)?;
        let index: u32 = i.trim().parse().map_err(|_| err())?;
        let count: u32 = n.trim().parse().map_err(|_| err())?;
        if index >= count || count > crate::rng::stream::MAX_SHARDS {
            return Err(err());
        }
        Ok(ShardId { index, count })
    }
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl ShardId {
    /// The file stem `<I>-of-<N>`.
    pub fn stem(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }

    /// The shard's two files in `run_dir`.
    pub fn paths(&self, run_dir: &Path) -> (PathBuf, PathBuf) {
        let d = shards_dir(run_dir);
        (
            d.join(format!("{}.npy", self.stem())),
            d.join(format!("{}.json", self.stem())),
        )
    }
}

pub fn shards_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("shards")
}

/// The NumPy dtype of a row (packed, little-endian) for side length `l`.
pub fn dtype(l: usize) -> String {
    format!(
        "[('m', '<f8'), ('phi2', '<f8'), ('G', '<f8', ({l},)), ('C', '<f8', ({l},)), \
         ('logw', '<f8'), ('accepted', '|b1')]"
    )
}

/// Bytes per row: m, phi2, G, C, logw as f64, accepted as one byte.
pub fn row_bytes(l: usize) -> usize {
    8 * (3 + 2 * l) + 1
}

/// A 64-bit FNV-1a fingerprint of a file's bytes, as 16 hex digits: enough to tell two
/// checkpoints or configs apart (not a defence against forgery).
pub fn fingerprint(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok(format!("{h:016x}"))
}

/// Streams a shard's rows to its .npy under a temporary name.
pub struct ShardWriter {
    npy: NpyWriter,
    l: usize,
    row: Vec<u8>,
}

impl ShardWriter {
    pub fn create(run_dir: &Path, shard: ShardId, lat: &Lattice, rows: usize) -> Result<Self> {
        let dir = shards_dir(run_dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let (npy, _) = shard.paths(run_dir);
        let l = lat.l;
        Ok(ShardWriter {
            npy: NpyWriter::create_typed(&npy, &dtype(l), &[rows], row_bytes(l))?,
            l,
            row: Vec::with_capacity(row_bytes(l)),
        })
    }

    /// One chain step: the primaries of its current configuration (`Measurement::primaries`),
    /// its proposal's log w, and whether it accepted.
    pub fn push(&mut self, primaries: &[f64], logw: f64, accepted: bool) -> Result<()> {
        let l = self.l;
        let g0 = idx::G0;
        self.row.clear();
        let fields = [primaries[idx::M], primaries[idx::PHI2]]
            .into_iter()
            .chain(primaries[g0..g0 + 2 * l].iter().copied())
            .chain([logw]);
        for x in fields {
            self.row.extend(x.to_le_bytes());
        }
        self.row.push(accepted as u8);
        self.npy.write_bytes(&self.row)
    }

    pub fn finish(self) -> Result<()> {
        self.npy.finish()
    }
}

/// Write the shard's JSON summary (after its .npy: the JSON marks it finished).
pub fn write_summary(run_dir: &Path, shard: ShardId, summary: &serde_json::Value) -> Result<()> {
    let (_, json) = shard.paths(run_dir);
    write_atomic(&json, serde_json::to_string_pretty(summary)?.as_bytes())
}

/// What `merge` needs of a shard's JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardMeta {
    pub shard: ShardId,
    pub seed: u64,
    pub samples: usize,
    pub burn_in: usize,
    pub seconds: f64,
    pub config: String,
    pub checkpoint: String,
    pub checkpoint_fingerprint: String,
    /// The storage of the flow's activations when the shard drew its proposals ("f32" where
    /// the JSON does not say).
    pub precision: String,
}

/// One finished shard, read back.
#[derive(Clone, Debug)]
pub struct Shard {
    pub meta: ShardMeta,
    pub npy: PathBuf,
    pub json: PathBuf,
    /// Primaries of every step (burn-in included), as `Measurement::primaries` orders them.
    pub primaries: Vec<Vec<f64>>,
    pub logw: Vec<f64>,
    pub accepted: Vec<bool>,
}

impl Shard {
    /// Its steps as `ChainStats` reads them.
    pub fn record(&self) -> ChainRecord<'_> {
        ChainRecord {
            logw: &self.logw,
            accepted: &self.accepted,
            burn_in: self.meta.burn_in,
        }
    }
}

fn meta_of(json: &Path) -> Result<ShardMeta> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("cannot read {}", json.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON (a damaged shard?)", json.display()))?;
    let field = |k: &str| {
        v.get(k).with_context(|| {
            format!(
                "{} lacks the field '{k}' (not a shard of this version?)",
                json.display()
            )
        })
    };
    let u = |k: &str| -> Result<u64> {
        field(k)?
            .as_u64()
            .with_context(|| format!("{}: '{k}' is not a non-negative integer", json.display()))
    };
    let s = |k: &str| -> Result<String> {
        Ok(field(k)?
            .as_str()
            .with_context(|| format!("{}: '{k}' is not a string", json.display()))?
            .to_string())
    };
    let format = s("format")?;
    if format != FORMAT {
        bail!(
            "{} has format '{format}'; this version reads '{FORMAT}'",
            json.display()
        );
    }
    let (index, count) = (u("shard")?, u("shards")?);
    let shard = ShardId::from_str(&format!("{index}/{count}"))
        .map_err(|e| anyhow::anyhow!("{}: shard {e}", json.display()))?;
    Ok(ShardMeta {
        shard,
        seed: u("seed")?,
        samples: u("samples")? as usize,
        burn_in: u("burn_in")? as usize,
        seconds: field("seconds")?
            .as_f64()
            .with_context(|| format!("{}: 'seconds' is not a number", json.display()))?,
        config: s("config_fingerprint")?,
        checkpoint: s("checkpoint")?,
        checkpoint_fingerprint: s("checkpoint_fingerprint")?,
        precision: match v.get("precision") {
            None => "f32".into(),
            Some(_) => s("precision")?,
        },
    })
}

/// The columns of a shard's .npy.
struct Rows {
    primaries: Vec<Vec<f64>>,
    logw: Vec<f64>,
    accepted: Vec<bool>,
}

fn read_rows(npy: &Path, lat: &Lattice, rows: usize) -> Result<Rows> {
    let bytes = std::fs::read(npy).with_context(|| format!("cannot read {}", npy.display()))?;
    let l = lat.l;
    let header = crate::files::npy_header(&dtype(l), &[rows]);
    if !bytes.starts_with(&header) {
        bail!(
            "{} is not the shard its JSON describes: expected a NumPy array of {rows} rows of \
             dtype {} (a damaged file, or one from another lattice?)",
            npy.display(),
            dtype(l)
        );
    }
    let rb = row_bytes(l);
    let want = header.len() + rows * rb;
    if bytes.len() != want {
        bail!(
            "{} holds {} bytes; {rows} rows need {want} (a truncated or damaged file)",
            npy.display(),
            bytes.len()
        );
    }
    let f = |row: &[u8], k: usize| f64::from_le_bytes(row[8 * k..8 * k + 8].try_into().unwrap());
    let mut primaries = Vec::with_capacity(rows);
    let mut logw = Vec::with_capacity(rows);
    let mut accepted = Vec::with_capacity(rows);
    for row in bytes[header.len()..].chunks_exact(rb) {
        let meas = Measurement {
            m: f(row, 0),
            phi2: f(row, 1),
            g: (0..l).map(|k| f(row, 2 + k)).collect(),
            c: (0..l).map(|k| f(row, 2 + l + k)).collect(),
        };
        primaries.push(meas.primaries());
        logw.push(f(row, 2 + 2 * l));
        accepted.push(match row[rb - 1] {
            0 => false,
            1 => true,
            b => bail!(
                "{}: an 'accepted' byte is {b}, not 0 or 1 (a damaged file)",
                npy.display()
            ),
        });
    }
    Ok(Rows {
        primaries,
        logw,
        accepted,
    })
}

/// Every shard of `run_dir/shards/`, checked to be one complete set of one flow and config, in
/// shard order. `config_fingerprint` is that of the run's config.toml now.
pub fn read_set(run_dir: &Path, lat: &Lattice, config_fingerprint: &str) -> Result<Vec<Shard>> {
    let dir = shards_dir(run_dir);
    let entries = std::fs::read_dir(&dir).with_context(|| {
        format!(
            "{} does not exist: run `gomaflow-wgpu sample {} --shard I/N` for I = 0..N-1 first",
            dir.display(),
            run_dir.display()
        )
    })?;
    // (count) -> index -> (npy present, json present)
    let mut sets: BTreeMap<u32, BTreeMap<u32, (bool, bool)>> = BTreeMap::new();
    for e in entries {
        let name = e?.file_name().to_string_lossy().to_string();
        let Some((stem, ext)) = name.rsplit_once('.') else {
            continue;
        };
        if ext != "npy" && ext != "json" {
            continue;
        }
        let Some((i, n)) = stem.split_once("-of-") else {
            continue;
        };
        let (Ok(i), Ok(n)) = (i.parse::<u32>(), n.parse::<u32>()) else {
            continue;
        };
        if i >= n {
            bail!(
                "{} names shard {i} of {n}: an index must be below the count",
                dir.join(&name).display()
            );
        }
        let e = sets.entry(n).or_default().entry(i).or_default();
        if ext == "npy" { e.0 = true } else { e.1 = true }
    }
    if sets.is_empty() {
        bail!(
            "{} holds no shards (<I>-of-<N>.npy and .json): run `gomaflow-wgpu sample {} \
             --shard I/N` for I = 0..N-1 first",
            dir.display(),
            run_dir.display()
        );
    }
    if sets.len() > 1 {
        let list: Vec<String> = sets
            .iter()
            .map(|(n, s)| format!("{} of {n}", s.len()))
            .collect();
        bail!(
            "{} mixes shards of different splits ({}): one merge takes one set; move the others \
             away",
            dir.display(),
            list.join(", ")
        );
    }
    let (&count, present) = sets.iter().next().unwrap();
    let mut problems = vec![];
    for index in 0..count {
        let id = ShardId { index, count };
        let (npy, json) = id.paths(run_dir);
        match present.get(&index) {
            None => problems.push(format!(
                "{} and .npy are missing (shard {id} not run?)",
                json.display()
            )),
            Some((false, _)) => problems.push(format!("{} is missing", npy.display())),
            Some((true, false)) => problems.push(format!(
                "{} is missing (shard {id} interrupted before it finished?)",
                json.display()
            )),
            Some((true, true)) => {}
        }
    }
    if !problems.is_empty() {
        bail!(
            "the set of {count} shards in {} is incomplete:\n  {}",
            dir.display(),
            problems.join("\n  ")
        );
    }
    let mut shards: Vec<Shard> = Vec::with_capacity(count as usize);
    for index in 0..count {
        let id = ShardId { index, count };
        let (npy, json) = id.paths(run_dir);
        let meta = meta_of(&json)?;
        if meta.shard != id {
            bail!(
                "{} says it is shard {}, not {id} (a renamed or copied file)",
                json.display(),
                meta.shard
            );
        }
        if meta.config != config_fingerprint {
            bail!(
                "{} was sampled with another config than {} (fingerprint {} against {}): \
                 sample it again",
                json.display(),
                run_dir.join("config.toml").display(),
                meta.config,
                config_fingerprint
            );
        }
        if let Some(first) = shards.first() {
            let f = &first.meta;
            if meta.checkpoint_fingerprint != f.checkpoint_fingerprint {
                bail!(
                    "{} sampled another flow than {} ({} {} against {} {}): a set must come \
                     from one checkpoint",
                    json.display(),
                    first.json.display(),
                    meta.checkpoint,
                    meta.checkpoint_fingerprint,
                    f.checkpoint,
                    f.checkpoint_fingerprint
                );
            }
            // f16 rounds the flow's nets: another precision draws from another map.
            if meta.precision != f.precision {
                bail!(
                    "{} drew its proposals with {} activations and {} with {}: a set is one \
                     flow's shards in one precision (sample --precision)",
                    json.display(),
                    meta.precision,
                    first.json.display(),
                    f.precision
                );
            }
            if meta.seed != f.seed {
                bail!(
                    "{} used seed {} and {} seed {}: a set is one seed's shards",
                    json.display(),
                    meta.seed,
                    first.json.display(),
                    f.seed
                );
            }
        }
        if meta.burn_in >= meta.samples {
            bail!(
                "{}: burn-in {} is not below samples {}",
                json.display(),
                meta.burn_in,
                meta.samples
            );
        }
        let rows = read_rows(&npy, lat, meta.samples)?;
        let shard = Shard {
            meta,
            npy,
            json,
            primaries: rows.primaries,
            logw: rows.logw,
            accepted: rows.accepted,
        };
        // Shards draw from disjoint streams, so equal proposals mean a copied file.
        if let Some(twin) = shards.iter().find(|s| s.logw == shard.logw) {
            bail!(
                "{} holds the same chain as {} (a copied file): every shard must be sampled \
                 with its own --shard I/N",
                shard.npy.display(),
                twin.npy.display()
            );
        }
        shards.push(shard);
    }
    Ok(shards)
}
