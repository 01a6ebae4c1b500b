//! The mean of a combinational convolution's branches: its f64 reference, and the backward of
//! the net's last stage (`shaders/combi.wgsl`). The branches and their mean run forward as one
//! convolution kernel (`kernels::conv` with `ConvSpec::branches` > 1), which writes each
//! branch's output to its row of one buffer and applies this backward between stages.

use super::Act;
use crate::flow::CombiAct;
use crate::gpu::{Dispatch, Gpu, GpuBuffer, KernelSpec, Shader, groups_for};
use anyhow::Result;

const WG: u32 = 64;

/// Floats between two branches' rows (of outputs or gradients) of `n` floats each, for a
/// stage with activation `act`: a row padded to 256 bytes (WebGPU's storage offset alignment);
/// 0 where the branches share one gradient row: under `CombiAct::Last` (dL/dy act'(y) /
/// branches, no outputs kept) and for a stage that keeps signs (`keeps_signs`: dL/dy /
/// branches, each branch's act' applied where the row is read).
pub fn row_stride(n: usize, mode: CombiAct, act: Act) -> usize {
    match mode {
        CombiAct::Branch if !keeps_signs(mode, act) => n.div_ceil(64) * 64,
        _ => 0,
    }
}

/// Whether a stage keeps only the signs of its branches' outputs for the backward: under
/// `CombiAct::Branch` each branch's activation derivative is needed, and LeakyReLU's depends
/// on the sign alone, so one bit per branch and channel replaces a float (one u32 word holds
/// 32; `sign_words`). The net's last stage (tanh, or none) keeps its outputs.
pub fn keeps_signs(mode: CombiAct, act: Act) -> bool {
    mode == CombiAct::Branch && act == Act::Leaky
}

/// u32 words per (sample, site) of a stage's signs: bit br * cout + co of word k / 32.
pub fn sign_words(branches: usize, cout: usize) -> usize {
    (branches * cout).div_ceil(32)
}

#[derive(Clone, Copy, Debug)]
pub struct CombiSpec {
    /// Rows of one branch's output: the net's batch times the stage's output channels.
    pub rows: usize,
    pub volume: usize,
    pub branches: usize,
    /// The stage's activation and where it goes.
    pub act: Act,
    pub mode: CombiAct,
    /// The stage's output channels (`rows` is a multiple).
    pub cout: usize,
}

impl CombiSpec {
    /// Floats of one branch's output.
    pub fn n(&self) -> usize {
        self.rows * self.volume
    }
    /// Floats between two branches' rows (`row_stride`).
    pub fn stride(&self) -> usize {
        row_stride(self.n(), self.mode, self.act)
    }
    /// Floats of a [branches, stride] buffer (the last row unpadded): the branches'
    /// pre-activation gradients.
    pub fn span(&self) -> usize {
        (self.branches - 1) * self.stride() + self.n()
    }
    /// What the forward keeps for the backward: the branches' outputs [branches, stride]
    /// (activations), or their signs [samples, sign_words, volume] (u32 words; `keeps_signs`).
    pub fn kept_len(&self) -> usize {
        if keeps_signs(self.mode, self.act) {
            self.rows / self.cout * sign_words(self.branches, self.cout) * self.volume
        } else {
            self.span()
        }
    }
}

/// From `gy` (dL/dy, y the stage's output [rows, volume]) to `ghb` [branches, stride], each
/// branch's pre-activation gradient, reading the branches' outputs `hb` [branches, stride]
/// under `CombiAct::Branch` or y under `Last` (hb is then unread).
pub struct Mean {
    pub backward: Dispatch,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    volume: u32,
    stride: u32,
    _pad: [u32; 2],
}

impl Mean {
    pub fn new(
        gpu: &Gpu,
        spec: CombiSpec,
        hb: &GpuBuffer,
        y: &GpuBuffer,
        gy: &GpuBuffer,
        ghb: &GpuBuffer,
    ) -> Result<Mean> {
        let (n, nb, span) = (spec.n(), spec.branches, spec.span());
        if keeps_signs(spec.mode, spec.act) {
            anyhow::bail!("the mean's backward of a stage that keeps signs runs in conv.wgsl");
        }
        hb.need(if spec.mode == CombiAct::Branch {
            span
        } else {
            1
        })?;
        y.need(n)?;
        gy.need(n)?;
        ghb.need(span)?;
        let kernel = KernelSpec::new(Shader::Combi, "backward")
            .with("WG", WG)
            .with("BR", nb as u32)
            .with("ACT", spec.act.code())
            .with("AFTER", (spec.mode == CombiAct::Branch) as u32)
            .with_type("HS", y.precision);
        let p = Params {
            volume: spec.volume as u32,
            stride: spec.stride() as u32,
            _pad: [0; 2],
        };
        let groups = [groups_for(spec.volume, WG as usize), spec.rows as u32, 1];
        let nf = n as f64;
        let backward = gpu
            .dispatch(
                &kernel,
                Some(bytemuck::bytes_of(&p)),
                &[("hb", hb), ("y", y), ("gy", gy), ("ghb", ghb)],
                groups,
            )?
            .with_work(2.0 * nb as f64 * nf, (2.0 * nb as f64 + 2.0) * nf * 4.0);
        Ok(Mean { backward })
    }
}

/// The f64 specification: branch outputs as separate vectors of one length.
pub mod reference {
    use super::super::Act;
    use crate::flow::CombiAct;

    /// The stage's output from its branches' outputs (activated under `Branch`, not under
    /// `Last`): the mean, activated after it under `Last`.
    pub fn forward(hb: &[Vec<f64>], mode: CombiAct, act: Act) -> Vec<f64> {
        let k = 1.0 / hb.len() as f64;
        (0..hb[0].len())
            .map(|i| {
                let m = hb.iter().map(|h| h[i]).sum::<f64>() * k;
                match mode {
                    CombiAct::Branch => m,
                    CombiAct::Last => act.apply(m),
                }
            })
            .collect()
    }

    /// Each branch's pre-activation gradient from dL/dy (`y` the forward's output).
    pub fn backward(
        hb: &[Vec<f64>],
        y: &[f64],
        gy: &[f64],
        mode: CombiAct,
        act: Act,
    ) -> Vec<Vec<f64>> {
        let k = 1.0 / hb.len() as f64;
        hb.iter()
            .map(|h| {
                (0..gy.len())
                    .map(|i| {
                        let from = match mode {
                            CombiAct::Branch => h[i],
                            CombiAct::Last => y[i],
                        };
                        gy[i] * k * act.grad_from_output(from)
                    })
                    .collect()
            })
            .collect()
    }
}
