//! Shared by the kernel tests: one device per test binary, random data, and the comparison
//! that prints the largest error it saw (run with `--nocapture` to see every line).

use gomaflow_wgpu::config::Config;
use gomaflow_wgpu::gpu::{AdapterChoice, Gpu, GpuBuffer, Precision};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The adapter every test runs on: the first of `gomaflow-wgpu devices` (lavapipe on a machine
/// without a GPU), or the one `WGPU_ADAPTER_NAME` names. No adapter is a failure, not a skip.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let g = Gpu::new(&AdapterChoice::new(None, None)).unwrap_or_else(|e| panic!("{e:#}"));
        eprintln!("adapter: {}", g.describe());
        g
    })
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn uniform(rng: &mut StdRng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

pub fn f32s(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// The f32 values as f64, so that CPU references see exactly what the GPU saw.
pub fn rounded(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| v as f32 as f64).collect()
}

pub fn upload(label: &str, x: &[f64]) -> GpuBuffer {
    gpu().upload(label, &f32s(x)).unwrap()
}

/// The values as stored in `precision` (f16: rounded to nearest), as f64.
pub fn rounded_as(x: &[f64], precision: Precision) -> Vec<f64> {
    match precision {
        Precision::F32 => rounded(x),
        // Through f32, as the upload rounds.
        Precision::F16 => (x.iter())
            .map(|&v| half::f16::from_f32(v as f32).to_f64())
            .collect(),
    }
}

/// The relative error of storing an f32 result as `precision`: half an ulp of f16's 11-bit
/// significand (2^-11), none for f32.
pub fn store_rounding(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => 0.0,
        Precision::F16 => 1.0 / 2048.0,
    }
}

/// A buffer of activations holding `x` stored as `precision`.
pub fn upload_as(label: &str, x: &[f64], precision: Precision) -> GpuBuffer {
    gpu()
        .upload_activations(label, &f32s(x), precision)
        .unwrap()
}

/// A buffer's values (f32, or f16 for an f16 activation buffer) as f64.
pub fn read(b: &GpuBuffer) -> Vec<f64> {
    match b.precision {
        Precision::F32 => gpu()
            .read::<f32>(b)
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect(),
        Precision::F16 => gpu()
            .read::<u16>(b)
            .unwrap()
            .iter()
            .map(|&v| half::f16::from_bits(v).to_f64())
            .collect(),
    }
}

/// Largest |got - want| / (1 + |want|) over the first `want.len()` elements: an absolute
/// error for values below 1 and a relative one above.
pub fn max_err(got: &[f64], want: &[f64]) -> f64 {
    assert!(
        got.len() >= want.len(),
        "got {} values, want {}",
        got.len(),
        want.len()
    );
    want.iter()
        .zip(got)
        .map(|(w, g)| {
            let e = (g - w).abs() / (1.0 + w.abs());
            if e.is_nan() { f64::INFINITY } else { e }
        })
        .fold(0.0, f64::max)
}

/// Assert `got` matches `want` within `tol` (see `max_err`), and print the largest error.
pub fn check(label: &str, got: &[f64], want: &[f64], tol: f64) -> f64 {
    let e = max_err(got, want);
    eprintln!("CHECK {label}: max error {e:.2e} (tolerance {tol:.0e})");
    assert!(e <= tol, "{label}: max error {e:.3e} exceeds {tol:.0e}");
    e
}

/// Central finite difference of `f` at `x[i]`, step h (f64 throughout).
pub fn central_diff(f: &dyn Fn(&[f64]) -> f64, x: &[f64], i: usize, h: f64) -> f64 {
    let mut xp = x.to_vec();
    xp[i] += h;
    let mut xm = x.to_vec();
    xm[i] -= h;
    (f(&xp) - f(&xm)) / (2.0 * h)
}

/// Compare an analytic gradient with central differences at `n` random components.
/// The analytic gradient is the f64 reference, so the tolerance is that of the difference
/// formula (h^2 truncation and rounding), not of f32.
pub fn check_fd(
    label: &str,
    f: &dyn Fn(&[f64]) -> f64,
    x: &[f64],
    grad: &[f64],
    n: usize,
    seed: u64,
) -> f64 {
    let mut r = rng(seed);
    let h = 1e-5;
    let mut worst: f64 = 0.0;
    for _ in 0..n.min(x.len()) {
        let i = r.random_range(0..x.len());
        let fd = central_diff(f, x, i, h);
        worst = worst.max((fd - grad[i]).abs() / (1.0 + grad[i].abs()));
    }
    let tol = 1e-6;
    eprintln!("CHECK {label} vs finite differences: max error {worst:.2e} (tolerance {tol:.0e})");
    assert!(
        worst <= tol,
        "{label}: analytic vs finite-difference error {worst:.3e}"
    );
    worst
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A small config of the tutorial's form for tests.
#[allow(clippy::too_many_arguments)]
pub fn config(
    nd: usize,
    l: usize,
    m2: f64,
    lam: f64,
    layers: usize,
    hidden: &str,
    epochs: u64,
    iterations: u64,
) -> String {
    format!(
        r#"[config]
version = "0.1.0"
[training]
seed = 7
batchsize = 64
epochs = {epochs}
iterations = {iterations}
base_lr = 0.001
opt = "Adam"
prior = "Normal{{Float32}}(0.f0, 1.f0)"
lr_scheduler = ""
pretrained = ""
eval_samples = 2048
eval_batchsize = 1024
[physical]
L = {l}
Nd = {nd}
M2 = {m2:?}
lam = {lam:?}
[model]
seed = 0
n_layers = {layers}
hidden_sizes = {hidden}
kernel_size = 3
inC = 1
outC = 2
use_final_tanh = true
use_bn = false
"#
    )
}

pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gomaflow-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn load(dir: &std::path::Path, text: &str) -> Config {
    let p = dir.join("config.in.toml");
    std::fs::write(&p, text).unwrap();
    Config::load(&p).unwrap()
}

/// A run directory of `text` trained to the end (a config of this module's `config` form).
pub fn trained(name: &str, text: &str) -> PathBuf {
    let dir = tmpdir(name);
    let cfg = load(&dir, text);
    let out = dir.join("run");
    let o = gomaflow_wgpu::train::train(
        gpu(),
        &cfg,
        &gomaflow_wgpu::train::TrainOptions {
            out: out.clone(),
            resume: false,
            epochs: None,
            tune: gomaflow_wgpu::tune::TuneMode::Off,
        },
        &std::sync::atomic::AtomicBool::new(false),
    )
    .unwrap();
    assert!(matches!(o, gomaflow_wgpu::train::Outcome::Finished { .. }));
    out
}
