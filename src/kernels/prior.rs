//! Prior sampling with log r(z) (`shaders/prior.wgsl`).

use super::reduction_workgroup;
use crate::gpu::{Bind, Dispatch, Gpu, GpuBuffer, KernelSpec, Shader};
use crate::rng::key_of;
use anyhow::{Result, bail};

/// Philox streams: independent uses of one seed.
pub mod stream {
    pub const TRAIN: u32 = 0;
    pub const EVAL: u32 = 1;
    pub const SAMPLE: u32 = 2;
}

#[derive(Clone, Copy, Debug)]
pub struct PriorSpec {
    pub batch: usize,
    pub volume: usize,
    pub seed: u64,
    pub stream: u32,
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
        let u = Params {
            batch: spec.batch as u32,
            volume: spec.volume as u32,
            key_lo: key[0],
            key_hi: key[1],
            stream: spec.stream,
            _pad: [0; 3],
        };
        let k = KernelSpec::new(Shader::Prior, "sample_normal")
            .with("WG", reduction_workgroup(spec.volume))
            .bind(0, Bind::Uniform)
            .bind(1, Bind::Read)
            .bind(2, Bind::ReadWrite)
            .bind(3, Bind::ReadWrite);
        let sample = gpu.dispatch(
            &k,
            Some(bytemuck::bytes_of(&u)),
            &[counter, z, logq],
            [spec.batch as u32, 1, 1],
        )?;
        Ok(Prior { spec, sample })
    }
}

/// The f64 specification: the same Philox numbers, transformed in f64.
pub mod reference {
    use crate::rng::{key_of, prior_normals};

    /// z [batch, site] and log r(z) per sample for draw index `draw`.
    pub fn sample_normal(
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
            let zb = prior_normals(key, b as u32, draw, stream, volume);
            logr.push(log_normal(&zb));
            z.extend(zb);
        }
        (z, logr)
    }

    /// log r(z) = sum_x (-z^2/2 - ln(2 pi)/2).
    pub fn log_normal(z: &[f64]) -> f64 {
        z.iter()
            .map(|v| -0.5 * v * v - 0.5 * (2.0 * std::f64::consts::PI).ln())
            .sum()
    }
}
