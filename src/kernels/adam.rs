//! Adam over one flat parameter buffer (`shaders/adam.wgsl`), and the step counter.

use crate::gpu::{Dispatch, Gpu, GpuBuffer, KernelSpec, Shader};
use anyhow::{Result, bail};

const WG: u32 = 256;

#[derive(Clone, Copy, Debug)]
pub struct AdamSpec {
    pub n: usize,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl AdamSpec {
    /// PyTorch's and Flux's defaults.
    pub fn new(n: usize, lr: f64) -> Self {
        AdamSpec {
            n,
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    _pad: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    ln_beta1: f32,
    ln_beta2: f32,
}

fn params(s: &AdamSpec) -> Params {
    Params {
        n: s.n as u32,
        _pad: 0,
        lr: s.lr as f32,
        beta1: s.beta1 as f32,
        beta2: s.beta2 as f32,
        eps: s.eps as f32,
        ln_beta1: s.beta1.ln() as f32,
        ln_beta2: s.beta2.ln() as f32,
    }
}

pub struct Adam {
    pub spec: AdamSpec,
    /// The update; t = state[0] + 1.
    pub step: Dispatch,
    /// state[0] += 1, recorded last in a training step.
    pub advance: Dispatch,
}

impl Adam {
    pub fn new(
        gpu: &Gpu,
        spec: AdamSpec,
        state: &GpuBuffer,
        params_buf: &GpuBuffer,
        grads: &GpuBuffer,
        m: &GpuBuffer,
        v: &GpuBuffer,
    ) -> Result<Adam> {
        for b in [params_buf, grads, m, v] {
            if b.len() < spec.n {
                bail!("Adam buffer {} smaller than {} parameters", b.label, spec.n);
            }
        }
        // 2D grid: x up to 65535 workgroups per the default limits.
        let groups = spec.n.div_ceil(WG as usize).max(1);
        let gx = groups.min(65535);
        let gy = groups.div_ceil(gx);
        let k = KernelSpec::new(Shader::Adam, "adam").with("WG", WG);
        let u = params(&spec);
        let step = gpu
            .dispatch(
                &k,
                Some(bytemuck::bytes_of(&u)),
                &[
                    ("state", state),
                    ("params", params_buf),
                    ("grads", grads),
                    ("m1", m),
                    ("m2", v),
                ],
                [gx as u32, gy as u32, 1],
            )?
            .with_work(14.0 * spec.n as f64, 28.0 * spec.n as f64);
        let a = KernelSpec::new(Shader::Adam, "advance");
        let advance = gpu.dispatch(&a, None, &[("state_rw", state)], [1, 1, 1])?;
        Ok(Adam {
            spec,
            step,
            advance,
        })
    }

    /// Change the learning rate (a schedule boundary); takes effect at the next submit.
    pub fn set_lr(&mut self, gpu: &Gpu, lr: f64) {
        self.spec.lr = lr;
        self.step
            .write_uniform(&gpu.queue, bytemuck::bytes_of(&params(&self.spec)));
    }
}

/// The f64 specification: one Adam step at step number t (1-based).
pub mod reference {
    use super::AdamSpec;

    pub fn step(s: &AdamSpec, t: u64, p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64]) {
        let bc1 = 1.0 - s.beta1.powi(t as i32);
        let bc2 = 1.0 - s.beta2.powi(t as i32);
        for i in 0..p.len() {
            m[i] = s.beta1 * m[i] + (1.0 - s.beta1) * g[i];
            v[i] = s.beta2 * v[i] + (1.0 - s.beta2) * g[i] * g[i];
            p[i] -= s.lr * (m[i] / bc1) / ((v[i] / bc2).sqrt() + s.eps);
        }
    }
}
