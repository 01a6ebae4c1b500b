//! The affine coupling with a checkerboard mask (`shaders/coupling.wgsl`).

use super::{Act, LatticeBuffers, MaskedParams, reduction_workgroup};
use crate::gpu::{Dispatch, Gpu, GpuBuffer, KernelSpec, Shader};
use anyhow::Result;

#[derive(Clone, Copy, Debug)]
pub struct CouplingSpec {
    pub batch: usize,
    pub volume: usize,
    /// Checkerboard parity: mask(site) = parity_table[site] ^ parity, 1 = frozen.
    pub parity: u32,
    /// The coupling net's final activation (whose derivative backward applies to ds, dt).
    pub final_act: Act,
}

/// `x` the coupling's input, `st` the net's output [batch, 2, site], `y` the output, `logq`
/// the running log q per sample.
pub struct CouplingBuffers<'a> {
    pub lattice: &'a LatticeBuffers,
    pub x: &'a GpuBuffer,
    pub st: &'a GpuBuffer,
    pub y: &'a GpuBuffer,
    pub logq: &'a GpuBuffer,
    /// The backward's buffers; `None` builds a forward-only coupling.
    pub grad: Option<CouplingGrads<'a>>,
}

/// Gradients of y (in), of x and st (out), and of log q per sample (in).
pub struct CouplingGrads<'a> {
    pub gy: &'a GpuBuffer,
    pub gx: &'a GpuBuffer,
    pub gst: &'a GpuBuffer,
    pub glogq: &'a GpuBuffer,
}

/// A coupling transform as the tape records it: its forward and (training) backward dispatch,
/// one workgroup per sample. The affine family (`coupling.wgsl`) is built by `new`, the spline
/// family (`spline.wgsl`) by `Coupling::spline` (`kernels::spline`); both bind the same
/// buffers, the net's output `st` with as many channels per site as the family reads.
pub struct Coupling {
    pub forward: Dispatch,
    pub backward: Option<Dispatch>,
}

impl Coupling {
    /// The affine coupling.
    pub fn new(gpu: &Gpu, spec: CouplingSpec, b: &CouplingBuffers) -> Result<Coupling> {
        let kernel = KernelSpec::new(Shader::Coupling, "forward")
            .with("WG", reduction_workgroup(spec.volume))
            .with("ACT", spec.final_act.code())
            // (s, t) and its gradient are stored as the net stored them.
            .with_type("HS", b.st.precision);
        let u = MaskedParams::new(spec.batch, spec.volume, spec.parity);
        let flops = 3.0 * (spec.batch * spec.volume) as f64;
        Self::build(gpu, kernel, bytemuck::bytes_of(&u), b, spec.batch, 2, flops)
    }

    /// A family's two dispatches: `kernel` names the family and its constants (at entry
    /// `forward`), `uniform` its parameter block, `channels` the net's outputs per site;
    /// `flops` the forward's work (the backward's is taken as 3x).
    pub(crate) fn build(
        gpu: &Gpu,
        kernel: KernelSpec,
        uniform: &[u8],
        b: &CouplingBuffers,
        batch: usize,
        channels: usize,
        flops: f64,
    ) -> Result<Coupling> {
        let n = batch * b.lattice.lattice.volume();
        let mut sizes = vec![(b.x, n), (b.y, n), (b.st, channels * n), (b.logq, batch)];
        if let Some(g) = &b.grad {
            sizes.extend([
                (g.gx, n),
                (g.gy, n),
                (g.gst, channels * n),
                (g.glogq, batch),
            ]);
        }
        for (buf, len) in sizes {
            buf.need(len)?;
        }
        let u = Some(uniform);
        let groups = [batch as u32, 1, 1];
        // Bytes moved: x, y and the channels forward; twice that and the gradients backward.
        let bytes = ((2 + channels) * n * 4) as f64;
        let forward = gpu
            .dispatch(
                &kernel,
                u,
                &[
                    ("parity_tbl", &b.lattice.parity),
                    ("x", b.x),
                    ("st", b.st),
                    ("y", b.y),
                    ("logq", b.logq),
                ],
                groups,
            )?
            .with_work(flops, bytes);
        let backward = match &b.grad {
            None => None,
            Some(g) => Some(
                gpu.dispatch(
                    &kernel.with_entry("backward"),
                    u,
                    &[
                        ("parity_tbl", &b.lattice.parity),
                        ("x", b.x),
                        ("st", b.st),
                        ("gy", g.gy),
                        ("gx", g.gx),
                        ("gst", g.gst),
                        ("glogq", g.glogq),
                    ],
                    groups,
                )?
                .with_work(3.0 * flops, 2.0 * bytes),
            ),
        };
        Ok(Coupling { forward, backward })
    }
}

/// The f64 specification. `mask` is 0/1 per site (1 = frozen); `st` is [batch, 2, site].
pub mod reference {
    use super::super::Act;

    /// Returns y and log J per sample.
    pub fn forward(x: &[f64], st: &[f64], mask: &[f64], batch: usize) -> (Vec<f64>, Vec<f64>) {
        let v = mask.len();
        let mut y = vec![0.0; batch * v];
        let mut logj = vec![0.0; batch];
        for b in 0..batch {
            for s in 0..v {
                let (xv, sv, tv) = (x[b * v + s], st[2 * b * v + s], st[(2 * b + 1) * v + s]);
                let m = mask[s];
                y[b * v + s] = m * xv + (1.0 - m) * (xv * sv.exp() + tv);
                logj[b] += (1.0 - m) * sv;
            }
        }
        (y, logj)
    }

    /// Gradients of L with respect to x (direct path only) and to the net's pre-activation
    /// output, given dL/dy and dL/dlog q per sample (log q decreases by log J).
    pub fn backward(
        x: &[f64],
        st: &[f64],
        mask: &[f64],
        gy: &[f64],
        glogq: &[f64],
        final_act: Act,
    ) -> (Vec<f64>, Vec<f64>) {
        let v = mask.len();
        let batch = glogq.len();
        let mut gx = vec![0.0; batch * v];
        let mut gst = vec![0.0; 2 * batch * v];
        for b in 0..batch {
            for s in 0..v {
                let (xv, sv, tv) = (x[b * v + s], st[2 * b * v + s], st[(2 * b + 1) * v + s]);
                let (m, dy) = (mask[s], gy[b * v + s]);
                gx[b * v + s] = m * dy + (1.0 - m) * dy * sv.exp();
                gst[2 * b * v + s] =
                    (1.0 - m) * (dy * xv * sv.exp() - glogq[b]) * final_act.grad_from_output(sv);
                gst[(2 * b + 1) * v + s] = (1.0 - m) * dy * final_act.grad_from_output(tv);
            }
        }
        (gx, gst)
    }
}
