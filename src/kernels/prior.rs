//! Prior sampling with log r(z) (`shaders/prior.wgsl`): the normal prior, and GomalizingFlow's
//! one-site Potential prior drawn by exact rejection.

use super::reduction_workgroup;
use crate::config::PriorKind;
use crate::gpu::{Dispatch, Gpu, GpuBuffer, KernelSpec, Shader};
use crate::rng::key_of;
use anyhow::{Result, bail};

#[derive(Clone, Debug)]
pub struct PriorSpec {
    pub batch: usize,
    pub volume: usize,
    pub seed: u64,
    pub stream: u32,
    pub kind: PriorKind,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    volume: u32,
    key_lo: u32,
    key_hi: u32,
    stream: u32,
    _pad: [u32; 3],
    mu: f32,
    sigma: f32,
    m2: f32,
    lam: f32,
    xmin: f32,
    width: f32,
    vmin: f32,
    log_norm: f32,
}

/// The one-site potential v(x) = m2 x^2 + lam x^4.
pub fn potential(m2: f64, lam: f64, x: f64) -> f64 {
    m2 * x * x + lam * x.powi(4)
}

/// min v over [xmin, xmax], and log of the integral of exp(-v) over it (Simpson's rule on
/// 200,000 intervals, good to far below f32 precision for any smooth v).
pub fn potential_constants(m2: f64, lam: f64, xmin: f64, xmax: f64) -> (f64, f64) {
    let mut cands = vec![xmin, xmax];
    if xmin < 0.0 && xmax > 0.0 {
        cands.push(0.0);
    }
    if lam > 0.0 && m2 < 0.0 {
        let a = (-m2 / (2.0 * lam)).sqrt();
        cands.extend([a, -a].iter().filter(|&&x| x > xmin && x < xmax));
    }
    let vmin = cands
        .iter()
        .map(|&x| potential(m2, lam, x))
        .fold(f64::INFINITY, f64::min);
    let n = 200_000;
    let h = (xmax - xmin) / n as f64;
    let f = |i: usize| (-(potential(m2, lam, xmin + i as f64 * h) - vmin)).exp();
    let mut sum = f(0) + f(n);
    for i in 1..n {
        sum += if i % 2 == 1 { 4.0 } else { 2.0 } * f(i);
    }
    let integral = sum * h / 3.0;
    (vmin, integral.ln() - vmin)
}

pub struct Prior {
    pub spec: PriorSpec,
    pub sample: Dispatch,
}

impl Prior {
    /// `counter[0]` is the draw index; `z` [batch, site] and `logq` [batch] are written.
    pub fn new(
        gpu: &Gpu,
        spec: PriorSpec,
        counter: &GpuBuffer,
        z: &GpuBuffer,
        logq: &GpuBuffer,
    ) -> Result<Prior> {
        if z.len() < spec.batch * spec.volume || logq.len() < spec.batch {
            bail!("prior buffers too small for batch {}", spec.batch);
        }
        let key = key_of(spec.seed);
        let mut u = Params {
            batch: spec.batch as u32,
            volume: spec.volume as u32,
            key_lo: key[0],
            key_hi: key[1],
            stream: spec.stream,
            _pad: [0; 3],
            mu: 0.0,
            sigma: 1.0,
            m2: 0.0,
            lam: 0.0,
            xmin: 0.0,
            width: 0.0,
            vmin: 0.0,
            log_norm: 0.0,
        };
        let entry = match spec.kind {
            PriorKind::Normal { mu, sigma } => {
                u.mu = mu as f32;
                u.sigma = sigma as f32;
                "sample_normal"
            }
            PriorKind::Potential {
                m2,
                lam,
                xmin,
                xmax,
            } => {
                let (vmin, log_norm) = potential_constants(m2, lam, xmin, xmax);
                u.m2 = m2 as f32;
                u.lam = lam as f32;
                u.xmin = xmin as f32;
                u.width = (xmax - xmin) as f32;
                u.vmin = vmin as f32;
                u.log_norm = log_norm as f32;
                "sample_potential"
            }
        };
        let k = KernelSpec::new(Shader::Prior, entry).with("WG", reduction_workgroup(spec.volume));
        let sample = gpu
            .dispatch(
                &k,
                Some(bytemuck::bytes_of(&u)),
                &[("counter", counter), ("z", z), ("logq", logq)],
                [spec.batch as u32, 1, 1],
            )?
            // Philox-10 is about 130 integer operations per 4 sites; count them as work.
            .with_work(
                40.0 * (spec.batch * spec.volume) as f64,
                4.0 * (spec.batch * spec.volume) as f64,
            );
        Ok(Prior { spec, sample })
    }
}

/// The f64 specification: the same Philox numbers, transformed in f64.
pub mod reference {
    use super::{potential, potential_constants};
    use crate::config::PriorKind;
    use crate::rng::{key_of, philox4x32, prior_normals, uniform01};

    /// z [batch, site] and log r(z) per sample for draw index `draw`.
    pub fn sample(
        kind: &PriorKind,
        seed: u64,
        stream: u32,
        draw: u32,
        batch: usize,
        volume: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let key = key_of(seed);
        let mut z = Vec::with_capacity(batch * volume);
        let mut logr = Vec::with_capacity(batch);
        for b in 0..batch {
            let zb: Vec<f64> = match *kind {
                PriorKind::Normal { mu, sigma } => {
                    prior_normals(key, b as u32, draw, stream, volume)
                        .iter()
                        .map(|n| mu + sigma * n)
                        .collect()
                }
                PriorKind::Potential {
                    m2,
                    lam,
                    xmin,
                    xmax,
                } => {
                    let (vmin, _) = potential_constants(m2, lam, xmin, xmax);
                    (0..volume)
                        .map(|s| {
                            let mut x = xmin;
                            'tries: for k in 0..2048u32 {
                                let r =
                                    philox4x32([s as u32, b as u32, draw, stream | (k << 8)], key);
                                for (a, c) in [(r[0], r[1]), (r[2], r[3])] {
                                    x = xmin + (xmax - xmin) * uniform01(a);
                                    if uniform01(c).ln() <= vmin - potential(m2, lam, x) {
                                        break 'tries;
                                    }
                                }
                            }
                            x
                        })
                        .collect()
                }
            };
            logr.push(log_density(kind, &zb));
            z.extend(zb);
        }
        (z, logr)
    }

    /// log r(z) of one configuration.
    pub fn log_density(kind: &PriorKind, z: &[f64]) -> f64 {
        match *kind {
            PriorKind::Normal { mu, sigma } => z
                .iter()
                .map(|v| {
                    let n = (v - mu) / sigma;
                    -0.5 * n * n - sigma.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
                })
                .sum(),
            PriorKind::Potential {
                m2,
                lam,
                xmin,
                xmax,
            } => {
                let (_, log_norm) = potential_constants(m2, lam, xmin, xmax);
                z.iter().map(|&v| -potential(m2, lam, v) - log_norm).sum()
            }
        }
    }
}
