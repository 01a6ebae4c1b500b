//! The rational-quadratic spline coupling with a checkerboard mask (`shaders/spline.wgsl`):
//! Durkan et al.'s neural spline flow transform (arXiv 1906.04032) on [-B, B], the identity
//! outside. Each active site's transform is a monotone piecewise rational-quadratic map with
//! K bins, whose widths, heights and interior knot derivatives are the net's 3K - 1 output
//! channels at that site: channels 0..K the bins' widths (before a softmax), K..2K their
//! heights, 2K..3K-1 the derivatives at the K - 1 interior knots (before a softplus). The knots
//! at +-B have derivative 1, so the map joins the identity tails smoothly, and a net whose
//! output is zero (the identity start) gives equal bins and unit slopes: the identity map.

use super::{Act, reduction_workgroup};
use crate::gpu::{Gpu, KernelSpec, Shader};
use crate::kernels::coupling::{Coupling, CouplingBuffers};
use anyhow::Result;

/// The smallest bin width and height, as a fraction of 2B: no bin collapses.
pub const MIN_BIN: f64 = 1e-3;
/// The smallest knot derivative.
pub const MIN_SLOPE: f64 = 1e-3;

/// Net output channels of a spline coupling with `bins` bins: widths, heights, interior slopes.
pub fn channels(bins: usize) -> usize {
    3 * bins - 1
}

/// The softplus shift that maps a zero net output to slope 1: MIN_SLOPE + softplus(0 + SHIFT)
/// = 1.
pub fn slope_shift() -> f64 {
    (1.0 - MIN_SLOPE).exp_m1().ln()
}

#[derive(Clone, Copy, Debug)]
pub struct SplineSpec {
    pub batch: usize,
    pub volume: usize,
    /// Checkerboard parity: mask(site) = parity_table[site] ^ parity, 1 = frozen.
    pub parity: u32,
    /// K, the bins (>= 2).
    pub bins: usize,
    /// B: the spline covers [-B, B].
    pub bound: f64,
    /// The net's final activation (whose derivative backward applies to every channel).
    pub final_act: Act,
}

/// spline.wgsl's uniform block.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    volume: u32,
    parity: u32,
    bound: f32,
}

impl Coupling {
    /// The spline coupling. `b.st` is the net's output [batch, 3K - 1, site]; everything else
    /// as the affine coupling's.
    pub fn spline(gpu: &Gpu, spec: SplineSpec, b: &CouplingBuffers) -> Result<Coupling> {
        anyhow::ensure!(spec.bins >= 2, "a spline coupling needs at least 2 bins");
        let n = spec.batch * spec.volume;
        let c = channels(spec.bins);
        let kernel = KernelSpec::new(Shader::Spline, "forward")
            .with("WG", reduction_workgroup(spec.volume))
            .with("K", spec.bins as u32)
            .with("ACT", spec.final_act.code())
            .with_type("HS", b.st.precision);
        let u = Params {
            batch: spec.batch as u32,
            volume: spec.volume as u32,
            parity: spec.parity,
            bound: spec.bound as f32,
        };
        // Per active site: two softmaxes and a bin search (~6K flops), the rational quadratic
        // (~30); backward about three times that.
        let flops = (6 * spec.bins + 30) as f64 * n as f64 / 2.0;
        Coupling::build(gpu, kernel, bytemuck::bytes_of(&u), b, spec.batch, c, flops)
    }
}

/// The f64 specification. `mask` is 0/1 per site (1 = frozen); `st` is [batch, 3K - 1, site]
/// (after the net's final activation).
pub mod reference {
    use super::{Act, MIN_BIN, MIN_SLOPE, channels, slope_shift};

    fn softplus(x: f64) -> f64 {
        if x > 20.0 { x } else { x.exp().ln_1p() }
    }

    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// One site's spline: the softmax probabilities of widths and heights, the bins' widths
    /// and heights, and the K + 1 knot slopes.
    struct Knots {
        pw: Vec<f64>,
        ph: Vec<f64>,
        w: Vec<f64>,
        h: Vec<f64>,
        d: Vec<f64>,
    }

    fn softmax(u: &[f64]) -> Vec<f64> {
        let m = u.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = u.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    fn knots(raw: &[f64], k: usize, bound: f64) -> Knots {
        let pw = softmax(&raw[..k]);
        let ph = softmax(&raw[k..2 * k]);
        let size = |p: &f64| 2.0 * bound * (MIN_BIN + (1.0 - k as f64 * MIN_BIN) * p);
        let mut d = vec![1.0; k + 1];
        for i in 1..k {
            d[i] = MIN_SLOPE + softplus(raw[2 * k + i - 1] + slope_shift());
        }
        Knots {
            w: pw.iter().map(size).collect(),
            h: ph.iter().map(size).collect(),
            pw,
            ph,
            d,
        }
    }

    /// The bin holding x (the number of interior knots at or left of x) and its left knot.
    fn bin(x: f64, kn: &Knots, bound: f64) -> (usize, f64, f64) {
        let (mut b, mut xk, mut yk) = (0, -bound, -bound);
        let (mut cx, mut cy) = (-bound, -bound);
        for j in 0..kn.w.len() - 1 {
            cx += kn.w[j];
            cy += kn.h[j];
            if cx <= x {
                (b, xk, yk) = (j + 1, cx, cy);
            }
        }
        (b, xk, yk)
    }

    /// The rational quadratic of the bin b holding x (inside [-B, B]): its left knot yk,
    /// width w, height h, end slopes d0, d1, and its terms at x: xi = (x - xk) / w, s = h / w,
    /// om = xi (1 - xi); y = yk + h num / den and dy/dx = s^2 m / den^2.
    struct Eval {
        kn: Knots,
        b: usize,
        yk: f64,
        w: f64,
        h: f64,
        d0: f64,
        d1: f64,
        s: f64,
        xi: f64,
        om: f64,
        num: f64,
        den: f64,
        m: f64,
    }

    fn evaluate(x: f64, raw: &[f64], k: usize, bound: f64) -> Eval {
        let kn = knots(raw, k, bound);
        let (b, xk, yk) = bin(x, &kn, bound);
        let (w, h, d0, d1) = (kn.w[b], kn.h[b], kn.d[b], kn.d[b + 1]);
        let (s, xi) = (h / w, (x - xk) / w);
        let om = xi * (1.0 - xi);
        Eval {
            num: s * xi * xi + d0 * om,
            den: s + (d0 + d1 - 2.0 * s) * om,
            m: d1 * xi * xi + 2.0 * s * om + d0 * (1.0 - xi) * (1.0 - xi),
            kn,
            b,
            yk,
            w,
            h,
            d0,
            d1,
            s,
            xi,
            om,
        }
    }

    /// The spline at one site: y and log dy/dx. `raw` holds the site's 3K - 1 channels.
    pub fn site(x: f64, raw: &[f64], k: usize, bound: f64) -> (f64, f64) {
        if x <= -bound || x >= bound {
            return (x, 0.0);
        }
        let e = evaluate(x, raw, k, bound);
        (
            e.yk + e.h * e.num / e.den,
            2.0 * e.s.ln() + e.m.ln() - 2.0 * e.den.ln(),
        )
    }

    /// dL/dx and dL/d(raw) at one site, given dL/dy and dL/d(log dy/dx).
    pub fn site_grad(
        x: f64,
        raw: &[f64],
        k: usize,
        bound: f64,
        gy: f64,
        gj: f64,
    ) -> (f64, Vec<f64>) {
        let mut g = vec![0.0; channels(k)];
        if x <= -bound || x >= bound {
            return (gy, g);
        }
        let e = evaluate(x, raw, k, bound);
        let Eval {
            ref kn,
            b,
            w,
            h,
            d0,
            d1,
            s,
            xi,
            om,
            num,
            den,
            m,
            ..
        } = e;
        let den2 = den * den;
        // Partials in (xi, s, d0, d1, h) with the others fixed.
        let (num_xi, den_xi) = (
            2.0 * s * xi + d0 * (1.0 - 2.0 * xi),
            (d0 + d1 - 2.0 * s) * (1.0 - 2.0 * xi),
        );
        let m_xi = 2.0 * d1 * xi + 2.0 * s * (1.0 - 2.0 * xi) - 2.0 * d0 * (1.0 - xi);
        let g_xi =
            gy * h * (num_xi * den - num * den_xi) / den2 + gj * (m_xi / m - 2.0 * den_xi / den);
        let g_s = gy * h * (xi * xi * den - num * (1.0 - 2.0 * om)) / den2
            + gj * (2.0 / s + 2.0 * om / m - 2.0 * (1.0 - 2.0 * om) / den);
        let g_d0 =
            gy * h * om * (den - num) / den2 + gj * ((1.0 - xi) * (1.0 - xi) / m - 2.0 * om / den);
        let g_d1 = -gy * h * num * om / den2 + gj * (xi * xi / m - 2.0 * om / den);
        // Through xi = (x - x_b) / w and s = h / w to x, the left knots, w and h.
        let gx = g_xi / w;
        let g_left_x = -g_xi / w;
        let g_w = -(g_xi * xi + g_s * s) / w;
        let g_h = gy * num / den + g_s / w;
        // The left knot is -B plus the widths (heights) of the bins before b; the widths
        // and heights come from softmaxes scaled by c.
        let c = 2.0 * bound * (1.0 - k as f64 * MIN_BIN);
        let gw: Vec<f64> = (0..k)
            .map(|j| {
                if j < b {
                    g_left_x
                } else if j == b {
                    g_w
                } else {
                    0.0
                }
            })
            .collect();
        let gh: Vec<f64> = (0..k)
            .map(|j| {
                if j < b {
                    gy
                } else if j == b {
                    g_h
                } else {
                    0.0
                }
            })
            .collect();
        for (off, p, gv) in [(0, &kn.pw, &gw), (k, &kn.ph, &gh)] {
            let mean: f64 = p.iter().zip(gv.iter()).map(|(a, b)| a * b).sum();
            for j in 0..k {
                g[off + j] = c * p[j] * (gv[j] - mean);
            }
        }
        // Interior slopes d_i = MIN_SLOPE + softplus(raw + shift), i = 1..K-1.
        for (i, gd) in [(b, g_d0), (b + 1, g_d1)] {
            if (1..k).contains(&i) {
                let r = raw[2 * k + i - 1];
                g[2 * k + i - 1] += gd * sigmoid(r + slope_shift());
            }
        }
        (gx, g)
    }

    fn site_raw(st: &[f64], b: usize, s: usize, v: usize, c: usize) -> Vec<f64> {
        (0..c).map(|ch| st[(b * c + ch) * v + s]).collect()
    }

    /// Returns y and log J per sample.
    pub fn forward(
        x: &[f64],
        st: &[f64],
        mask: &[f64],
        batch: usize,
        k: usize,
        bound: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let (v, c) = (mask.len(), channels(k));
        let mut y = x.to_vec();
        let mut logj = vec![0.0; batch];
        for b in 0..batch {
            for s in (0..v).filter(|&s| mask[s] == 0.0) {
                let (yv, lj) = site(x[b * v + s], &site_raw(st, b, s, v, c), k, bound);
                y[b * v + s] = yv;
                logj[b] += lj;
            }
        }
        (y, logj)
    }

    /// Gradients of L with respect to x (direct path only) and to the net's pre-activation
    /// output, given dL/dy and dL/dlog q per sample (log q decreases by log J).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        x: &[f64],
        st: &[f64],
        mask: &[f64],
        gy: &[f64],
        glogq: &[f64],
        k: usize,
        bound: f64,
        final_act: Act,
    ) -> (Vec<f64>, Vec<f64>) {
        let (v, c) = (mask.len(), channels(k));
        let batch = glogq.len();
        let mut gx = gy.to_vec();
        let mut gst = vec![0.0; c * batch * v];
        for b in 0..batch {
            for s in (0..v).filter(|&s| mask[s] == 0.0) {
                let raw = site_raw(st, b, s, v, c);
                let (g, graw) = site_grad(x[b * v + s], &raw, k, bound, gy[b * v + s], -glogq[b]);
                gx[b * v + s] = g;
                for ch in 0..c {
                    gst[(b * c + ch) * v + s] = graw[ch] * final_act.grad_from_output(raw[ch]);
                }
            }
        }
        (gx, gst)
    }
}
