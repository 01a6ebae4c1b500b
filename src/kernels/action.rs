//! The lattice phi^4 action and its gradient (`shaders/action.wgsl`).

use super::{LatticeBuffers, reduction_workgroup};
use crate::gpu::{Dispatch, Gpu, GpuBuffer, KernelSpec, Shader};
use anyhow::{Result, bail};

#[derive(Clone, Copy, Debug)]
pub struct ActionSpec {
    pub batch: usize,
    pub m2: f64,
    pub lam: f64,
    /// `action_grad` writes `scale * dS/dphi` (dL/dS: 1/batch for the mean loss).
    pub scale: f64,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    volume: u32,
    m2: f32,
    lam: f32,
    scale: f32,
    _pad: [u32; 3],
}

pub struct Action {
    pub spec: ActionSpec,
    /// S per sample only.
    pub action: Dispatch,
    /// S per sample, and `scale * dS/dphi` into `grad`.
    pub action_grad: Dispatch,
}

impl Action {
    /// `phi` [batch, site] in, `s` [batch] and `grad` [batch, site] out.
    pub fn new(
        gpu: &Gpu,
        spec: ActionSpec,
        lattice: &LatticeBuffers,
        phi: &GpuBuffer,
        s: &GpuBuffer,
        grad: &GpuBuffer,
    ) -> Result<Action> {
        let v = lattice.lattice.volume();
        if phi.len() < spec.batch * v || grad.len() < spec.batch * v || s.len() < spec.batch {
            bail!("action buffers too small for batch {}", spec.batch);
        }
        let base = |entry| {
            KernelSpec::new(Shader::Action, entry)
                .with("ND", lattice.lattice.nd as u32)
                .with("WG", reduction_workgroup(v))
        };
        let u = Params {
            batch: spec.batch as u32,
            volume: v as u32,
            m2: spec.m2 as f32,
            lam: spec.lam as f32,
            scale: spec.scale as f32,
            _pad: [0; 3],
        };
        let u = Some(bytemuck::bytes_of(&u));
        let groups = [spec.batch as u32, 1, 1];
        let n = (spec.batch * v) as f64;
        let nd = lattice.lattice.nd as f64;
        let action = gpu
            .dispatch(
                &base("action"),
                u,
                &[("hop", &lattice.hop), ("phi", phi), ("action_out", s)],
                groups,
            )?
            .with_work((2.0 * nd + 6.0) * n, 4.0 * n);
        let action_grad = gpu
            .dispatch(
                &base("action_grad"),
                u,
                &[
                    ("hop", &lattice.hop),
                    ("phi", phi),
                    ("action_out", s),
                    ("grad", grad),
                ],
                groups,
            )?
            .with_work((4.0 * nd + 14.0) * n, 8.0 * n);
        Ok(Action {
            spec,
            action,
            action_grad,
        })
    }
}

/// The f64 specification, written in the kinetic form
/// S = sum_x [ sum_mu (phi(x+mu) - phi(x))^2 + m2 phi^2 + lam phi^4 ], independent of the
/// expanded form the shader uses.
pub mod reference {
    use crate::lattice::Lattice;

    pub fn action(lat: &Lattice, phi: &[f64], m2: f64, lam: f64) -> Vec<f64> {
        let v = lat.volume();
        phi.chunks(v)
            .map(|p| {
                (0..v)
                    .map(|s| {
                        let kin: f64 = (0..lat.nd)
                            .map(|mu| {
                                let mut o = vec![0i64; lat.nd];
                                o[mu] = 1;
                                (p[lat.shift(s, &o)] - p[s]).powi(2)
                            })
                            .sum();
                        kin + m2 * p[s] * p[s] + lam * p[s].powi(4)
                    })
                    .sum()
            })
            .collect()
    }

    /// dS/dphi = 2 (2 Nd + m2) phi + 4 lam phi^3 - 2 sum_mu [phi(x+mu) + phi(x-mu)].
    pub fn grad(lat: &Lattice, phi: &[f64], m2: f64, lam: f64) -> Vec<f64> {
        let v = lat.volume();
        let nd = lat.nd as f64;
        let mut g = Vec::with_capacity(phi.len());
        for p in phi.chunks(v) {
            for s in 0..v {
                let mut nb = 0.0;
                for mu in 0..lat.nd {
                    let mut o = vec![0i64; lat.nd];
                    o[mu] = 1;
                    nb += p[lat.shift(s, &o)];
                    o[mu] = -1;
                    nb += p[lat.shift(s, &o)];
                }
                g.push(2.0 * (2.0 * nd + m2) * p[s] + 4.0 * lam * p[s].powi(3) - 2.0 * nb);
            }
        }
        g
    }
}
