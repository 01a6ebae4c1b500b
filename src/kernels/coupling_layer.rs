//! A whole coupling layer in one dispatch each way (`shaders/coupling_layer.wgsl`). Forward:
//! the net's convolutions, their activations, the affine coupling and its log J, one sample per
//! workgroup with the sample's activations in workgroup memory. Backward: the coupling's and
//! every convolution's gradients for a chunk of samples per workgroup, the gradients flowing
//! through workgroup memory, the layer's weight gradients summed there; then one `reduce`.
//! They compute what `conv` and `coupling` compute in 4 (forward) and 10 (backward) launches
//! for the tutorial's net; their reference is the model's (`flow::reference`, built from those
//! kernels' references), and the tests compare them with it.
//!
//! A symmetrised coupling (`CouplingKind::AffineZ2`) runs its net on x and -x within the same
//! workgroup and combines the two (as `z2`'s mirror and combine); its activation buffer holds
//! the net's batch of 2B, laid out as the per-kernel path's.
//!
//! A combinational net (`CouplingNet::combi`) runs each stage's branches one after the other
//! in the same workgroup and averages them; in training under `CombiAct::Branch` the forward
//! keeps every branch's activated output after the stages' in the activation buffer
//! (`branch_len`), from which the backward takes each branch's activation derivative.
//!
//! They apply where the net is [1, HID, ..., HID, 2] (equal hidden widths) and one sample's
//! activations (forward) or gradients and the layer's weight gradients (backward) fit in
//! workgroup memory (`unfusable`, `backward_unfusable`): the tutorial's 8 x 8 lattice with
//! [8, 8] takes 4.3 and 8.3 KiB of the 16 KiB. Elsewhere the tape launches the kernels one by
//! one.

use super::LatticeBuffers;
use super::tiling::LayerTiling;
use crate::flow::{CombiAct, CouplingKind, CouplingNet, PARAM_ALIGN};
use crate::gpu::{Dispatch, Gpu, GpuBuffer, KernelSpec, Precision, Shader};
use anyhow::{Result, bail};

/// Where each convolution of a layer writes its output in the layer's activation buffer of
/// `precision`: segment j holds [batch, channels[j + 1], volume], each segment starting at a
/// multiple of 256 bytes (where a storage binding may start: 64 f32 or 128 f16 values).
/// Returns the offsets and the buffer's length, in values.
pub fn activation_offsets(
    batch: usize,
    volume: usize,
    channels: &[usize],
    precision: Precision,
) -> (Vec<usize>, usize) {
    let align = PARAM_ALIGN * 4 / precision.bytes() as usize;
    let mut offsets = Vec::with_capacity(channels.len().saturating_sub(1));
    let mut end = 0;
    for &c in &channels[1..] {
        offsets.push(end);
        end += (batch * c * volume).div_ceil(align) * align;
    }
    (offsets, end)
}

#[derive(Clone, Debug)]
pub struct CouplingLayerSpec {
    pub batch: usize,
    pub volume: usize,
    /// The layer as the model describes it (`FlowSpec::nets`); `shape` says whether this
    /// kernel knows it.
    pub net: CouplingNet,
    /// Also write every convolution's output (for the backward).
    pub train: bool,
    /// Tile as on a GPU even on a CPU adapter (the tests check that tiling on lavapipe).
    pub gpu_tiling: bool,
    /// The storage of the activations (workgroup memory and `h`); gradients stay f32.
    pub precision: Precision,
    /// The factor the gradients it is given carry (`TapeSpec::loss_scale`), which its weight
    /// gradient divides out.
    pub loss_scale: f64,
}

impl CouplingLayerSpec {
    /// (HID, NHID) when the layer is what this kernel computes: an affine coupling, plain or
    /// symmetrised, whose net is [1, HID x NHID, 2] stages (plain convolutions or
    /// combinational ones), every stage over one tap set, with LeakyReLU between.
    /// Any other block or coupling kind runs as separate kernels.
    fn shape(&self) -> Option<(usize, usize)> {
        let net = &self.net;
        let stages: Vec<&[crate::flow::ConvBlock]> = net.stages().collect();
        let n = stages.len();
        if n < 2
            || !matches!(net.coupling, CouplingKind::Affine | CouplingKind::AffineZ2)
            || stages[0][0].cin != 1
            || stages[n - 1][0].cout != 2
            || (0..n).any(|j| net.stage_taps(j) != net.stage_taps(0))
        {
            return None;
        }
        let hid = stages[0][0].cout;
        let hidden_ok = stages[..n - 1].iter().enumerate().all(|(j, st)| {
            st[0].cout == hid && (j == 0 || st[0].cin == hid) && st[0].act == super::Act::Leaky
        });
        (hidden_ok && stages[n - 1][0].cin == hid).then_some((hid, n - 1))
    }

    /// Whether each branch's activated output is kept for the backward (`KEEP` in the
    /// shader): a training combinational layer averaging after the activation.
    fn keeps_branches(&self) -> bool {
        self.train && self.net.combi() && self.net.combi_act == CombiAct::Branch
    }

    /// Floats of the branches' outputs, which the activation buffer keeps after the stages'
    /// (`h_len`): each stage's branches, [net batch, channels, V] each; 0 where none are kept.
    pub fn branch_len(&self) -> usize {
        match self.shape() {
            Some((hid, nhid)) if self.keeps_branches() => {
                self.net.branches * self.net_batch() * self.volume * (nhid * hid + 2)
            }
            _ => 0,
        }
    }

    /// Floats of the training activation buffer: every stage's output (`activation_offsets`),
    /// then every branch's (`branch_len`).
    pub fn h_len(&self) -> usize {
        let (_, len) = activation_offsets(
            self.net_batch(),
            self.volume,
            &self.net.channels(),
            self.precision,
        );
        len + self.branch_len()
    }

    /// Floats of the backward's workgroup memory for one branch's pre-activation gradient.
    fn branch_grad_floats(&self, hid: usize) -> usize {
        if self.net.combi() {
            hid.max(2) * self.volume
        } else {
            1
        }
    }

    /// Whether the net runs on x and -x (a batch of 2B).
    fn z2(&self) -> bool {
        self.net.coupling == CouplingKind::AffineZ2
    }

    /// Samples the net sees: the batch, twice it for a symmetrised coupling. The activation
    /// buffer is laid out for these (`activation_offsets`).
    pub fn net_batch(&self) -> usize {
        self.batch * self.net.coupling.net_batch_factor()
    }

    /// Taps of each convolution (of each branch; all stages share one tap set: `shape`).
    fn taps(&self) -> usize {
        self.net.convs[0].n_taps
    }

    /// How the layer's work is split over threads on `gpu` (or as on a GPU: `gpu_tiling`).
    fn tiling(&self, gpu: &Gpu) -> LayerTiling {
        LayerTiling::for_adapter(
            self.batch,
            self.volume,
            self.shape().map(|(hid, _)| hid),
            self.net.branches,
            self.net.convs[0].taps.row(),
            gpu.is_software() && !self.gpu_tiling,
        )
    }

    /// Floats of workgroup memory for activations: one HID x V buffer, two when activations go
    /// from one hidden layer to the next.
    fn activation_floats(&self, hid: usize, nhid: usize) -> usize {
        hid * self.volume * if nhid > 1 { 2 } else { 1 }
    }

    /// Floats of the forward's workgroup memory for branch 0's (s, t) in a symmetrised layer
    /// (one float otherwise: `st0`).
    fn branch_floats(&self) -> usize {
        2 * self.volume * self.z2() as usize + 1
    }

    /// Floats of the layer's parameter slice, from its first weight to its last bias.
    fn param_span(&self) -> usize {
        self.net.params().len()
    }

    /// Length of the backward's scratch of per-workgroup weight-gradient sums on `gpu`.
    pub fn partial_len(&self, gpu: &Gpu) -> usize {
        self.tiling(gpu).n_chunks * self.param_span()
    }

    /// Why this layer's backward cannot run as one dispatch on `gpu` (then its forward may
    /// still), or `None` when it can.
    pub fn backward_unfusable(&self, gpu: &Gpu) -> Option<String> {
        if let Some(why) = self.unfusable(gpu) {
            return Some(why);
        }
        let (hid, nhid) = self.shape()?;
        let floats = self.activation_floats(hid, nhid)
            + 3 * self.volume
            + self.branch_grad_floats(hid)
            + self.param_span();
        let limit = gpu.limits.max_compute_workgroup_storage_size as usize;
        (4 * floats > limit).then(|| {
            format!(
                "one sample's gradients and the layer's weight gradients need {} bytes of workgroup memory, over the adapter's {limit}",
                4 * floats
            )
        })
    }

    /// Why this layer cannot run as one dispatch on `gpu`, or `None` when it can.
    pub fn unfusable(&self, gpu: &Gpu) -> Option<String> {
        let Some((hid, nhid)) = self.shape() else {
            return Some(
                "the layer is not an affine coupling of a [1, HID, ..., HID, 2] net whose stages share one tap set"
                    .into(),
            );
        };
        let lim = &gpu.limits;
        let wg_bytes = self.precision.bytes() as usize * self.activation_floats(hid, nhid)
            + 4 * (self.branch_floats() + self.tiling(gpu).workgroup);
        if wg_bytes > lim.max_compute_workgroup_storage_size as usize {
            return Some(format!(
                "one sample's activations need {wg_bytes} bytes of workgroup memory, over the adapter's {}",
                lim.max_compute_workgroup_storage_size
            ));
        }
        let w_bytes = self.param_span().div_ceil(4) * 16;
        if w_bytes as u64 > lim.max_uniform_buffer_binding_size {
            return Some(format!(
                "the layer's {w_bytes} bytes of parameters exceed the adapter's uniform binding size {}",
                lim.max_uniform_buffer_binding_size
            ));
        }
        if !(self.net.convs[0].offset * 4)
            .is_multiple_of(lim.min_uniform_buffer_offset_alignment as usize)
        {
            return Some("the layer's parameters are not aligned for a uniform binding".into());
        }
        None
    }
}

/// The layer's input `x`, output `y`, running log q per sample, and (training) the activation
/// buffer laid out by `activation_offsets`.
pub struct CouplingLayerBuffers<'a> {
    pub lattice: &'a LatticeBuffers,
    /// The flat parameter buffer (with UNIFORM usage: `Gpu::upload_params`).
    pub params: &'a GpuBuffer,
    pub x: &'a GpuBuffer,
    pub y: &'a GpuBuffer,
    pub logq: &'a GpuBuffer,
    /// Training: where every stage's (and branch's) output goes (`CouplingLayerSpec::h_len`
    /// floats); inference: any storage buffer.
    pub h: &'a GpuBuffer,
    /// The backward's buffers; `None` builds a forward only. A layer whose backward does not
    /// fit one dispatch also builds none (`backward_unfusable`).
    pub grad: Option<CouplingLayerGrads<'a>>,
}

/// dL/dy and dL/dlog q per sample (in), dL/dx (out), the weight-gradient scratch
/// (`partial_len` floats) and the flat parameter gradient (the layer's slice written).
pub struct CouplingLayerGrads<'a> {
    pub gy: &'a GpuBuffer,
    pub gx: &'a GpuBuffer,
    pub glogq: &'a GpuBuffer,
    pub partial: &'a GpuBuffer,
    pub grads: &'a GpuBuffer,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    parity: u32,
    h_stride: u32,
    st_off: u32,
    chunk: u32,
    n_chunks: u32,
    w_first: u32,
    hb_off: u32,
    unscale: f32,
}

pub struct CouplingLayer {
    pub spec: CouplingLayerSpec,
    pub forward: Dispatch,
    /// The whole layer's backward, then the reduction of its weight gradients; empty for an
    /// inference layer or where the backward does not fit (`backward_unfusable`).
    pub backward: Vec<Dispatch>,
}

impl CouplingLayer {
    pub fn new(gpu: &Gpu, spec: CouplingLayerSpec, b: &CouplingLayerBuffers) -> Result<Self> {
        if let Some(why) = spec.unfusable(gpu) {
            bail!("coupling layer cannot run as one dispatch: {why}");
        }
        let (hid, nhid) = spec.shape().unwrap();
        let (bt, v) = (spec.batch, spec.volume);
        let convs = &spec.net.convs;
        let nbr_taps = spec.net.stage_taps(0);
        let nbr = b.lattice.table(&nbr_taps)?;
        let br = spec.net.branches;
        if spec.taps() * br != nbr_taps.count(b.lattice.lattice.nd)
            || v != b.lattice.lattice.volume()
        {
            bail!("coupling layer {spec:?} does not match the lattice tables");
        }
        let channels = spec.net.channels();
        let (h_off, h_len) = activation_offsets(spec.net_batch(), v, &channels, spec.precision);
        b.x.need(bt * v)?;
        b.y.need(bt * v)?;
        b.logq.need(bt)?;
        if spec.train {
            b.h.need(spec.h_len())?;
        }
        if !b.params.usage.contains(crate::gpu::Usage::UNIFORM) {
            bail!("buffer {} cannot be bound as a uniform", b.params.label);
        }
        let first = convs[0].offset;
        let w_bytes = spec.param_span().div_ceil(4) * 16;
        b.params.need(first + w_bytes / 4)?;
        let wu = b.params.range((first * 4) as u64, w_bytes as u64);
        // Where stage j's first branch starts in the layer's slice, and the floats between
        // two of its branches.
        let rel = |j: usize| (convs[j * br].offset - first) as u32;
        let wstride = |j: usize| {
            if br > 1 {
                (convs[j * br + 1].offset - convs[j * br].offset) as u32
            } else {
                0
            }
        };
        let tiling = spec.tiling(gpu);
        let wg = tiling.workgroup;
        let kernel = KernelSpec::new(Shader::CouplingLayer, "forward")
            .with("V", v as u32)
            .with("TAPS", spec.taps() as u32)
            .with("HID", hid as u32)
            .with("NHID", nhid as u32)
            .with("ACT_OUT", convs[nhid * br].act.code())
            .with("WG", wg as u32)
            .with("SPT", tiling.sites_per_thread as u32)
            .with("TPT", tiling.taps_per_thread as u32)
            .with("TRAIN", spec.train as u32)
            .with("Z2", spec.z2() as u32)
            .with("WLEN", (w_bytes / 16) as u32)
            .with("W_MID", if nhid > 1 { rel(1) } else { 0 })
            .with("W_MID_STRIDE", if nhid > 2 { rel(2) - rel(1) } else { 0 })
            .with("W_OUT", rel(nhid))
            .with("HLEN", spec.activation_floats(hid, nhid) as u32)
            .with("WSPAN", spec.param_span() as u32)
            .with("BR", br as u32)
            .with("WS0", wstride(0))
            .with("WSM", if nhid > 1 { wstride(1) } else { 0 })
            .with("WSO", wstride(nhid))
            .with("AFTER", (spec.net.combi_act == CombiAct::Branch) as u32)
            .with("KEEP", spec.keeps_branches() as u32)
            .with("GB", spec.branch_grad_floats(hid) as u32)
            .with_type("HS", spec.precision);
        let forward_kernel = kernel.clone();
        let forward_buffers = [
            ("nbr", nbr),
            ("parity_tbl", &b.lattice.parity),
            ("x", b.x),
            ("y", b.y),
            ("logq", b.logq),
            ("h", b.h),
            ("wu", &wu),
        ];
        let u = Params {
            batch: bt as u32,
            parity: spec.net.parity,
            h_stride: if nhid > 1 { h_off[1] as u32 } else { 0 },
            st_off: h_off[nhid] as u32,
            chunk: tiling.chunk as u32,
            n_chunks: tiling.n_chunks as u32,
            w_first: first as u32,
            hb_off: h_len as u32,
            unscale: (1.0 / spec.loss_scale) as f32,
        };
        // Work: the convolutions' multiply-adds, bias and activation per output (for each of
        // the net's samples), the coupling; memory: x read, y written, the weights, and in
        // training every activation written.
        let bv = (bt * v) as f64;
        let nbv = (spec.net_batch() * v) as f64;
        let macs: usize = convs.iter().map(|c| c.n_weights()).sum();
        let outs: usize = convs.iter().map(|c| c.cout).sum();
        // Channels of the stages' outputs, which training writes to h.
        let h_outs: usize = channels[1..].iter().sum();
        let flops = nbv * (2.0 * macs as f64 + outs as f64) + 3.0 * bv;
        let hb = spec.precision.bytes() as f64;
        let bytes = 4.0 * (2.0 * bv + spec.param_span() as f64)
            + if spec.train {
                hb * (nbv * h_outs as f64 + spec.branch_len() as f64)
            } else {
                0.0
            };
        let forward = gpu
            .dispatch(
                &forward_kernel,
                Some(bytemuck::bytes_of(&u)),
                &forward_buffers,
                [bt as u32, 1, 1],
            )?
            .with_work(flops, bytes);
        let mut backward = vec![];
        if let (Some(g), None, true) = (&b.grad, spec.backward_unfusable(gpu), spec.train) {
            g.gy.need(bt * v)?;
            g.gx.need(bt * v)?;
            g.glogq.need(bt)?;
            g.partial.need(spec.partial_len(gpu))?;
            g.grads.need(first + spec.param_span())?;
            let buffers = [
                &forward_buffers[..],
                &[
                    ("gy", g.gy),
                    ("gx", g.gx),
                    ("glogq", g.glogq),
                    ("partial", g.partial),
                    ("grads", g.grads),
                ],
            ]
            .concat();
            let bwd = kernel.clone().with_entry("backward");
            // Work: the input and weight gradients (2 x the forward's multiply-adds), the
            // coupling's; memory: activations and dL/dy read, dL/dx and the sums written.
            let partial_bytes = 4.0 * spec.partial_len(gpu) as f64;
            backward.push(
                gpu.dispatch(
                    &bwd,
                    Some(bytemuck::bytes_of(&u)),
                    &buffers,
                    [tiling.n_chunks as u32, 1, 1],
                )?
                .with_work(
                    nbv * (4.0 * macs as f64 + outs as f64) + 8.0 * bv,
                    4.0 * 3.0 * bv
                        + hb * (nbv * h_outs as f64 + spec.branch_len() as f64)
                        + partial_bytes,
                ),
            );
            let red = kernel.with_entry("reduce");
            backward.push(
                gpu.dispatch(
                    &red,
                    Some(bytemuck::bytes_of(&u)),
                    &buffers,
                    [crate::gpu::groups_for(spec.param_span(), wg), 1, 1],
                )?
                .with_work(
                    spec.partial_len(gpu) as f64,
                    partial_bytes + 4.0 * spec.param_span() as f64,
                ),
            );
        }
        Ok(CouplingLayer {
            spec,
            forward,
            backward,
        })
    }
}
