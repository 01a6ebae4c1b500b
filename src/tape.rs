//! The tape: the flow's graph is fixed by the config, so it is recorded once. Building a tape
//! plans every buffer and builds every dispatch (pipeline, uniform block, bind group); a step
//! then only records them into one compute pass: the forward ops in order, the backward ops in
//! reverse, then Adam. Each op knows its forward and backward dispatches (one backward rule per
//! op); the buffers wire gradients from op to op.
//!
//! Building goes in three steps: each coupling layer's execution is chosen once (`Exec`: whole
//! layer or one launch per kernel, `choose_exec`); `Buffers::plan` sizes and names every
//! buffer in one place; one function per execution (`wire_whole`, `wire_per_kernel`) builds a
//! layer's ops from the model's description of it (`FlowSpec::nets`).
//!
//! Fusions that cut dispatches and memory traffic (each checked by the kernel tests):
//! the checkerboard mask and activations run inside the convolutions; each convolution's input
//! gradient is multiplied by the activation derivative of the layer below in the same kernel;
//! the first convolution adds its input gradient straight into the coupling's input gradient;
//! the action kernel writes dS/dphi scaled by dL/dS as it computes S. Where the net's shape and
//! the adapter allow (`Fusion`), a whole coupling layer runs as one dispatch each way
//! (`kernels::coupling_layer`): 53 dispatches per tutorial step instead of 228.

use crate::config::PriorKind;
use crate::flow::{CombiAct, CouplingKind, FlowSpec};
use crate::gpu::{Dispatch, Gpu, GpuBuffer, Precision, Usage};
use crate::kernels::Act;
use crate::kernels::LatticeBuffers;
use crate::kernels::action::{Action, ActionSpec};
use crate::kernels::adam::{Adam, AdamSpec};
use crate::kernels::combi::{CombiSpec, Mean, keeps_signs};
use crate::kernels::conv::{Conv, ConvBuffers, ConvDims, ConvGrads, ConvSpec, InputGrad};
use crate::kernels::coupling::{Coupling, CouplingBuffers, CouplingGrads, CouplingSpec};
use crate::kernels::coupling_layer::{
    CouplingLayer, CouplingLayerBuffers, CouplingLayerGrads, CouplingLayerSpec, activation_offsets,
};
use crate::kernels::prior::{Prior, PriorSpec};
use crate::kernels::reduce;
use crate::kernels::spline::SplineSpec;
use crate::kernels::tiling::ConvTiling;
use crate::kernels::z2::{Combine, Mirror, Z2Spec};
use anyhow::{Context, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward, backward and Adam; every activation is kept for the backward.
    Train,
    /// Forward only; activation buffers are reused from layer to layer.
    Infer,
}

/// What a tape is built for.
#[derive(Clone, Debug)]
pub struct TapeSpec {
    pub flow: FlowSpec,
    pub batch: usize,
    pub mode: Mode,
    pub prior: PriorKind,
    /// The Philox seed of the prior's draws (training.seed) and its stream.
    pub seed: u64,
    pub stream: u32,
    pub m2: f64,
    pub lam: f64,
    /// Initial learning rate and Adam's beta1, beta2 (Train).
    pub lr: f64,
    pub adam_betas: [f64; 2],
    /// Whether each coupling layer runs as one dispatch each way.
    pub fusion: Fusion,
    /// The storage type of the nets' activations and their gradients (f16 needs an adapter
    /// with SHADER_F16: resolve it with `Gpu::precision`).
    pub precision: Precision,
}

/// Whether each coupling layer runs as one dispatch forward and one (plus a reduction)
/// backward (`kernels::coupling_layer`) instead of one launch per convolution and one for the
/// coupling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fusion {
    /// On GPUs (where launches are what a small step costs; not measured on a GPU). On CPU
    /// adapters where it was measured to pay: the net's batch x volume at most
    /// `SOFTWARE_FUSE_MAX_SITES` (a symmetrised net sees twice the batch).
    Auto,
    /// Wherever the net's shape and the adapter's workgroup memory allow.
    On,
    /// Never.
    Off,
}

/// On a CPU adapter the whole-layer kernels win while the step is short and launches dominate,
/// and lose once there is work to spread: each workgroup holds one sample (forward) or a chunk
/// of samples one at a time (backward), where the per-kernel launches tile several samples per
/// thread. Measured on lavapipe (2 cores), tutorial model, ms per training step fused /
/// unfused: L 8, batch 1: 3.8 / 11.5; batch 4: 6.9 / 14.5; batch 8: 12.4 / 19.4; batch 16:
/// 20.7 / 19.8; batch 64: 74 / 46. L 4, batch 32: 16.8 / 15.6; batch 64: 31.4 / 25.8.
/// Symmetrised, on a slower 2-core Xeon: batch 1: 8.8 / 27.5; batch 4: 57.5 / 23.0; batch 8:
/// 114 / 41 (the net runs on 2 x batch samples, one after the other in each workgroup).
pub const SOFTWARE_FUSE_MAX_SITES: usize = 512;

impl Fusion {
    /// Whether layers run whole where they can: `On`, `Off`, or under `Auto` the choice
    /// measured on this adapter (`crate::tune`), else the rule (`auto_rule`).
    fn wanted(self, gpu: &Gpu, spec: &TapeSpec) -> bool {
        match self {
            Fusion::Auto => gpu
                .fusion_choice(&spec.fusion_key())
                .unwrap_or_else(|| Self::auto_rule(gpu, spec)),
            Fusion::On => true,
            Fusion::Off => false,
        }
    }

    /// `Auto`'s rule: on GPUs; on CPU adapters up to `SOFTWARE_FUSE_MAX_SITES`.
    pub fn auto_rule(gpu: &Gpu, spec: &TapeSpec) -> bool {
        let net_batch = (spec.flow.nets.iter())
            .map(|n| n.coupling.net_batch_factor())
            .max()
            .unwrap_or(1)
            * spec.batch;
        !gpu.is_software() || net_batch * spec.flow.lattice.volume() <= SOFTWARE_FUSE_MAX_SITES
    }
}

/// Whether any coupling layer of `spec`'s tape could run whole on `gpu` (so that whole
/// layers against one launch per kernel is a choice there).
pub fn can_fuse(gpu: &Gpu, spec: &TapeSpec) -> bool {
    let on = TapeSpec {
        fusion: Fusion::On,
        ..spec.clone()
    };
    (0..spec.flow.n_layers).any(|l| choose_exec(gpu, &on, true, l) != Exec::PerKernel)
}

impl TapeSpec {
    /// What the choice between whole layers and one launch per kernel depends on
    /// (`crate::tune`): the mode, the batch and the architecture.
    pub fn fusion_key(&self) -> String {
        let mode = match self.mode {
            Mode::Train => "training",
            Mode::Infer => "inference",
        };
        let storage = self.precision.key_suffix();
        format!(
            "{mode} tape, batch {}, {}{storage}",
            self.batch,
            crate::checkpoint::describe(&self.flow)
        )
    }

    /// The factor every gradient of the backward carries until the weight gradients divide it
    /// out: 1, but under f16 storage the batch rounded up to a power of two, so that the
    /// gradients stored as f16 are O(1) per sample (dL/dlog q = 1/batch would sink towards
    /// f16's subnormals, below 6.1e-5, in large batches) and dividing it out is exact.
    pub fn loss_scale(&self) -> f64 {
        match self.precision {
            Precision::F32 => 1.0,
            Precision::F16 => self.batch.next_power_of_two() as f64,
        }
    }

    /// The training tape of a config: its batch size, the training stream of the prior, the
    /// first epoch's learning rate.
    pub fn training(cfg: &crate::config::Config) -> TapeSpec {
        TapeSpec {
            flow: FlowSpec::from_config(cfg),
            batch: cfg.training.batchsize,
            mode: Mode::Train,
            prior: cfg.training.prior.clone(),
            seed: cfg.training.seed,
            stream: crate::rng::stream::TRAIN,
            m2: cfg.physical.m2,
            lam: cfg.physical.lam,
            lr: cfg.lr(1),
            adam_betas: cfg.training.adam_betas,
            fusion: Fusion::Auto,
            precision: cfg.precision,
        }
    }
}

/// One recorded op with its forward and backward dispatches.
pub enum Op {
    Prior(Prior),
    Conv(Conv),
    /// An affine or spline coupling's transform.
    Coupling(Coupling),
    Action(Action),
    Loss(Dispatch),
    /// A symmetrised coupling's [x; -x] and (s, t) (`kernels::z2`).
    Mirror(Mirror),
    Combine(Combine),
    /// The backward of the mean of a combinational net's last stage (`kernels::combi`; its
    /// forward is fused into the stage's convolution).
    Mean(Mean),
    /// A whole coupling layer: one dispatch forward, one and a reduction backward.
    Layer(CouplingLayer),
    /// A whole layer's forward, and the backward of the per-kernel ops it stands for (kept
    /// in forward order; their forwards are not recorded).
    Split(CouplingLayer, Vec<Op>),
}

impl Op {
    /// The op's forward dispatch (none for an op that only has a backward).
    fn forward(&self, mode: Mode) -> Option<&Dispatch> {
        Some(match self {
            Op::Prior(p) => &p.sample,
            Op::Conv(c) => &c.forward,
            Op::Coupling(c) => &c.forward,
            Op::Mirror(m) => &m.forward,
            Op::Combine(c) => &c.forward,
            Op::Mean(_) => return None,
            // Training fuses dS/dphi into the forward: it is the loss's only path to phi.
            Op::Action(a) => {
                if mode == Mode::Train {
                    &a.action_grad
                } else {
                    &a.action
                }
            }
            Op::Loss(d) => d,
            Op::Layer(layer) | Op::Split(layer, _) => &layer.forward,
        })
    }

    /// Visit the op's backward dispatches in order (no allocation: the training loop calls
    /// this every step).
    fn backward<'a>(&'a self, f: &mut impl FnMut(&'a Dispatch)) {
        let list: &[Dispatch] = match self {
            Op::Conv(c) => &c.backward,
            Op::Coupling(c) => c.backward.as_slice(),
            Op::Mirror(m) => m.backward.as_slice(),
            Op::Combine(c) => c.backward.as_slice(),
            Op::Mean(m) => std::slice::from_ref(&m.backward),
            Op::Layer(layer) => &layer.backward,
            Op::Split(_, parts) => {
                for op in parts.iter().rev() {
                    op.backward(f);
                }
                &[]
            }
            // Prior: z is not differentiated. Action, Loss: fused into their forwards.
            Op::Prior(_) | Op::Action(_) | Op::Loss(_) => &[],
        };
        list.iter().for_each(f);
    }

    pub fn name(&self) -> &'static str {
        match self {
            Op::Prior(_) => "prior",
            Op::Conv(_) => "conv",
            Op::Coupling(_) => "coupling",
            Op::Mirror(_) => "z2 mirror",
            Op::Combine(_) => "z2 combine",
            Op::Mean(_) => "combi mean",
            Op::Action(_) => "action",
            Op::Loss(_) => "loss",
            Op::Layer(_) | Op::Split(..) => "coupling layer",
        }
    }
}

/// Allocates buffers and keeps the list for `--dry-run` and `bench`.
struct Planner<'a> {
    gpu: &'a Gpu,
    list: Vec<(String, u64)>,
    precision: Precision,
    /// Bytes of the nets' activations and their gradients (`act`).
    act_bytes: u64,
}

impl Planner<'_> {
    fn f32(&mut self, label: String, len: usize) -> Result<GpuBuffer> {
        self.typed(label, len, Precision::F32)
    }

    /// A buffer of the nets' activations or their gradients, stored as the tape's precision.
    fn act(&mut self, label: String, len: usize) -> Result<GpuBuffer> {
        let b = self.typed(label, len, self.precision)?;
        self.act_bytes += b.size;
        Ok(b)
    }

    fn typed(&mut self, label: String, len: usize, precision: Precision) -> Result<GpuBuffer> {
        let b = self
            .gpu
            .activations(&label, len, precision)
            .context("planning the buffers; lower the batch or the lattice")?;
        self.list.push((label, b.size));
        Ok(b)
    }
}

/// Before building anything, check the largest buffers against the adapter's limits, so that a
/// model too big for the device is a message naming the limit and what to lower, not an
/// out-of-memory crash while building the tables. (Callers add which setting gave the batch.)
fn check_limits(gpu: &Gpu, spec: &TapeSpec) -> Result<()> {
    let flow = &spec.flow;
    let v = flow.lattice.volume() as u64;
    let widest = *flow.channels().iter().max().unwrap_or(&1) as u64;
    // A symmetrised coupling's net runs on twice the batch.
    let net_batch = spec.batch
        * flow
            .nets
            .iter()
            .map(|n| n.coupling.net_batch_factor())
            .max()
            .unwrap_or(1);
    let max = gpu
        .limits
        .max_storage_buffer_binding_size
        .min(gpu.limits.max_buffer_size);
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    // The widest activation, in its storage type (the f32 field is one channel of it).
    let activation = net_batch as u64 * v * (4u64).max(spec.precision.bytes() * widest);
    if activation > max {
        anyhow::bail!(
            "one activation buffer (batch {} x {} channels x {} sites) needs {:.0} MiB, over this adapter's max_storage_buffer_binding_size of {:.0} MiB ({}); lower the batch, the lattice size L or the hidden widths",
            net_batch,
            widest,
            v,
            mib(activation),
            mib(max),
            gpu.info.name
        );
    }
    let nd = flow.lattice.nd;
    let taps = flow
        .tap_sets()
        .iter()
        .map(|t| t.count(nd))
        .max()
        .unwrap_or(1);
    let table = 4 * v * taps as u64;
    if table > max {
        anyhow::bail!(
            "the neighbour table ({} sites x {} taps) needs {:.0} MiB, over this adapter's max_storage_buffer_binding_size of {:.0} MiB ({}); lower the lattice size L or the kernel size",
            v,
            taps,
            mib(table),
            mib(max),
            gpu.info.name
        );
    }
    let groups = gpu.limits.max_compute_workgroups_per_dimension as usize;
    if net_batch > groups {
        anyhow::bail!(
            "a batch of {} (the nets') exceeds this adapter's max_compute_workgroups_per_dimension = {groups}",
            net_batch
        );
    }
    Ok(())
}

/// How one coupling layer runs, decided once per layer when the tape is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exec {
    /// One dispatch forward and, in training, one and a reduction backward
    /// (`kernels::coupling_layer`).
    Whole,
    /// Training only: the forward as one dispatch, the backward one launch per kernel (where
    /// the layer's backward does not fit workgroup memory but its forward does). Measured on
    /// lavapipe, tutorial net at 2D L 14, batch 2: 48-62 ms per step against 74-88 ms per kernel.
    WholeForward,
    /// One launch per convolution and one for the coupling, each way.
    PerKernel,
}

impl Exec {
    /// How a step runs such a layer, in words (`train --dry-run`).
    pub fn describe(self) -> &'static str {
        match self {
            Exec::Whole => "each coupling layer one dispatch each way",
            Exec::WholeForward => {
                "each coupling layer's forward one dispatch, its backward one per kernel"
            }
            Exec::PerKernel => {
                "one per kernel; whole-layer dispatches are used on GPUs and for small batches"
            }
        }
    }
}

/// The whole-layer kernel's description of layer `l`.
fn layer_spec(spec: &TapeSpec, l: usize) -> CouplingLayerSpec {
    CouplingLayerSpec {
        batch: spec.batch,
        volume: spec.flow.lattice.volume(),
        net: spec.flow.nets[l].clone(),
        train: spec.mode == Mode::Train,
        gpu_tiling: false,
        precision: spec.precision,
        loss_scale: spec.loss_scale(),
    }
}

/// Layer `l` runs whole where `Fusion` wants it, the whole-layer kernel knows the layer's
/// blocks, and its workgroup memory, uniform bindings and (training) its backward and
/// activation buffer fit the adapter; otherwise per kernel. Any block or coupling kind the
/// whole-layer kernel does not know thus runs per kernel.
fn choose_exec(gpu: &Gpu, spec: &TapeSpec, uniform_params: bool, l: usize) -> Exec {
    let ls = layer_spec(spec, l);
    let max_binding = gpu
        .limits
        .max_storage_buffer_binding_size
        .min(gpu.limits.max_buffer_size);
    // The training activation buffer, the branches' outputs of a combinational layer included.
    let h_len = ls.h_len();
    let forward = spec.fusion.wanted(gpu, spec)
        && uniform_params
        && ls.unfusable(gpu).is_none()
        && (!ls.train || h_len as u64 * spec.precision.bytes() <= max_binding);
    // A symmetrised layer's per-kernel backward reads the combined (s, t) and [x; -x], and a
    // combinational one's its branches' outputs in its own layout, which the whole-layer
    // forward does not write: such a layer runs whole both ways or not at all.
    let own_layout = ls.net.coupling == CouplingKind::AffineZ2 || ls.net.combi();
    match (forward, ls.train && ls.backward_unfusable(gpu).is_some()) {
        (false, _) => Exec::PerKernel,
        (true, false) => Exec::Whole,
        (true, true) if own_layout => Exec::PerKernel,
        (true, true) => Exec::WholeForward,
    }
}

/// Stage `j` of layer `l` as the per-kernel path launches it (one convolution, or all the
/// branches of a combinational one): its shape, its tiling on this adapter, where its weights
/// are and what its input-gradient epilogue does. One place decides these for both the buffer
/// plan (the partial sums' size) and the wiring.
fn conv_spec(gpu: &Gpu, spec: &TapeSpec, l: usize, j: usize) -> ConvSpec {
    let net = &spec.flow.nets[l];
    let nb = net.branches;
    let stage = &net.convs[j * nb..(j + 1) * nb];
    let c = &stage[0];
    let dims = ConvDims {
        batch: spec.batch * net.coupling.net_batch_factor(),
        volume: spec.flow.lattice.volume(),
        taps: c.n_taps,
        cin: c.cin,
        cout: c.cout,
        extent: spec.flow.lattice.l,
    };
    let input_grad = match (j, l, net.coupling) {
        // Layer 0's input is the prior sample: nothing to differentiate; an inference tape
        // differentiates nothing.
        _ if spec.mode == Mode::Infer => InputGrad::Skip,
        (0, 0, _) => InputGrad::Skip,
        // The first convolution reads mask * x: its input gradient adds into dL/dx.
        (0, _, CouplingKind::Affine | CouplingKind::Spline { .. }) => InputGrad::AddMasked,
        // ... or mask * [x; -x]: `z2::Mirror`'s backward adds it into dL/dx.
        (0, _, CouplingKind::AffineZ2) => InputGrad::Write,
        // The previous stage's branches, each through its activation.
        _ if net.combi() => InputGrad::ToBranches(net.convs[j * nb - 1].act),
        _ => InputGrad::TimesActGrad(net.convs[j - 1].act),
    };
    let mut s = ConvSpec {
        dims,
        taps: net.stage_taps(j),
        act: c.act,
        in_mask: j == 0,
        parity: net.parity,
        w_off: c.offset,
        input_grad,
        tiling: ConvTiling::for_stage(&dims, c.taps.row(), nb, gpu.is_software()),
        branches: nb,
        w_stride: stage.get(1).map_or(0, |c1| c1.offset - c.offset),
        combi_act: net.combi_act,
        precision: spec.precision,
        loss_scale: spec.loss_scale(),
    };
    // A tiling measured on this adapter (`crate::tune`) replaces the rule's.
    if let Some(t) = gpu.conv_tiling(&s.tune_key()) {
        s.tiling = t;
    }
    s
}

/// Every convolution `spec`'s tape launches per kernel (one per shape and epilogue: what
/// `crate::tune` measures), with the tilings it would use now.
pub fn conv_specs(gpu: &Gpu, spec: &TapeSpec) -> Vec<ConvSpec> {
    let mut out: Vec<ConvSpec> = vec![];
    for l in 0..spec.flow.n_layers {
        if choose_exec(gpu, spec, true, l) == Exec::Whole {
            continue;
        }
        for j in 0..spec.flow.nets[l].n_stages() {
            let s = conv_spec(gpu, spec, l, j);
            if !out.iter().any(|o| o.tune_key() == s.tune_key()) {
                out.push(s);
            }
        }
    }
    out
}

/// The mean of stage `j` of layer `l`'s combinational net.
fn combi_spec(spec: &TapeSpec, l: usize, j: usize) -> CombiSpec {
    let net = &spec.flow.nets[l];
    let c = &net.convs[j * net.branches];
    CombiSpec {
        rows: spec.batch * net.coupling.net_batch_factor() * c.cout,
        volume: spec.flow.lattice.volume(),
        branches: net.branches,
        act: c.act,
        mode: net.combi_act,
        cout: c.cout,
    }
}

/// One coupling layer's activations: each stage's output (the last is the net's output,
/// which the coupling reads). A whole layer keeps them in one buffer (`activation_offsets`), of
/// which these are views; an inference whole layer keeps them in workgroup memory and binds a
/// placeholder.
struct Activations {
    whole: Option<GpuBuffer>,
    convs: Vec<GpuBuffer>,
    /// A combinational net's branch outputs, one buffer per stage ([branches, stride]).
    branches: Vec<GpuBuffer>,
    /// A symmetrised coupling's net input [x; -x] and its (s, t).
    mirrored: Option<GpuBuffer>,
    st: Option<GpuBuffer>,
}

/// The backward's buffers.
struct GradBuffers {
    /// The parameter gradient and Adam's moments, laid out as the parameters.
    grads: GpuBuffer,
    adam_m: GpuBuffer,
    adam_v: GpuBuffer,
    /// dL/dx of the flow's inputs: two buffers alternate, layer l reading dL/dy from
    /// `gx[(l + 1) % 2]` and writing dL/dx into `gx[l % 2]`.
    gx: [GpuBuffer; 2],
    /// Per-kernel layers: each stage's output gradient, by depth (reused by every layer):
    /// before the activation for a plain net; a combinational net uses the last one only,
    /// after the activation (the coupling's dL/d(net output)).
    gh: Vec<GpuBuffer>,
    /// Combinational layers: each stage's branch pre-activation gradients, by depth.
    ghb: Vec<GpuBuffer>,
    /// Weight-gradient partial sums (the largest any layer needs).
    partial: GpuBuffer,
    /// Symmetrised per-kernel layers: dL/d[x; -x] and dL/d(s, t).
    gmirrored: Option<GpuBuffer>,
    gst: Option<GpuBuffer>,
}

/// Every buffer of a tape, sized and named in one place.
struct Buffers {
    lattice: LatticeBuffers,
    /// Inputs of each coupling and phi: x[0] = z, phi = x[n_layers] (Train); in Infer two
    /// buffers alternate and phi is x[n_layers % 2].
    x: Vec<GpuBuffer>,
    /// Layer l's activations (Infer: layers share them).
    acts: Vec<Activations>,
    logq: GpuBuffer,
    action: GpuBuffer,
    metrics: GpuBuffer,
    /// dL/dlog q per sample (written by the loss kernel).
    glogq: GpuBuffer,
    grad: Option<GradBuffers>,
}

impl Buffers {
    /// The input and output of coupling `l`.
    fn io(&self, train: bool, l: usize) -> (&GpuBuffer, &GpuBuffer) {
        if train {
            (&self.x[l], &self.x[l + 1])
        } else {
            (&self.x[l % 2], &self.x[(l + 1) % 2])
        }
    }

    /// phi, the output of the last of `n_layers` couplings.
    fn phi(&self, train: bool, n_layers: usize) -> &GpuBuffer {
        &self.x[if train { n_layers } else { n_layers % 2 }]
    }

    /// Plan every buffer for `spec` with layer l running as `exec[l]`.
    fn plan(gpu: &Gpu, spec: &TapeSpec, exec: &[Exec], pl: &mut Planner) -> Result<Buffers> {
        let flow = &spec.flow;
        let (b, v) = (spec.batch, flow.lattice.volume());
        let train = spec.mode == Mode::Train;
        let lattice = LatticeBuffers::new(gpu, flow.lattice, &flow.tap_sets())?;
        for (_, t) in &lattice.tables {
            pl.list.push(("neighbour table".into(), t.size));
        }
        pl.list.push(("parity table".into(), lattice.parity.size));
        pl.list.push(("hop table".into(), lattice.hop.size));

        let n_x = if train { flow.n_layers + 1 } else { 2 };
        let x = (0..n_x)
            .map(|i| pl.f32(format!("x[{i}]"), b * v))
            .collect::<Result<_>>()?;

        // Activations: training keeps every layer's for the backward; inference shares one
        // set between the per-kernel layers and a placeholder between the whole ones.
        let per_kernel_set = |pl: &mut Planner, name: &str, l: usize| -> Result<Activations> {
            let net = &flow.nets[l];
            let nb = b * net.coupling.net_batch_factor();
            let z2 = net.coupling == CouplingKind::AffineZ2;
            Ok(Activations {
                whole: None,
                convs: (net.stages().enumerate())
                    .map(|(j, c)| pl.act(format!("{name}[{j}]"), nb * c[0].cout * v))
                    .collect::<Result<_>>()?,
                // The branches' outputs, where the backward reads them.
                branches: if net.combi() && net.combi_act == CombiAct::Branch && train {
                    (0..net.n_stages())
                        .map(|j| {
                            // Words: the branches' outputs, or their signs (a u32 per
                            // 32 branch channels and site-sample).
                            let cs = combi_spec(spec, l, j);
                            let label = format!("{name}[{j}] branch");
                            if keeps_signs(cs.mode, cs.act) {
                                pl.f32(label + " signs", cs.kept_len())
                            } else {
                                pl.act(label + "es", cs.kept_len())
                            }
                        })
                        .collect::<Result<_>>()?
                } else {
                    vec![]
                },
                mirrored: z2
                    .then(|| pl.f32(format!("{name} [x; -x]"), 2 * b * v))
                    .transpose()?,
                st: z2
                    .then(|| pl.f32(format!("{name} (s, t)"), 2 * b * v))
                    .transpose()?,
            })
        };
        let mut shared: Option<Activations> = None;
        let mut placeholder: Option<GpuBuffer> = None;
        let mut acts = Vec::with_capacity(flow.n_layers);
        for (l, e) in exec.iter().enumerate() {
            let a = match (*e, train) {
                (Exec::Whole | Exec::WholeForward, true) => {
                    let ch = flow.nets[l].channels();
                    let nb = b * flow.nets[l].coupling.net_batch_factor();
                    let (off, _) = activation_offsets(nb, v, &ch, spec.precision);
                    let e = spec.precision.bytes();
                    // The stages' outputs, then a combinational layer's branches'.
                    let buf = pl.act(format!("h[{l}]"), layer_spec(spec, l).h_len())?;
                    Activations {
                        convs: (0..ch.len() - 1)
                            .map(|j| buf.range(e * off[j] as u64, e * (nb * ch[j + 1] * v) as u64))
                            .collect(),
                        branches: vec![],
                        whole: Some(buf),
                        mirrored: None,
                        st: None,
                    }
                }
                (Exec::PerKernel, true) => per_kernel_set(pl, &format!("h[{l}]"), l)?,
                (Exec::Whole | Exec::WholeForward, false) => {
                    if placeholder.is_none() {
                        // Typed as the layers' `h`, which it stands in for.
                        placeholder =
                            Some(pl.typed("unused activations".into(), 2, spec.precision)?);
                    }
                    Activations {
                        whole: placeholder.clone(),
                        convs: vec![],
                        branches: vec![],
                        mirrored: None,
                        st: None,
                    }
                }
                (Exec::PerKernel, false) => {
                    if shared.is_none() {
                        shared = Some(per_kernel_set(pl, "h", l)?);
                    }
                    let s = shared.as_ref().unwrap();
                    Activations {
                        whole: None,
                        convs: s.convs.clone(),
                        branches: s.branches.clone(),
                        mirrored: s.mirrored.clone(),
                        st: s.st.clone(),
                    }
                }
            };
            acts.push(a);
        }
        let logq = pl.f32("log q".into(), b)?;
        let action = pl.f32("S".into(), b)?;
        let metrics = pl.f32("metrics".into(), reduce::METRICS)?;
        let glogq = pl.f32("dL/dlog q".into(), b)?;

        let grad = if train {
            let np = flow.param_len;
            // Each depth's output gradient, as wide as the widest per-kernel layer needs.
            let mut gh_len: Vec<usize> = vec![];
            let mut ghb_len: Vec<usize> = vec![];
            let mut partial_len = 1;
            let mut z2 = false;
            for (l, e) in exec.iter().enumerate() {
                match e {
                    Exec::Whole => {
                        partial_len = partial_len.max(layer_spec(spec, l).partial_len(gpu))
                    }
                    Exec::PerKernel | Exec::WholeForward => {
                        let net = &flow.nets[l];
                        z2 |= net.coupling == CouplingKind::AffineZ2;
                        let nb = b * net.coupling.net_batch_factor();
                        for (j, stage) in net.stages().enumerate() {
                            if gh_len.len() <= j {
                                gh_len.push(0);
                                ghb_len.push(0);
                            }
                            gh_len[j] = gh_len[j].max(nb * stage[0].cout * v);
                            if net.combi() {
                                let len = combi_spec(spec, l, j).span();
                                ghb_len[j] = ghb_len[j].max(len);
                            }
                        }
                        for j in 0..net.n_stages() {
                            partial_len = partial_len.max(conv_spec(gpu, spec, l, j).partial_len());
                        }
                    }
                }
            }
            Some(GradBuffers {
                grads: pl.f32("gradient".into(), np)?,
                adam_m: pl.f32("Adam m".into(), np)?,
                adam_v: pl.f32("Adam v".into(), np)?,
                gx: [
                    pl.f32("dL/dx (even)".into(), b * v)?,
                    pl.f32("dL/dx (odd)".into(), b * v)?,
                ],
                gh: gh_len
                    .iter()
                    .enumerate()
                    .map(|(j, &n)| pl.act(format!("dL/dh[{j}]"), n))
                    .collect::<Result<_>>()?,
                ghb: (ghb_len.iter().enumerate())
                    .filter(|(_, n)| **n > 0)
                    .map(|(j, &n)| pl.act(format!("dL/dh[{j}] branches"), n))
                    .collect::<Result<_>>()?,
                partial: pl.f32("weight-gradient partials".into(), partial_len)?,
                gmirrored: z2
                    .then(|| pl.f32("dL/d[x; -x]".into(), 2 * b * v))
                    .transpose()?,
                gst: z2
                    .then(|| pl.f32("dL/d(s, t)".into(), 2 * b * v))
                    .transpose()?,
            })
        } else {
            None
        };
        Ok(Buffers {
            lattice,
            x,
            acts,
            logq,
            action,
            metrics,
            glogq,
            grad,
        })
    }
}

/// Layer `l` as one whole-layer kernel; with its backward unless `backward` is false.
fn wire_whole(
    gpu: &Gpu,
    spec: &TapeSpec,
    buf: &Buffers,
    params: &GpuBuffer,
    l: usize,
    backward: bool,
) -> Result<CouplingLayer> {
    let (x, y) = buf.io(spec.mode == Mode::Train, l);
    let grads = buf.grad.as_ref().filter(|_| backward);
    let grad = grads.map(|g| CouplingLayerGrads {
        gy: &g.gx[(l + 1) % 2],
        gx: &g.gx[l % 2],
        glogq: &buf.glogq,
        partial: &g.partial,
        grads: &g.grads,
    });
    let layer = CouplingLayer::new(
        gpu,
        layer_spec(spec, l),
        &CouplingLayerBuffers {
            lattice: &buf.lattice,
            params,
            x,
            y,
            logq: &buf.logq,
            h: buf.acts[l]
                .whole
                .as_ref()
                .expect("a whole layer's activation buffer"),
            grad,
        },
    )?;
    anyhow::ensure!(
        layer.backward.is_empty() == grads.is_none(),
        "coupling layer {l}: its backward does not match the plan"
    );
    Ok(layer)
}

/// Layer `l` as one op per convolution and one for the coupling. The last convolution's output
/// gradient is the coupling's dL/d(net output); the first one's input gradient adds into the
/// coupling input's dL/dx.
fn wire_per_kernel(
    gpu: &Gpu,
    spec: &TapeSpec,
    buf: &Buffers,
    params: &GpuBuffer,
    l: usize,
) -> Result<Vec<Op>> {
    let net = &spec.flow.nets[l];
    let (x, y) = buf.io(spec.mode == Mode::Train, l);
    let acts = &buf.acts[l];
    let hs = &acts.convs;
    let z2 = net.coupling == CouplingKind::AffineZ2;
    let out_act = net.output_act();
    let zspec = Z2Spec {
        batch: spec.batch,
        volume: spec.flow.lattice.volume(),
        parity: net.parity,
        final_act: out_act,
    };
    let mut ops = Vec::with_capacity(net.convs.len() + hs.len() + 3);
    // The net's input, and where its input gradient goes: x itself, or [x; -x] for a
    // symmetrised coupling, whose mirror folds that gradient back into dL/dx.
    let (net_x, net_gx) = if z2 {
        let xx = acts
            .mirrored
            .as_ref()
            .expect("planned for a symmetrised coupling");
        let grad = buf.grad.as_ref().filter(|_| l > 0);
        let g = grad.map(|g| (g.gmirrored.as_ref().unwrap(), &g.gx[l % 2]));
        ops.push(Op::Mirror(Mirror::new(gpu, zspec, &buf.lattice, x, xx, g)?));
        (xx, buf.grad.as_ref().and_then(|g| g.gmirrored.as_ref()))
    } else {
        (x, buf.grad.as_ref().map(|g| &g.gx[l % 2]))
    };
    let combi = net.combi();
    for j in 0..hs.len() {
        let grad = buf.grad.as_ref().map(|g| ConvGrads {
            grads: &g.grads,
            // A combinational stage's gradients are its branches'.
            gy: if combi { &g.ghb[j] } else { &g.gh[j] },
            // Unused where the input is not differentiated (`InputGrad::Skip`).
            gx: match (j, combi) {
                (0, _) => net_gx.unwrap_or(&g.gx[l % 2]),
                (_, true) => &g.ghb[j - 1],
                (_, false) => &g.gh[j - 1],
            },
            partial: &g.partial,
            hb_in: j.checked_sub(1).and_then(|i| acts.branches.get(i)),
        });
        let conv = Conv::new(
            gpu,
            conv_spec(gpu, spec, l, j),
            &ConvBuffers {
                lattice: &buf.lattice,
                params,
                x: if j == 0 { net_x } else { &hs[j - 1] },
                y: &hs[j],
                hb: acts.branches.get(j),
                grad,
            },
        )?;
        ops.push(Op::Conv(conv));
    }
    // The net's output gradient (from the coupling) reaches the last stage's branches through
    // their mean.
    if let Some(g) = buf.grad.as_ref().filter(|_| combi) {
        let last = hs.len() - 1;
        let cs = combi_spec(spec, l, last);
        // Under `CombiAct::Last` the mean's backward reads y, not the branches.
        let hb = acts.branches.get(last).unwrap_or(&gpu.dummy_storage);
        let (gout, ghb) = (&g.gh[last], &g.ghb[last]);
        ops.push(Op::Mean(Mean::new(gpu, cs, hb, &hs[last], gout, ghb)?));
    }
    let out = hs.last().expect("a net has a convolution");
    let gout = buf
        .grad
        .as_ref()
        .map(|g| g.gh.last().expect("a net has a convolution"));
    // (s, t), where the coupling reads them, and their gradient.
    let (st, gst, final_act) = match net.coupling {
        CouplingKind::Affine | CouplingKind::Spline { .. } => (out, gout, out_act),
        CouplingKind::AffineZ2 => {
            let st = acts
                .st
                .as_ref()
                .expect("planned for a symmetrised coupling");
            let gst = buf.grad.as_ref().map(|g| g.gst.as_ref().unwrap());
            let g = gst.zip(gout);
            ops.push(Op::Combine(Combine::new(gpu, zspec, out, st, g)?));
            // combine_backward applies the net's final activation per branch.
            (st, gst, Act::None)
        }
    };
    let cb = CouplingBuffers {
        lattice: &buf.lattice,
        x,
        st,
        y,
        logq: &buf.logq,
        grad: buf.grad.as_ref().zip(gst).map(|(g, gst)| CouplingGrads {
            gy: &g.gx[(l + 1) % 2],
            gx: &g.gx[l % 2],
            gst,
            glogq: &buf.glogq,
        }),
    };
    let (batch, volume, parity) = (spec.batch, spec.flow.lattice.volume(), net.parity);
    ops.push(Op::Coupling(match net.coupling {
        CouplingKind::Spline { bins, bound } => {
            let s = SplineSpec {
                batch,
                volume,
                parity,
                bins,
                bound,
                final_act,
            };
            Coupling::spline(gpu, s, &cb)?
        }
        CouplingKind::Affine | CouplingKind::AffineZ2 => {
            let s = CouplingSpec {
                batch,
                volume,
                parity,
                final_act,
            };
            Coupling::new(gpu, s, &cb)?
        }
    }));
    Ok(ops)
}

/// A planned and recorded flow on one device.
pub struct Tape {
    pub spec: TapeSpec,
    pub lattice: LatticeBuffers,
    /// The flat parameters (shared with other tapes of the same model).
    pub params: GpuBuffer,
    /// [4] u32: counter[0] is the prior's draw index; in a training tape also Adam's step count.
    pub counter: GpuBuffer,
    /// Inputs of each coupling and phi: x[0] = z, phi = x[n_layers] (Train); in Infer two
    /// buffers alternate and phi is x[n_layers % 2].
    pub x: Vec<GpuBuffer>,
    /// log q per sample, S per sample, and the loss kernel's metrics.
    pub logq: GpuBuffer,
    pub action: GpuBuffer,
    pub metrics: GpuBuffer,
    /// Train: the parameter gradient and Adam's moments.
    pub grads: Option<GpuBuffer>,
    pub adam_m: Option<GpuBuffer>,
    pub adam_v: Option<GpuBuffer>,
    /// How each coupling layer runs.
    pub exec: Vec<Exec>,
    pub ops: Vec<Op>,
    pub adam: Option<Adam>,
    /// Every buffer this tape allocated (label, bytes), for the plan printout.
    pub buffers: Vec<(String, u64)>,
    /// Bytes of those that hold the nets' activations and their gradients (what `[device]
    /// precision` stores as f16).
    pub activation_bytes: u64,
}

impl Tape {
    /// Plan buffers and record every op. `params` is the model's parameter buffer; a training
    /// tape also creates the gradient and Adam's moments.
    pub fn new(gpu: &Gpu, spec: TapeSpec, params: &GpuBuffer, counter: &GpuBuffer) -> Result<Tape> {
        check_limits(gpu, &spec)?;
        let flow = &spec.flow;
        let (b, v) = (spec.batch, flow.lattice.volume());
        let train = spec.mode == Mode::Train;
        let exec: Vec<Exec> = (0..flow.n_layers)
            .map(|l| choose_exec(gpu, &spec, params.usage.contains(Usage::UNIFORM), l))
            .collect();
        if spec.precision == Precision::F16 && !gpu.has_f16() {
            anyhow::bail!(
                "an f16 tape needs an adapter with SHADER_F16 (resolve with Gpu::precision)"
            );
        }
        let mut pl = Planner {
            gpu,
            list: vec![],
            precision: spec.precision,
            act_bytes: 0,
        };
        let buf = Buffers::plan(gpu, &spec, &exec, &mut pl)?;

        let mut ops = vec![Op::Prior(Prior::new(
            gpu,
            PriorSpec {
                batch: b,
                volume: v,
                seed: spec.seed,
                stream: spec.stream,
                kind: spec.prior.clone(),
            },
            counter,
            &buf.x[0],
            &buf.logq,
        )?)];
        for (l, e) in exec.iter().enumerate() {
            match e {
                Exec::Whole => ops.push(Op::Layer(wire_whole(gpu, &spec, &buf, params, l, true)?)),
                Exec::WholeForward => ops.push(Op::Split(
                    wire_whole(gpu, &spec, &buf, params, l, false)?,
                    wire_per_kernel(gpu, &spec, &buf, params, l)?,
                )),
                Exec::PerKernel => ops.extend(wire_per_kernel(gpu, &spec, &buf, params, l)?),
            }
        }
        let phi = buf.phi(train, flow.n_layers);
        // dL/dphi goes where the last coupling's backward reads dL/dy. Inference never runs
        // action_grad, so its (never written) gradient target may be phi itself.
        let gphi = match &buf.grad {
            Some(g) => &g.gx[flow.n_layers % 2],
            None => phi,
        };
        ops.push(Op::Action(Action::new(
            gpu,
            ActionSpec {
                batch: b,
                m2: spec.m2,
                lam: spec.lam,
                scale: spec.loss_scale() / b as f64,
            },
            &buf.lattice,
            phi,
            &buf.action,
            gphi,
        )?));
        ops.push(Op::Loss(reduce::loss(
            gpu,
            b,
            spec.loss_scale(),
            &buf.logq,
            &buf.action,
            &buf.metrics,
            &buf.glogq,
        )?));
        let adam = match &buf.grad {
            Some(g) => Some(Adam::new(
                gpu,
                AdamSpec {
                    beta1: spec.adam_betas[0],
                    beta2: spec.adam_betas[1],
                    ..AdamSpec::new(flow.param_len, spec.lr)
                },
                counter,
                params,
                &g.grads,
                &g.adam_m,
                &g.adam_v,
            )?),
            None => None,
        };
        gpu.check()?;
        let (grads, adam_m, adam_v) = match buf.grad {
            Some(g) => (Some(g.grads), Some(g.adam_m), Some(g.adam_v)),
            None => (None, None, None),
        };
        Ok(Tape {
            lattice: buf.lattice,
            params: params.clone(),
            counter: counter.clone(),
            x: buf.x,
            logq: buf.logq,
            action: buf.action,
            metrics: buf.metrics,
            grads,
            adam_m,
            adam_v,
            exec,
            ops,
            adam,
            buffers: pl.list,
            activation_bytes: pl.act_bytes,
            spec,
        })
    }

    /// Whether the coupling layers run as whole-layer dispatches (`Fusion`).
    pub fn fused_layers(&self) -> bool {
        self.exec.iter().any(|e| *e != Exec::PerKernel)
    }

    /// The buffer holding phi after the forward.
    pub fn phi(&self) -> &GpuBuffer {
        let n = self.spec.flow.n_layers;
        &self.x[if self.spec.mode == Mode::Train {
            n
        } else {
            n % 2
        }]
    }

    /// Every dispatch of one step in order: forward, backward in reverse, Adam, counter.
    pub fn step_dispatches(&self) -> Vec<&Dispatch> {
        let mut d = vec![];
        self.visit_step(&mut |x| d.push(x));
        d
    }

    /// Visit one step's dispatches in order: forward, backward in reverse, Adam.
    fn visit_step<'a>(&'a self, f: &mut impl FnMut(&'a Dispatch)) {
        for op in &self.ops {
            if let Some(d) = op.forward(self.spec.mode) {
                f(d);
            }
        }
        if self.spec.mode == Mode::Train {
            for op in self.ops.iter().rev() {
                op.backward(f);
            }
            if let Some(adam) = &self.adam {
                f(&adam.step);
                f(&adam.advance);
            }
        }
    }

    /// Record one step into a compute pass of `enc`.
    pub fn record(&self, enc: &mut wgpu::CommandEncoder) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("step"),
            timestamp_writes: None,
        });
        self.visit_step(&mut |d| d.record(&mut pass));
    }

    /// Push the samples in `x[0]`, with their log r already in `logq`, through the flow (and
    /// the action and loss) without drawing: the step's forward minus the prior. For checking
    /// the flow on given inputs (e.g. its symmetry).
    pub fn submit_forward_from_input(&self, gpu: &Gpu) {
        let forward: Vec<&Dispatch> = (self.ops.iter())
            .filter(|op| !matches!(op, Op::Prior(_)))
            .filter_map(|op| op.forward(self.spec.mode))
            .collect();
        gpu.submit("forward", &forward);
    }

    /// Record and submit one step (the only submit of a training step).
    pub fn submit_step(&self, gpu: &Gpu) {
        gpu.submit("step", &self.step_dispatches());
    }

    /// Bytes of all buffers this tape planned.
    pub fn memory_bytes(&self) -> u64 {
        self.buffers.iter().map(|(_, b)| b).sum()
    }
}
