//! Hybrid Monte Carlo on the GPU (`shaders/hmc.wgsl`): many independent chains side by side,
//! leapfrog trajectories and a Metropolis test per chain, all in one submit per trajectory.

use super::LatticeBuffers;
use super::action::{Action, ActionSpec};
use super::prior::{Prior, PriorSpec};
use crate::config::PriorKind;
use crate::gpu::{Dispatch, Gpu, GpuBuffer, KernelSpec, Shader};
use crate::rng::key_of;
use anyhow::{Result, bail};

const WG: u32 = 256;

/// Philox streams of HMC (the key is the run's seed).
pub const STREAM_MOMENTA: u32 = 3;
pub const STREAM_ACCEPT: u32 = 4;

#[derive(Clone, Copy, Debug)]
pub struct HmcSpec {
    pub chains: usize,
    pub m2: f64,
    pub lam: f64,
    /// Leapfrog step size and steps per trajectory.
    pub eps: f64,
    pub n_steps: usize,
    pub seed: u64,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    volume: u32,
    key_lo: u32,
    key_hi: u32,
    stream: u32,
    _pad0: u32,
    step: f32,
    _pad1: f32,
}

impl Params {
    /// The uniforms of every HMC kernel: `step` is the kick's a * eps or the drift's eps.
    fn new(spec: &HmcSpec, volume: usize, step: f64) -> Params {
        let key = key_of(spec.seed);
        Params {
            n: (spec.chains * volume) as u32,
            volume: volume as u32,
            key_lo: key[0],
            key_hi: key[1],
            stream: STREAM_ACCEPT,
            _pad0: 0,
            step: step as f32,
            _pad1: 0.0,
        }
    }
}

/// The buffers of the chains: `phi` [chains, site] is the current configuration of each.
pub struct HmcBuffers {
    pub phi: GpuBuffer,
    pub phi_saved: GpuBuffer,
    pub mom: GpuBuffer,
    pub grad: GpuBuffer,
    pub s_start: GpuBuffer,
    pub s_end: GpuBuffer,
    pub logr: GpuBuffer,
    pub kinetic: GpuBuffer,
    pub accepted: GpuBuffer,
    /// counter[0] = the trajectory index (keys the momenta and the accept uniforms).
    pub counter: GpuBuffer,
}

pub struct Hmc {
    pub spec: HmcSpec,
    pub buf: HmcBuffers,
    momenta: Prior,
    start: Action,
    end: Action,
    kick_half: Dispatch,
    kick_full: Dispatch,
    drift: Dispatch,
    kinetic: Dispatch,
    metropolis: Dispatch,
}

impl Hmc {
    pub fn new(gpu: &Gpu, spec: HmcSpec, lattice: &LatticeBuffers) -> Result<Hmc> {
        if spec.n_steps == 0 || spec.eps.is_nan() || spec.eps <= 0.0 {
            bail!("HMC needs a positive step size and at least one leapfrog step");
        }
        let v = lattice.lattice.volume();
        let n = spec.chains * v;
        let f = |label: &str, len| gpu.storage(label, len);
        let buf = HmcBuffers {
            phi: f("hmc phi", n)?,
            phi_saved: f("hmc phi at trajectory start", n)?,
            mom: f("hmc momenta", n)?,
            grad: f("hmc dS/dphi", n)?,
            s_start: f("hmc S start", spec.chains)?,
            s_end: f("hmc S end", spec.chains)?,
            logr: f("hmc momentum log density", spec.chains)?,
            kinetic: f("hmc kinetic end", spec.chains)?,
            accepted: f("hmc accepted", spec.chains)?,
            counter: gpu.upload("hmc trajectory", &[0u32; 4])?,
        };
        let momenta = Prior::new(
            gpu,
            PriorSpec {
                batch: spec.chains,
                volume: v,
                seed: spec.seed,
                stream: STREAM_MOMENTA,
                kind: PriorKind::Normal {
                    mu: 0.0,
                    sigma: 1.0,
                },
            },
            &buf.counter,
            &buf.mom,
            &buf.logr,
        )?;
        let aspec = ActionSpec {
            batch: spec.chains,
            m2: spec.m2,
            lam: spec.lam,
            scale: 1.0,
        };
        let start = Action::new(gpu, aspec, lattice, &buf.phi, &buf.s_start, &buf.grad)?;
        let end = Action::new(gpu, aspec, lattice, &buf.phi, &buf.s_end, &buf.grad)?;
        let params = |step: f64| Params::new(&spec, v, step);
        let groups = n.div_ceil(WG as usize);
        let (gx, gy) = (groups.min(65535), groups.div_ceil(65535));
        let elementwise = |entry, step: f64| -> Result<Dispatch> {
            let k = KernelSpec::new(Shader::Hmc, entry).with("WG", WG);
            Ok(gpu
                .dispatch(
                    &k,
                    Some(bytemuck::bytes_of(&params(step))),
                    &[("phi", &buf.phi), ("mom", &buf.mom), ("grad", &buf.grad)],
                    [gx as u32, gy as u32, 1],
                )?
                .with_work(2.0 * n as f64, 12.0 * n as f64))
        };
        let kick_half = elementwise("kick", 0.5 * spec.eps)?;
        let kick_full = elementwise("kick", spec.eps)?;
        let drift = elementwise("drift", spec.eps)?;
        let per_chain = [spec.chains as u32, 1, 1];
        let kinetic = gpu.dispatch(
            &KernelSpec::new(Shader::Hmc, "kinetic").with("WG", WG),
            Some(bytemuck::bytes_of(&params(0.0))),
            &[("mom", &buf.mom), ("kinetic_end", &buf.kinetic)],
            per_chain,
        )?;
        let metropolis = gpu.dispatch(
            &KernelSpec::new(Shader::Hmc, "metropolis").with("WG", WG),
            Some(bytemuck::bytes_of(&params(0.0))),
            &[
                ("phi", &buf.phi),
                ("s_start", &buf.s_start),
                ("s_end", &buf.s_end),
                ("logr_start", &buf.logr),
                ("kinetic_end", &buf.kinetic),
                ("phi_saved", &buf.phi_saved),
                ("accepted", &buf.accepted),
                ("counter", &buf.counter),
            ],
            per_chain,
        )?;
        Ok(Hmc {
            spec,
            buf,
            momenta,
            start,
            end,
            kick_half,
            kick_full,
            drift,
            kinetic,
            metropolis,
        })
    }

    /// Set every chain to `phi` (and its saved copy).
    pub fn set_phi(&self, gpu: &Gpu, phi: &[f32]) {
        gpu.write(&self.buf.phi, phi);
        gpu.write(&self.buf.phi_saved, phi);
    }

    /// Change the step size (e.g. while tuning during burn-in).
    pub fn set_step_size(&mut self, gpu: &Gpu, eps: f64) {
        self.spec.eps = eps;
        let v = self.buf.phi.len() / self.spec.chains.max(1);
        let p = |step: f64| Params::new(&self.spec, v, step);
        self.kick_half
            .write_uniform(&gpu.queue, bytemuck::bytes_of(&p(0.5 * eps)));
        self.kick_full
            .write_uniform(&gpu.queue, bytemuck::bytes_of(&p(eps)));
        self.drift
            .write_uniform(&gpu.queue, bytemuck::bytes_of(&p(eps)));
    }

    /// One trajectory of every chain, in order: momenta, S and dS/dphi at the start, leapfrog,
    /// kinetic energy, Metropolis.
    pub fn trajectory(&self) -> Vec<&Dispatch> {
        let mut d = vec![
            &self.momenta.sample,
            &self.start.action_grad,
            &self.kick_half,
        ];
        for i in 0..self.spec.n_steps {
            d.push(&self.drift);
            d.push(&self.end.action_grad);
            d.push(if i + 1 == self.spec.n_steps {
                &self.kick_half
            } else {
                &self.kick_full
            });
        }
        d.push(&self.kinetic);
        d.push(&self.metropolis);
        d
    }

    /// Run trajectory number `index` (one submit; the counter is written first).
    pub fn submit(&self, gpu: &Gpu, index: u32) {
        gpu.write(&self.buf.counter, &[index, 0, 0, 0]);
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("hmc") });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            for d in self.trajectory() {
                d.record(&mut pass);
            }
        }
        gpu.queue.submit([enc.finish()]);
    }
}

/// The f64 specification of one trajectory of one chain.
pub mod reference {
    use super::super::action::reference as action;
    use crate::lattice::Lattice;

    /// Leapfrog: returns (phi, p) after `n` steps of size `eps`.
    pub fn leapfrog(
        lat: &Lattice,
        phi: &[f64],
        p: &[f64],
        eps: f64,
        n: usize,
        m2: f64,
        lam: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut x = phi.to_vec();
        let mut q = p.to_vec();
        let g = action::grad(lat, &x, m2, lam);
        for (qi, gi) in q.iter_mut().zip(&g) {
            *qi -= 0.5 * eps * gi;
        }
        for i in 0..n {
            for (xi, qi) in x.iter_mut().zip(&q) {
                *xi += eps * qi;
            }
            let g = action::grad(lat, &x, m2, lam);
            let a = if i + 1 == n { 0.5 } else { 1.0 };
            for (qi, gi) in q.iter_mut().zip(&g) {
                *qi -= a * eps * gi;
            }
        }
        (x, q)
    }

    /// H = S(phi) + sum p^2 / 2.
    pub fn hamiltonian(lat: &Lattice, phi: &[f64], p: &[f64], m2: f64, lam: f64) -> f64 {
        action::action(lat, phi, m2, lam)[0] + p.iter().map(|x| 0.5 * x * x).sum::<f64>()
    }
}
