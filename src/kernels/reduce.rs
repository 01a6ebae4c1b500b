//! Deterministic reductions (`shaders/reduce.wgsl`): row sums and the batch loss with metrics.

use crate::gpu::{Dispatch, Gpu, GpuBuffer, KernelSpec, Shader};
use anyhow::{Result, bail};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    n: u32,
    scale: f32,
    _pad: u32,
}

/// out[r] = scale * sum_i a[r * n + i].
pub fn row_sum(
    gpu: &Gpu,
    rows: usize,
    n: usize,
    scale: f64,
    a: &GpuBuffer,
    out: &GpuBuffer,
) -> Result<Dispatch> {
    if a.len() < rows * n || out.len() < rows {
        bail!("row_sum buffers too small for {rows} x {n}");
    }
    let k = KernelSpec::new(Shader::Reduce, "row_sum").with("WG", WG);
    let u = Params {
        rows: rows as u32,
        n: n as u32,
        scale: scale as f32,
        _pad: 0,
    };
    gpu.dispatch(
        &k,
        Some(bytemuck::bytes_of(&u)),
        &[("a", a), ("out", out)],
        [rows as u32, 1, 1],
    )
}

/// Number of floats the loss kernel writes: loss, ESS per sample, max log w, mean log w.
pub const METRICS: usize = 4;

/// The loss of a batch and its metrics into `metrics` [4], and `loss_scale` dL/dlog q =
/// loss_scale / batch into `glogq` (`TapeSpec::loss_scale`).
pub fn loss(
    gpu: &Gpu,
    batch: usize,
    loss_scale: f64,
    logq: &GpuBuffer,
    action: &GpuBuffer,
    metrics: &GpuBuffer,
    glogq: &GpuBuffer,
) -> Result<Dispatch> {
    if logq.len() < batch || action.len() < batch || glogq.len() < batch || metrics.len() < METRICS
    {
        bail!("loss buffers too small for batch {batch}");
    }
    let k = KernelSpec::new(Shader::Reduce, "loss").with("WG", WG);
    let u = Params {
        rows: batch as u32,
        n: 1,
        scale: loss_scale as f32,
        _pad: 0,
    };
    gpu.dispatch(
        &k,
        Some(bytemuck::bytes_of(&u)),
        &[
            ("a", logq),
            ("b_in", action),
            ("out", metrics),
            ("grad", glogq),
        ],
        [1, 1, 1],
    )
}

/// The f64 specification.
pub mod reference {
    /// log-sum-exp, stable.
    pub fn lse(x: &[f64]) -> f64 {
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if !m.is_finite() {
            return m;
        }
        m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
    }

    /// ESS per sample of log weights: exp(2 LSE(lw) - LSE(2 lw)) / N.
    pub fn ess_per_sample(logw: &[f64]) -> f64 {
        let two: Vec<f64> = logw.iter().map(|v| 2.0 * v).collect();
        (2.0 * lse(logw) - lse(&two)).exp() / logw.len() as f64
    }

    /// [loss, ESS per sample, max log w, mean log w] with log w = -(S + log q).
    pub fn loss_metrics(logq: &[f64], action: &[f64]) -> [f64; 4] {
        let n = logq.len() as f64;
        let logw: Vec<f64> = logq.iter().zip(action).map(|(q, s)| -(q + s)).collect();
        let mean = logw.iter().sum::<f64>() / n;
        let max = logw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        [-mean, ess_per_sample(&logw), max, mean]
    }
}
