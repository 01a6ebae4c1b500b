//! Periodic convolution (`shaders/conv.wgsl`): forward with fused bias and activation, backward
//! to the input (with a fused epilogue), backward to weights and bias (two deterministic stages).

use super::combi::{keeps_signs, row_stride, sign_words};
use super::tiling::ConvTiling;
use super::{Act, LatticeBuffers};
use crate::flow::{CombiAct, Taps};
use crate::gpu::{Dispatch, Gpu, GpuBuffer, KernelSpec, Precision, Shader, groups_for};
use anyhow::{Result, bail};

/// Threads per workgroup of the site-parallel entry points.
const WG: u32 = 64;
/// Sizes of one convolution layer applied to a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvDims {
    pub batch: usize,
    pub volume: usize,
    /// k^Nd.
    pub taps: usize,
    pub cin: usize,
    pub cout: usize,
    /// Sites along the lattice's last (fastest) axis, L: where it is a multiple of 4, forward
    /// and backward_input can take 4 consecutive sites per thread (`ConvTiling::forward_sites`).
    pub extent: usize,
}

impl ConvDims {
    /// Weights without the bias: COUT * CIN * TAPS.
    pub fn n_kernel(&self) -> usize {
        self.cout * self.cin * self.taps
    }
    /// Weights and bias: the layer's slice of the flat parameter buffer.
    pub fn n_params(&self) -> usize {
        self.n_kernel() + self.cout
    }
    /// Multiply-adds of the forward pass.
    pub fn macs(&self) -> usize {
        self.batch * self.volume * self.n_kernel()
    }
}

/// What `backward_input` does with the gradient it computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputGrad {
    /// No input gradient (the input is not differentiated, e.g. the flow's prior sample).
    Skip,
    /// gx = dL/dx.
    Write,
    /// gx = dL/dx * act'(x): the pre-activation gradient of the layer that produced x.
    TimesActGrad(Act),
    /// gx += mask * dL/dx, for the first convolution of a coupling, whose input is mask * x.
    AddMasked,
    /// The input is the mean of a combinational stage with this activation (`ConvSpec::
    /// branches` of them, combined as `ConvSpec::combi_act`): gx gets each of its branches'
    /// pre-activation gradients, row b at b * `combi::row_stride`, from `ConvGrads::hb_in`.
    ToBranches(Act),
}

#[derive(Clone, Debug)]
pub struct ConvSpec {
    pub dims: ConvDims,
    /// The tap set (its neighbour table is `LatticeBuffers::table`); `dims.taps` taps.
    pub taps: Taps,
    pub act: Act,
    /// The input is masked by the coupling's checkerboard of `parity`.
    pub in_mask: bool,
    pub parity: u32,
    /// Offset of the weights (then the bias) in the flat parameter and gradient buffers.
    pub w_off: usize,
    pub input_grad: InputGrad,
    /// How the work is split over threads (`ConvTiling::for_adapter` unless a test picks).
    pub tiling: ConvTiling,
    /// Branches of a combinational convolution computed together (1: a plain convolution).
    /// `taps` is then `Taps::Branches`, `dims.taps` one branch's; branch b's parameters are
    /// at w_off + b * w_stride; the forward writes each branch's output to row b of
    /// `ConvBuffers::hb` and their mean to y, and `gy` holds the branches' gradients.
    pub branches: usize,
    pub w_stride: usize,
    pub combi_act: CombiAct,
    /// The storage of the activations it reads and writes (`[device] precision`): its output
    /// side (y, gy, the branches' outputs) and its input side, except the first convolution
    /// of a net (`in_mask`), whose input is the f32 field.
    pub precision: Precision,
    /// The factor the gradients it is given carry (`TapeSpec::loss_scale`), which its weight
    /// gradient divides out.
    pub loss_scale: f64,
}

impl ConvSpec {
    /// The storage type of x and gx (and of the previous stage's branches).
    pub fn in_type(&self) -> Precision {
        if self.in_mask {
            Precision::F32
        } else {
            self.precision
        }
    }
    /// Floats between two branches' rows of the outputs (and of gy); 0 where the branches
    /// share one gradient row (`combi::row_stride`).
    pub fn stride(&self) -> usize {
        let d = &self.dims;
        row_stride(d.batch * d.cout * d.volume, self.combi_act, self.act)
    }

    /// ... and of the inputs (and of gx, for `InputGrad::ToBranches`).
    pub fn stride_in(&self) -> usize {
        let d = &self.dims;
        row_stride(d.batch * d.cin * d.volume, self.combi_act, self.act_in())
    }

    /// The activation of the previous stage, whose branches `InputGrad::ToBranches` feeds.
    fn act_in(&self) -> Act {
        match self.input_grad {
            InputGrad::ToBranches(a) => a,
            _ => Act::None,
        }
    }

    /// The forward keeps its branches' signs, not their outputs (`combi::keeps_signs`), and gy
    /// is one row whose act' the backward applies per branch.
    pub fn signs(&self) -> bool {
        self.branches > 1 && keeps_signs(self.combi_act, self.act)
    }

    /// The previous stage keeps signs: `InputGrad::ToBranches` writes one row, dL/dx / branches.
    pub fn signs_in(&self) -> bool {
        matches!(self.input_grad, InputGrad::ToBranches(_))
            && keeps_signs(self.combi_act, self.act_in())
    }

    /// 4-byte words of `ConvBuffers::hb`: the branches' outputs [branches, stride], or their
    /// signs [batch, sign_words, volume].
    pub fn kept_len(&self) -> usize {
        let d = &self.dims;
        if self.signs() {
            d.batch * sign_words(self.branches, d.cout) * d.volume
        } else {
            (self.branches - 1) * self.stride() + d.batch * d.cout * d.volume
        }
    }

    /// The span of the branches' parameters in the flat buffer (padding between included).
    pub fn param_span(&self) -> usize {
        (self.branches - 1) * self.w_stride + self.dims.n_params()
    }

    /// What this convolution's best tiling depends on (`crate::tune`): its shape, its
    /// branches and where they are averaged, its input mask and input-gradient epilogue.
    pub fn tune_key(&self) -> String {
        let d = &self.dims;
        let grad = match self.input_grad {
            InputGrad::Skip => "no input gradient",
            InputGrad::Write => "input gradient",
            InputGrad::TimesActGrad(_) => "input gradient times act'",
            InputGrad::AddMasked => "masked input gradient",
            InputGrad::ToBranches(_) if self.signs_in() => "input gradient to branches (one row)",
            InputGrad::ToBranches(_) => "input gradient to branches",
        };
        let storage = self.precision.key_suffix();
        let branches = match (self.branches, self.combi_act) {
            (1, _) => String::new(),
            (b, CombiAct::Branch) if self.signs() => {
                format!(" x {b} branches (mean after the activation, signs kept)")
            }
            (b, CombiAct::Branch) => format!(" x {b} branches (mean after the activation)"),
            (b, CombiAct::Last) => format!(" x {b} branches (mean before the activation)"),
        };
        format!(
            "conv {} -> {}, {} taps{branches} (rows of {}), {} sites, batch {}{}, {grad}{storage}",
            d.cin,
            d.cout,
            d.taps,
            self.taps.row(),
            d.volume,
            d.batch,
            if self.in_mask { ", masked input" } else { "" }
        )
    }

    pub fn n_chunks(&self) -> usize {
        self.dims.batch.div_ceil(self.tiling.chunk)
    }
    /// Length of the scratch buffer of weight-gradient partial sums.
    pub fn partial_len(&self) -> usize {
        self.n_chunks() * self.param_span()
    }
}

/// The buffers one convolution reads and writes. `x` is its input as the forward saw it
/// (unmasked: masking is fused), `y` its activated output.
pub struct ConvBuffers<'a> {
    pub lattice: &'a LatticeBuffers,
    pub params: &'a GpuBuffer,
    pub x: &'a GpuBuffer,
    pub y: &'a GpuBuffer,
    /// Branches > 1: the branches' outputs [branches, stride].
    pub hb: Option<&'a GpuBuffer>,
    /// The backward's buffers; `None` builds a forward-only layer.
    pub grad: Option<ConvGrads<'a>>,
}

/// `grads` the flat parameter gradient, `gy` the gradient of the pre-activation output,
/// `gx` the gradient of the input, `partial` the weight-gradient scratch.
pub struct ConvGrads<'a> {
    pub grads: &'a GpuBuffer,
    pub gy: &'a GpuBuffer,
    pub gx: &'a GpuBuffer,
    pub partial: &'a GpuBuffer,
    /// `InputGrad::ToBranches`: the previous stage's branch outputs.
    pub hb_in: Option<&'a GpuBuffer>,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    volume: u32,
    w_off: u32,
    parity: u32,
    chunk: u32,
    n_weights: u32,
    n_chunks: u32,
    stride: u32,
    stride_in: u32,
    unscale: f32,
    _pad: [u32; 2],
}

/// The dispatches of one convolution layer.
pub struct Conv {
    pub spec: ConvSpec,
    pub forward: Dispatch,
    /// Weight gradient (two stages), then the input gradient (absent for `InputGrad::Skip`).
    pub backward: Vec<Dispatch>,
}

impl Conv {
    /// Whether `t` tiles `spec`: taps per thread a divisor of the taps, at most 25 (more than
    /// a 5 x 5 plane per thread exhausts lavapipe's private memory: 81 taps gave wrong results
    /// there, and no adapter gains from it), output channels per thread a divisor of COUT,
    /// at least one sample per thread and per chunk, 1 or 4 sites per weight-gradient step (4
    /// where the volume, and so every row of gy and bits, splits into vec4s), 1 or 4 sites per
    /// forward and backward_input thread (where `ConvTiling::forward_sites_fit`).
    pub fn tiling_valid(spec: &ConvSpec, t: &ConvTiling) -> bool {
        let d = &spec.dims;
        let sites_ok = match t.sites_per_thread {
            1 => true,
            4 => d.volume.is_multiple_of(4) && spec.stride().is_multiple_of(4),
            _ => false,
        };
        let rows_ok = match t.forward_sites {
            1 => true,
            4 => ConvTiling::forward_sites_fit(d, spec.taps.row()),
            _ => false,
        };
        (1..=25).contains(&t.taps_per_thread)
            && d.taps.is_multiple_of(t.taps_per_thread)
            && t.couts_per_thread >= 1
            && d.cout.is_multiple_of(t.couts_per_thread)
            && t.samples_per_thread >= 1
            && t.chunk >= 1
            && t.branches_per_thread >= 1
            && spec.branches.is_multiple_of(t.branches_per_thread)
            && sites_ok
            && rows_ok
    }

    /// Build the layer. If `b.params` has UNIFORM usage and the layer's slice starts at a
    /// 256-byte boundary (`FlowSpec` lays parameters out so) and fits a uniform binding,
    /// forward and backward_input read the weights through it.
    pub fn new(gpu: &Gpu, spec: ConvSpec, b: &ConvBuffers) -> Result<Conv> {
        let d = spec.dims;
        let nbr = b.lattice.table(&spec.taps)?;
        let nd = b.lattice.lattice.nd;
        if d.taps * spec.branches != spec.taps.count(nd)
            || d.volume != b.lattice.lattice.volume()
            || d.extent != b.lattice.lattice.l
        {
            bail!("convolution {d:?} does not match the lattice tables");
        }
        if spec.branches > 1 && spec.w_stride < d.n_params() {
            bail!("a combinational convolution's branches' parameter slices overlap");
        }

        if !Self::tiling_valid(&spec, &spec.tiling) {
            bail!(
                "tiling {:?} does not fit the convolution {d:?}",
                spec.tiling
            );
        }
        if matches!(spec.input_grad, InputGrad::AddMasked) && d.cin != 1 {
            bail!("InputGrad::AddMasked needs a single input channel");
        }
        let br = spec.branches;
        // The branches' outputs are kept where the backward needs them and a buffer is given.
        let keep = br > 1 && spec.combi_act == CombiAct::Branch && b.hb.is_some();
        let (signs, signs_in) = (spec.signs(), spec.signs_in());
        let (n_in, n_out) = (d.batch * d.cin * d.volume, d.batch * d.cout * d.volume);
        // Row lengths of [branches, stride] buffers: the last row unpadded.
        let rows = |n: usize, stride: usize| (br - 1) * stride + n;
        b.params.need(spec.w_off + spec.param_span())?;
        b.x.need(n_in)?;
        b.y.need(n_out)?;
        if keep {
            b.hb.unwrap().need(spec.kept_len())?;
        }
        let to_branches = matches!(spec.input_grad, InputGrad::ToBranches(_));
        if let Some(g) = &b.grad {
            g.grads.need(spec.w_off + spec.param_span())?;
            g.gx.need(if to_branches {
                rows(n_in, spec.stride_in())
            } else {
                n_in
            })?;
            g.gy.need(rows(n_out, spec.stride()))?;
            g.partial.need(spec.partial_len())?;
            let after = spec.combi_act == CombiAct::Branch;
            if signs && !keep {
                bail!("a stage that keeps signs needs them (ConvBuffers::hb) for its backward");
            }
            match g.hb_in {
                _ if signs_in => {}
                Some(h) => h.need(rows(n_in, spec.stride_in()))?,
                None if to_branches && after => {
                    bail!("InputGrad::ToBranches needs the previous stage's branch outputs")
                }
                None => {}
            }
        }

        let (mode, act_in) = match spec.input_grad {
            InputGrad::Write | InputGrad::Skip => (0, Act::None),
            InputGrad::TimesActGrad(a) => (1, a),
            InputGrad::AddMasked => (2, Act::None),
            InputGrad::ToBranches(a) => (4, a),
        };
        // Weights through a uniform binding of the layer's slice where the buffer, the alignment
        // and the size allow it (see W_UBO in conv.wgsl).
        let lim = &gpu.limits;
        let w_bytes = (spec.param_span().div_ceil(4) * 16) as u64;
        let w_start = (spec.w_off * 4) as u64;
        let ubo = b.params.usage.contains(crate::gpu::Usage::UNIFORM)
            && w_start.is_multiple_of(lim.min_uniform_buffer_offset_alignment as u64)
            && w_bytes <= lim.max_uniform_buffer_binding_size
            && w_start + w_bytes <= b.params.size;
        let wu = if ubo {
            b.params.range(w_start, w_bytes)
        } else {
            gpu.dummy_uniform.clone()
        };
        let base = |entry| {
            KernelSpec::new(Shader::Conv, entry)
                .with("W_UBO", ubo as u32)
                .with("WLEN", if ubo { (w_bytes / 16) as u32 } else { 1 })
                .with("CIN", d.cin as u32)
                .with("COUT", d.cout as u32)
                .with("TAPS", d.taps as u32)
                .with("WG", WG)
                .with("BR", br as u32)
                .with("WSTRIDE", spec.w_stride as u32)
                .with("AFTER", (spec.combi_act == CombiAct::Branch) as u32)
                .with("KEEP", keep as u32)
                .with("ACT", spec.act.code())
                .with("SIGNS", signs as u32)
                .with("WORDS", sign_words(br, d.cout) as u32)
                // The activations' storage types (the dispatch checks each bound buffer's).
                .with_type("XS", spec.in_type())
                .with_type("YS", spec.precision)
        };
        let uniform = Params {
            batch: d.batch as u32,
            volume: d.volume as u32,
            w_off: spec.w_off as u32,
            parity: spec.parity,
            chunk: spec.tiling.chunk as u32,
            n_weights: spec.param_span() as u32,
            n_chunks: spec.n_chunks() as u32,
            stride: spec.stride() as u32,
            stride_in: spec.stride_in() as u32,
            unscale: (1.0 / spec.loss_scale) as f32,
            _pad: [0; 2],
        };
        let u = Some(bytemuck::bytes_of(&uniform));
        let four = spec.tiling.forward_sites == 4;
        let site_groups = if four {
            // One thread per (block of 4 sites, NB samples), numbered flat over as many rows
            // of the grid as the per-dimension limit needs (forward4 reads num_workgroups).
            let n = groups_for(
                d.volume / 4 * d.batch.div_ceil(spec.tiling.samples_per_thread),
                WG as usize,
            );
            let per_row = n.min(gpu.limits.max_compute_workgroups_per_dimension);
            [per_row, n.div_ceil(per_row), 1]
        } else {
            [
                groups_for(d.volume, WG as usize),
                d.batch.div_ceil(spec.tiling.samples_per_thread) as u32,
                1,
            ]
        };
        let l = b.lattice;
        // forward4 and backward_input4 (4 sites per thread): their entry points, the row
        // table in place of the neighbour table, and the row geometry.
        let gather = |one_site: &'static str, four_sites: &'static str| {
            if four {
                base(four_sites)
                    .with("XB", (l.lattice.l / 4) as u32)
                    .with("KX", spec.taps.row() as u32)
                    .with("XSPAN", spec.taps.spans_last_axis(nd))
            } else {
                base(one_site)
            }
        };
        let rows = if four { l.row_table(&spec.taps)? } else { nbr };

        // Each entry point sees only the tiling constants it uses (samples per thread in
        // forward and backward_input, taps and output channels per thread in
        // backward_weight), so a tuner's candidates share the pipelines they can. The module
        // is validated whole, so the others see one tap per thread (valid for any TAPS).
        let nb = spec.tiling.samples_per_thread as u32;
        let fwd = gather("forward", "forward4")
            .with("TPT", 1)
            .with("NB", nb)
            .with("IN_MASK", spec.in_mask as u32);
        // hb and hb_in are bound to a placeholder where the specialisation does not use them.
        let unused = &gpu.dummy_storage;
        let bits =
            b.hb.filter(|_| keep && signs)
                .unwrap_or(&gpu.dummy_storage_rw);
        let forward_buffers = [
            ("params", b.params),
            ("nbr", nbr),
            ("parity_tbl", &l.parity),
            ("x", b.x),
            ("y", b.y),
            ("wu", &wu),
            ("hb", b.hb.filter(|_| keep && !signs).unwrap_or(unused)),
            ("bits", bits),
            // forward4's and backward_input4's tables and views by 4 sites.
            ("rows", rows),
            ("x4", b.x),
            ("y4", b.y),
            ("hb4", b.hb.filter(|_| keep && !signs).unwrap_or(unused)),
            ("bits4", bits),
        ];
        // Work models: 2 flops per multiply-add; each tensor touched once.
        let f = 4.0;
        let (bv, macs) = ((d.batch * d.volume) as f64, (br * d.macs()) as f64);
        let (xin, yout, w) = (
            bv * d.cin as f64 * spec.in_type().bytes() as f64,
            bv * d.cout as f64 * spec.precision.bytes() as f64,
            d.n_params() as f64 * f,
        );
        let forward = gpu
            .dispatch(&fwd, u, &forward_buffers, site_groups)?
            .with_work(2.0 * macs + bv * d.cout as f64, xin + yout + w);
        let Some(g) = &b.grad else {
            return Ok(Conv {
                spec,
                forward,
                backward: vec![],
            });
        };

        let buffers = [
            &forward_buffers[..],
            &[
                ("gy", g.gy),
                ("gx", g.gx),
                ("partial", g.partial),
                ("grads", g.grads),
                ("hb_in", g.hb_in.filter(|_| !signs_in).unwrap_or(unused)),
                ("hb_in4", g.hb_in.filter(|_| !signs_in).unwrap_or(unused)),
                ("gx4", g.gx),
                // backward_weight's and backward_input4's view of gy by 4 sites.
                ("gy4", g.gy),
            ],
        ]
        .concat();
        let bin = gather("backward_input", "backward_input4")
            .with("TPT", 1)
            .with("NB", nb)
            .with("MODE", mode)
            .with("SIGNS_IN", signs_in as u32)
            .with("ACT_IN", act_in.code());
        let backward_input = gpu
            .dispatch(&bin, u, &buffers, site_groups)?
            .with_work(2.0 * macs, yout + 2.0 * xin + w);

        let bw = base("backward_weight")
            .with("IN_MASK", spec.in_mask as u32)
            .with("TPT", spec.tiling.taps_per_thread as u32)
            .with("COB", spec.tiling.couts_per_thread as u32)
            .with("NBR", spec.tiling.branches_per_thread as u32)
            .with("SPT", spec.tiling.sites_per_thread as u32);
        let backward_weight = gpu
            .dispatch(
                &bw,
                u,
                &buffers,
                [
                    groups_for(d.n_params(), WG as usize),
                    spec.n_chunks() as u32,
                    (br / spec.tiling.branches_per_thread) as u32,
                ],
            )?
            .with_work(
                2.0 * macs + bv * d.cout as f64,
                xin + yout + (spec.partial_len() as f64) * f,
            );

        let rw = base("reduce_weight").with("TPT", 1);
        let reduce_weight = gpu
            .dispatch(
                &rw,
                u,
                &buffers,
                [groups_for(d.n_params(), WG as usize), 1, br as u32],
            )?
            .with_work(
                spec.partial_len() as f64,
                (spec.partial_len() as f64 + d.n_params() as f64) * f,
            );
        let mut backward = vec![backward_weight, reduce_weight];
        if spec.input_grad != InputGrad::Skip {
            backward.push(backward_input);
        }
        Ok(Conv {
            spec,
            forward,
            backward,
        })
    }
}

/// The f64 specification of the convolution. Tensors are [batch, channel, site]; `w` is the
/// layer's parameter slice: [cout, cin, taps] weights then [cout] biases. Neighbours come from
/// coordinate arithmetic (`Lattice::shift`), not from the shaders' table.
pub mod reference {
    use super::super::Act;
    use crate::flow::Taps;
    use crate::lattice::Lattice;

    pub struct Layer<'a> {
        pub lattice: &'a Lattice,
        pub taps: &'a Taps,
        pub batch: usize,
        pub cin: usize,
        pub cout: usize,
    }

    impl Layer<'_> {
        fn neighbours(&self) -> Vec<Vec<usize>> {
            let offs = self.taps.offsets(self.lattice.nd);
            (0..self.lattice.volume())
                .map(|s| offs.iter().map(|o| self.lattice.shift(s, o)).collect())
                .collect()
        }

        /// y = act(b + sum_ci sum_t W[co, ci, t] * x[ci, site + offset(t)]).
        pub fn forward(&self, x: &[f64], w: &[f64], act: Act) -> Vec<f64> {
            let v = self.lattice.volume();
            let nb = self.neighbours();
            let taps = nb[0].len();
            let bias = &w[self.cout * self.cin * taps..];
            let mut y = vec![0.0; self.batch * self.cout * v];
            for b in 0..self.batch {
                for co in 0..self.cout {
                    for s in 0..v {
                        let mut acc = bias[co];
                        for ci in 0..self.cin {
                            for (t, &n) in nb[s].iter().enumerate() {
                                acc += w[(co * self.cin + ci) * taps + t]
                                    * x[(b * self.cin + ci) * v + n];
                            }
                        }
                        y[(b * self.cout + co) * v + s] = act.apply(acc);
                    }
                }
            }
            y
        }

        /// dL/dx from the pre-activation output gradient `gy`.
        pub fn backward_input(&self, gy: &[f64], w: &[f64]) -> Vec<f64> {
            let v = self.lattice.volume();
            let nb = self.neighbours();
            let taps = nb[0].len();
            let mut gx = vec![0.0; self.batch * self.cin * v];
            for b in 0..self.batch {
                for co in 0..self.cout {
                    for s in 0..v {
                        let g = gy[(b * self.cout + co) * v + s];
                        for ci in 0..self.cin {
                            for (t, &n) in nb[s].iter().enumerate() {
                                gx[(b * self.cin + ci) * v + n] +=
                                    w[(co * self.cin + ci) * taps + t] * g;
                            }
                        }
                    }
                }
            }
            gx
        }

        /// dL/dW and dL/db (laid out as the parameter slice) from the input and `gy`.
        pub fn backward_weight(&self, x: &[f64], gy: &[f64]) -> Vec<f64> {
            let v = self.lattice.volume();
            let nb = self.neighbours();
            let taps = nb[0].len();
            let nk = self.cout * self.cin * taps;
            let mut gw = vec![0.0; nk + self.cout];
            for b in 0..self.batch {
                for co in 0..self.cout {
                    for s in 0..v {
                        let g = gy[(b * self.cout + co) * v + s];
                        gw[nk + co] += g;
                        for ci in 0..self.cin {
                            for (t, &n) in nb[s].iter().enumerate() {
                                gw[(co * self.cin + ci) * taps + t] +=
                                    g * x[(b * self.cin + ci) * v + n];
                            }
                        }
                    }
                }
            }
            gw
        }
    }
}
