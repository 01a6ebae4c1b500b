//! The symmetrised coupling's element-wise steps (`shaders/z2.wgsl`): `mirror` makes the net's
//! batch of 2B from the frozen field and its negative, `combine` makes the coupling's (s, t)
//! even and odd in that field from the net's two outputs; their backwards. With them a coupling
//! is odd, f(-z) = -f(z), so the flow's density is symmetric, q(-phi) = q(phi).

use super::{Act, LatticeBuffers, MaskedParams};
use crate::gpu::{Dispatch, Gpu, GpuBuffer, KernelSpec, Precision, Shader, groups_for};
use anyhow::Result;

const WG: u32 = 64;

#[derive(Clone, Copy, Debug)]
pub struct Z2Spec {
    /// The coupling's batch B (the net runs on 2B).
    pub batch: usize,
    pub volume: usize,
    /// Checkerboard parity of the coupling (mirror_backward applies its mask).
    pub parity: u32,
    /// The net's final activation, differentiated per branch by combine_backward.
    pub final_act: Act,
}

/// `x` [B, V] to `xx` [2B, V]; backward (unless the input is not differentiated): `gxx`
/// [2B, V] added into `gx` [B, V] through the mask.
pub struct Mirror {
    pub forward: Dispatch,
    pub backward: Option<Dispatch>,
}

/// `u` [2B, 2, V] (the net's activated output) to `st` [B, 2, V]; backward: `gst` to `gu`
/// [2B, 2, V], the pre-activation gradient of the net's last convolution.
pub struct Combine {
    pub forward: Dispatch,
    pub backward: Option<Dispatch>,
}

/// `u`: the precision of the net's outputs (and their gradient).
fn kernel(spec: &Z2Spec, entry: &'static str, u: Precision) -> KernelSpec {
    KernelSpec::new(Shader::Z2, entry)
        .with("WG", WG)
        .with("ACT", spec.final_act.code())
        .with_type("HS", u)
}

fn uniform(spec: &Z2Spec) -> MaskedParams {
    MaskedParams::new(spec.batch, spec.volume, spec.parity)
}

fn groups(spec: &Z2Spec) -> [u32; 3] {
    [groups_for(spec.volume, WG as usize), spec.batch as u32, 1]
}

impl Mirror {
    /// `grad`: (gxx, gx), or `None` for a forward only.
    pub fn new(
        gpu: &Gpu,
        spec: Z2Spec,
        lattice: &LatticeBuffers,
        x: &GpuBuffer,
        xx: &GpuBuffer,
        grad: Option<(&GpuBuffer, &GpuBuffer)>,
    ) -> Result<Mirror> {
        let n = spec.batch * spec.volume;
        x.need(n)?;
        xx.need(2 * n)?;
        let u = uniform(&spec);
        let u = Some(bytemuck::bytes_of(&u));
        let forward = gpu
            .dispatch(
                &kernel(&spec, "mirror", Precision::F32),
                u,
                &[("x", x), ("xx", xx)],
                groups(&spec),
            )?
            .with_work(n as f64, 12.0 * n as f64);
        let backward = match grad {
            None => None,
            Some((gxx, gx)) => {
                gxx.need(2 * n)?;
                gx.need(n)?;
                Some(
                    gpu.dispatch(
                        &kernel(&spec, "mirror_backward", Precision::F32),
                        u,
                        &[("parity_tbl", &lattice.parity), ("gxx", gxx), ("gx", gx)],
                        groups(&spec),
                    )?
                    .with_work(3.0 * n as f64, 16.0 * n as f64),
                )
            }
        };
        Ok(Mirror { forward, backward })
    }
}

impl Combine {
    /// `grad`: (gst, gu), or `None` for a forward only.
    pub fn new(
        gpu: &Gpu,
        spec: Z2Spec,
        u: &GpuBuffer,
        st: &GpuBuffer,
        grad: Option<(&GpuBuffer, &GpuBuffer)>,
    ) -> Result<Combine> {
        let n = spec.batch * spec.volume;
        u.need(4 * n)?;
        st.need(2 * n)?;
        let p = uniform(&spec);
        let p = Some(bytemuck::bytes_of(&p));
        let forward = gpu
            .dispatch(
                &kernel(&spec, "combine", u.precision),
                p,
                &[("u", u), ("st", st)],
                groups(&spec),
            )?
            .with_work(4.0 * n as f64, 24.0 * n as f64);
        let backward = match grad {
            None => None,
            Some((gst, gu)) => {
                gst.need(2 * n)?;
                gu.need(4 * n)?;
                Some(
                    gpu.dispatch(
                        &kernel(&spec, "combine_backward", u.precision),
                        p,
                        &[("u", u), ("gst", gst), ("gu", gu)],
                        groups(&spec),
                    )?
                    .with_work(12.0 * n as f64, 40.0 * n as f64),
                )
            }
        };
        Ok(Combine { forward, backward })
    }
}

/// The f64 specification. Tensors are [batch, channel, site]; the net's batch is 2B, its
/// first B samples from x and its last B from -x.
pub mod reference {
    use super::super::Act;

    /// [x; -x].
    pub fn mirror(x: &[f64]) -> Vec<f64> {
        x.iter().copied().chain(x.iter().map(|v| -v)).collect()
    }

    /// dL/dx added by the net's path: mask * (gxx[b] - gxx[B + b]).
    pub fn mirror_backward(gxx: &[f64], mask: &[f64]) -> Vec<f64> {
        let (n, v) = (gxx.len() / 2, mask.len());
        (0..n)
            .map(|i| mask[i % v] * (gxx[i] - gxx[n + i]))
            .collect()
    }

    /// (s, t) = ((u_s[b] + u_s[B + b]) / 2, (u_t[b] - u_t[B + b]) / 2).
    pub fn combine(u: &[f64], volume: usize) -> Vec<f64> {
        let n = u.len() / 2;
        let mut st = vec![0.0; n];
        for (i, out) in st.iter_mut().enumerate() {
            let t = (i / volume) % 2 == 1;
            *out = 0.5 * if t { u[i] - u[n + i] } else { u[i] + u[n + i] };
        }
        st
    }

    /// The pre-activation gradient of the net's last convolution from dL/d(s, t).
    pub fn combine_backward(u: &[f64], gst: &[f64], volume: usize, act: Act) -> Vec<f64> {
        let n = gst.len();
        let mut gu = vec![0.0; 2 * n];
        for i in 0..n {
            let t = (i / volume) % 2 == 1;
            let g = 0.5 * gst[i];
            gu[i] = g * act.grad_from_output(u[i]);
            gu[n + i] = if t { -g } else { g } * act.grad_from_output(u[n + i]);
        }
        gu
    }
}
