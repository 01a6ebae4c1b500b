//! The tape: the flow's graph is fixed by the config, so it is recorded once. Building a tape
//! plans every buffer and builds every dispatch (pipeline, uniform block, bind group); a step
//! then only records them into one compute pass: the forward ops in order, the backward ops in
//! reverse, then Adam. Each op knows its forward and backward dispatches (one backward rule per
//! op); the buffers wire gradients from op to op.
//!
//! Fusions that cut dispatches and memory traffic (each checked by the kernel tests):
//! the checkerboard mask and activations run inside the convolutions; each convolution's input
//! gradient is multiplied by the activation derivative of the layer below in the same kernel;
//! the first convolution adds its input gradient straight into the coupling's input gradient;
//! the action kernel writes dS/dphi scaled by dL/dS as it computes S. Where the net's shape and
//! the adapter allow (`Fusion`), a whole coupling layer runs as one dispatch each way
//! (`kernels::coupling_layer`): 53 dispatches per tutorial step instead of 228.

use crate::config::PriorKind;
use crate::flow::FlowSpec;
use crate::gpu::{Dispatch, Gpu, GpuBuffer};
use crate::kernels::LatticeBuffers;
use crate::kernels::action::{Action, ActionSpec};
use crate::kernels::adam::{Adam, AdamSpec};
use crate::kernels::conv::{
    Conv, ConvBuffers, ConvDims, ConvGrads, ConvSpec, ConvTiling, InputGrad,
};
use crate::kernels::coupling::{Coupling, CouplingBuffers, CouplingGrads, CouplingSpec};
use crate::kernels::coupling_layer::{
    CouplingLayer, CouplingLayerBuffers, CouplingLayerGrads, CouplingLayerSpec, activation_offsets,
};
use crate::kernels::prior::{Prior, PriorSpec};
use crate::kernels::reduce;
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
    /// Initial learning rate (Train).
    pub lr: f64,
    /// The config key that sets `batch`, named when a buffer is too large.
    pub batch_key: &'static str,
    /// Whether each coupling layer runs as one dispatch each way.
    pub fusion: Fusion,
}

/// Whether each coupling layer runs as one dispatch forward and one (plus a reduction)
/// backward (`kernels::coupling_layer`) instead of one launch per convolution and one for the
/// coupling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fusion {
    /// On GPUs (where launches are what a small step costs; not measured: no GPU was at
    /// hand). On CPU adapters where it was measured to pay: batch x volume at most
    /// `SOFTWARE_FUSE_MAX_SITES`.
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
pub const SOFTWARE_FUSE_MAX_SITES: usize = 512;

impl Fusion {
    fn wanted(self, gpu: &Gpu, spec: &TapeSpec) -> bool {
        match self {
            Fusion::Auto => {
                !gpu.is_software()
                    || spec.batch * spec.flow.lattice.volume() <= SOFTWARE_FUSE_MAX_SITES
            }
            Fusion::On => true,
            Fusion::Off => false,
        }
    }
}

impl TapeSpec {
    /// The training tape of a config: batch `training.batchsize`, the training stream of the
    /// prior, the first epoch's learning rate.
    pub fn training(cfg: &crate::config::Config) -> TapeSpec {
        TapeSpec {
            flow: FlowSpec::from_config(cfg),
            batch: cfg.training.batchsize,
            mode: Mode::Train,
            prior: cfg.training.prior.clone(),
            seed: cfg.training.seed,
            stream: crate::kernels::prior::stream::TRAIN,
            m2: cfg.physical.m2,
            lam: cfg.physical.lam,
            lr: cfg.lr(1),
            batch_key: "training.batchsize",
            fusion: Fusion::Auto,
        }
    }
}

/// One recorded op with its forward and backward dispatches.
pub enum Op {
    Prior(Prior),
    Conv(Conv),
    Coupling(Coupling),
    Action(Action),
    Loss(Dispatch),
    /// A coupling layer whose forward is one dispatch. Its backward is the layer's own (one
    /// dispatch and a reduction) where that fits, else that of the unfused ops it replaces,
    /// kept in `parts` in forward order (empty otherwise).
    Layer(CouplingLayer, Vec<Op>),
}

impl Op {
    fn forward(&self, mode: Mode) -> Vec<&Dispatch> {
        match self {
            Op::Prior(p) => vec![&p.sample],
            Op::Conv(c) => vec![&c.forward],
            Op::Coupling(c) => vec![&c.forward],
            // Training fuses dS/dphi into the forward: it is the loss's only path to phi.
            Op::Action(a) => vec![if mode == Mode::Train {
                &a.action_grad
            } else {
                &a.action
            }],
            Op::Loss(d) => vec![d],
            Op::Layer(fused, _) => vec![&fused.forward],
        }
    }

    fn backward(&self) -> Vec<&Dispatch> {
        match self {
            Op::Conv(c) => c.backward.iter().collect(),
            Op::Coupling(c) => c.backward.iter().collect(),
            Op::Layer(fused, parts) if parts.is_empty() => fused.backward.iter().collect(),
            Op::Layer(_, parts) => parts.iter().rev().flat_map(|op| op.backward()).collect(),
            // Prior: z is not differentiated. Action, Loss: fused into their forwards.
            Op::Prior(_) | Op::Action(_) | Op::Loss(_) => vec![],
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Op::Prior(_) => "prior",
            Op::Conv(_) => "conv",
            Op::Coupling(_) => "coupling",
            Op::Action(_) => "action",
            Op::Loss(_) => "loss",
            Op::Layer(..) => "coupling layer",
        }
    }
}

/// Allocates buffers and keeps the list for `--dry-run` and `bench`.
struct Planner<'a> {
    gpu: &'a Gpu,
    batch_key: &'static str,
    list: Vec<(String, u64)>,
}

impl Planner<'_> {
    fn f32(&mut self, label: String, len: usize) -> Result<GpuBuffer> {
        let b = self.gpu.storage(&label, len).with_context(|| {
            format!(
                "planning the buffers; lower {} or the lattice",
                self.batch_key
            )
        })?;
        self.list.push((label, b.size));
        Ok(b)
    }
}

/// Before building anything, check the largest buffers against the adapter's limits, so that a
/// config too big for the device is a message naming the limit and the field to lower, not an
/// out-of-memory crash while building the tables.
fn check_limits(gpu: &Gpu, spec: &TapeSpec) -> Result<()> {
    let flow = &spec.flow;
    let v = flow.lattice.volume() as u64;
    let widest = *flow.channels().iter().max().unwrap_or(&1) as u64;
    let max = gpu
        .limits
        .max_storage_buffer_binding_size
        .min(gpu.limits.max_buffer_size);
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let activation = 4 * spec.batch as u64 * widest * v;
    if activation > max {
        anyhow::bail!(
            "one activation buffer (batch {} x {} channels x {} sites) needs {:.0} MiB, over this adapter's max_storage_buffer_binding_size of {:.0} MiB ({}); lower {}, physical.L or model.hidden_sizes",
            spec.batch,
            widest,
            v,
            mib(activation),
            mib(max),
            gpu.info.name,
            spec.batch_key
        );
    }
    let table = 4 * v * flow.taps() as u64;
    if table > max {
        anyhow::bail!(
            "the neighbour table ({} sites x {} taps) needs {:.0} MiB, over this adapter's max_storage_buffer_binding_size of {:.0} MiB ({}); lower physical.L or model.kernel_size",
            v,
            flow.taps(),
            mib(table),
            mib(max),
            gpu.info.name
        );
    }
    let groups = gpu.limits.max_compute_workgroups_per_dimension as usize;
    if spec.batch > groups {
        anyhow::bail!(
            "{} = {} exceeds this adapter's max_compute_workgroups_per_dimension = {groups}",
            spec.batch_key,
            spec.batch
        );
    }
    Ok(())
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
    pub ops: Vec<Op>,
    pub adam: Option<Adam>,
    /// Every buffer this tape allocated (label, bytes), for the plan printout.
    pub buffers: Vec<(String, u64)>,
}

impl Tape {
    /// Plan buffers and record every op. `params` is the model's parameter buffer; a training
    /// tape also creates the gradient and Adam's moments.
    pub fn new(gpu: &Gpu, spec: TapeSpec, params: &GpuBuffer, counter: &GpuBuffer) -> Result<Tape> {
        let flow = &spec.flow;
        let lat = flow.lattice;
        let v = lat.volume();
        let b = spec.batch;
        let train = spec.mode == Mode::Train;
        check_limits(gpu, &spec)?;
        let mut pl = Planner {
            gpu,
            batch_key: spec.batch_key,
            list: vec![],
        };
        let lattice = LatticeBuffers::new(gpu, lat, flow.kernel_size)?;
        for (label, buf) in [
            ("neighbour table", &lattice.nbr),
            ("parity table", &lattice.parity),
            ("hop table", &lattice.hop),
        ] {
            pl.list.push((label.into(), buf.size));
        }
        let channels = flow.channels();
        let n_convs = channels.len() - 1;
        // Each convolution's shape and its tiling for this adapter (one place decides both
        // the partial-sum scratch below and the kernels).
        let dims_of = |cin: usize, cout: usize| ConvDims {
            batch: b,
            volume: v,
            taps: flow.taps(),
            cin,
            cout,
        };
        let tiling_of = |cin: usize, cout: usize| {
            ConvTiling::for_adapter(&dims_of(cin, cout), flow.kernel_size, gpu.is_software())
        };

        // Activations. Train keeps everything the backward reads; Infer reuses one set.
        let n_x = if train { flow.n_layers + 1 } else { 2 };
        let x: Vec<GpuBuffer> = (0..n_x)
            .map(|i| pl.f32(format!("x[{i}]"), b * v))
            .collect::<Result<_>>()?;
        // One dispatch per coupling layer where the net's shape and the adapter allow (all
        // layers have the same shape, so layer 0 decides). Training then keeps each layer's
        // activations in one buffer, segment by segment (`activation_offsets`); inference keeps
        // them in workgroup memory only.
        let layer_spec = |l: usize| CouplingLayerSpec {
            batch: b,
            volume: v,
            taps: flow.taps(),
            kernel_size: flow.kernel_size,
            convs: flow.convs(l),
            parity: flow.parity(l),
            train,
            gpu_tiling: false,
        };
        let (h_off, h_len) = activation_offsets(b, v, &channels);
        let max_binding = gpu
            .limits
            .max_storage_buffer_binding_size
            .min(gpu.limits.max_buffer_size);
        let fused = spec.fusion.wanted(gpu, &spec)
            && flow.n_layers > 0
            && params.usage.contains(crate::gpu::Usage::UNIFORM)
            && layer_spec(0).unfusable(gpu).is_none()
            && (!train || (4 * h_len) as u64 <= max_binding);
        // Whole layers both ways: no per-convolution gradient buffers are needed.
        let whole = fused && train && layer_spec(0).backward_unfusable(gpu).is_none();
        let sets = match (train, fused) {
            (true, _) => flow.n_layers,
            (false, true) => 0,
            (false, false) => 1,
        };
        let (h, h_layer): (Vec<Vec<GpuBuffer>>, Vec<GpuBuffer>) = if fused {
            let bufs = (0..sets)
                .map(|l| pl.f32(format!("h[{l}]"), h_len))
                .collect::<Result<Vec<_>>>()?;
            let views = bufs
                .iter()
                .map(|buf| {
                    (0..n_convs)
                        .map(|j| {
                            buf.range(4 * h_off[j] as u64, (4 * b * channels[j + 1] * v) as u64)
                        })
                        .collect()
                })
                .collect();
            (views, bufs)
        } else {
            let h = (0..sets)
                .map(|l| {
                    (0..n_convs)
                        .map(|j| pl.f32(format!("h[{l}][{j}]"), b * channels[j + 1] * v))
                        .collect()
                })
                .collect::<Result<_>>()?;
            (h, vec![])
        };
        let unused = if sets == 0 {
            Some(pl.f32("unused activations".into(), 1)?)
        } else {
            None
        };
        let logq = pl.f32("log q".into(), b)?;
        let action_buf = pl.f32("S".into(), b)?;
        let metrics = pl.f32("metrics".into(), reduce::METRICS)?;
        let glogq = pl.f32("dL/dlog q".into(), b)?;

        // Gradients: the flow input's two alternating buffers, one per net depth (reused by
        // every layer), the net output's, the weight-gradient scratch.
        let (grads, adam_m, adam_v, gx, gh, partial) = if train {
            let np = flow.param_len();
            let per_kernel = channels
                .windows(2)
                .map(|w| {
                    let dims = dims_of(w[0], w[1]);
                    dims.batch.div_ceil(tiling_of(w[0], w[1]).chunk) * dims.n_params()
                })
                .max()
                .unwrap_or(1);
            let partial_len = match (fused, whole) {
                (_, true) => layer_spec(0).partial_len(gpu),
                (true, false) => per_kernel.max(layer_spec(0).partial_len(gpu)),
                (false, _) => per_kernel,
            };
            (
                Some(pl.f32("gradient".into(), np)?),
                Some(pl.f32("Adam m".into(), np)?),
                Some(pl.f32("Adam v".into(), np)?),
                vec![
                    pl.f32("dL/dx (even)".into(), b * v)?,
                    pl.f32("dL/dx (odd)".into(), b * v)?,
                ],
                (0..if whole { 0 } else { n_convs })
                    .map(|j| pl.f32(format!("dL/dh[{j}]"), b * channels[j + 1] * v))
                    .collect::<Result<Vec<_>>>()?,
                Some(pl.f32("weight-gradient partials".into(), partial_len)?),
            )
        } else {
            (None, None, None, vec![], vec![], None)
        };

        let mut ops = Vec::new();
        ops.push(Op::Prior(Prior::new(
            gpu,
            PriorSpec {
                batch: b,
                volume: v,
                seed: spec.seed,
                stream: spec.stream,
                kind: spec.prior.clone(),
            },
            counter,
            &x[0],
            &logq,
        )?));

        for l in 0..flow.n_layers {
            let parity = flow.parity(l);
            let (xin, xout) = if train {
                (&x[l], &x[l + 1])
            } else {
                (&x[l % 2], &x[(l + 1) % 2])
            };
            if fused {
                // The layer's forward as one dispatch, and its backward where that fits too;
                // otherwise the unfused ops below supply the backward.
                let hbuf = h_layer.get(l).or(unused.as_ref()).unwrap();
                let grad = train.then(|| CouplingLayerGrads {
                    gy: &gx[(l + 1) % 2],
                    gx: &gx[l % 2],
                    glogq: &glogq,
                    partial: partial.as_ref().unwrap(),
                    grads: grads.as_ref().unwrap(),
                });
                let layer = CouplingLayer::new(
                    gpu,
                    layer_spec(l),
                    &CouplingLayerBuffers {
                        lattice: &lattice,
                        params,
                        x: xin,
                        y: xout,
                        logq: &logq,
                        h: hbuf,
                        grad,
                    },
                )?;
                // The plan above (no per-convolution gradient buffers) assumed this.
                let has_backward = !layer.backward.is_empty();
                anyhow::ensure!(
                    whole == has_backward,
                    "coupling layer {l}: its backward does not match the plan"
                );
                ops.push(Op::Layer(layer, vec![]));
                if !train || whole {
                    continue;
                }
            }
            let mut layer_ops = Vec::new();
            let hs = &h[if train { l } else { 0 }];
            let convs = flow.convs(l);
            for (j, c) in convs.iter().enumerate() {
                let first = j == 0;
                let input = if first { xin } else { &hs[j - 1] };
                let input_grad = if first {
                    // Layer 0's input is the prior sample: nothing to differentiate.
                    if l == 0 {
                        InputGrad::Skip
                    } else {
                        InputGrad::AddMasked
                    }
                } else {
                    InputGrad::TimesActGrad(convs[j - 1].act)
                };
                let cspec = ConvSpec {
                    dims: dims_of(c.cin, c.cout),
                    act: c.act,
                    in_mask: first,
                    parity,
                    w_off: c.offset,
                    input_grad,
                    tiling: tiling_of(c.cin, c.cout),
                };
                // Gradient wiring: the last convolution's output gradient is the coupling's
                // dL/dst (gh's last entry); the first one's input gradient is the coupling input's.
                let grad = if train {
                    Some(ConvGrads {
                        grads: grads.as_ref().unwrap(),
                        gy: &gh[j],
                        gx: if first { &gx[l % 2] } else { &gh[j - 1] },
                        partial: partial.as_ref().unwrap(),
                    })
                } else {
                    None
                };
                let conv = Conv::new(
                    gpu,
                    cspec,
                    &ConvBuffers {
                        lattice: &lattice,
                        params,
                        x: input,
                        y: &hs[j],
                        grad,
                    },
                )?;
                layer_ops.push(Op::Conv(conv));
            }
            let grad = if train {
                Some(CouplingGrads {
                    gy: &gx[(l + 1) % 2],
                    gx: &gx[l % 2],
                    gst: &gh[n_convs - 1],
                    glogq: &glogq,
                })
            } else {
                None
            };
            layer_ops.push(Op::Coupling(Coupling::new(
                gpu,
                CouplingSpec {
                    batch: b,
                    volume: v,
                    parity,
                    final_act: flow.final_act(),
                },
                &CouplingBuffers {
                    lattice: &lattice,
                    x: xin,
                    st: &hs[n_convs - 1],
                    y: xout,
                    logq: &logq,
                    grad,
                },
            )?));
            match ops.last_mut() {
                Some(Op::Layer(_, parts)) if fused => *parts = layer_ops,
                _ => ops.extend(layer_ops),
            }
        }

        let phi = if train {
            &x[flow.n_layers]
        } else {
            &x[flow.n_layers % 2]
        };
        // dL/dphi goes where the last coupling's backward reads dL/dy. Inference never runs
        // action_grad, so its (never written) gradient target may be phi itself.
        let gphi = if train { &gx[flow.n_layers % 2] } else { phi };
        let action = Action::new(
            gpu,
            ActionSpec {
                batch: b,
                m2: spec.m2,
                lam: spec.lam,
                scale: 1.0 / b as f64,
            },
            &lattice,
            phi,
            &action_buf,
            gphi,
        )?;
        ops.push(Op::Action(action));
        ops.push(Op::Loss(reduce::loss(
            gpu,
            b,
            &logq,
            &action_buf,
            &metrics,
            &glogq,
        )?));

        let adam = if train {
            Some(Adam::new(
                gpu,
                AdamSpec::new(flow.param_len(), spec.lr),
                counter,
                params,
                grads.as_ref().unwrap(),
                adam_m.as_ref().unwrap(),
                adam_v.as_ref().unwrap(),
            )?)
        } else {
            None
        };
        gpu.check()?;
        Ok(Tape {
            lattice,
            params: params.clone(),
            counter: counter.clone(),
            logq,
            action: action_buf,
            metrics,
            grads,
            adam_m,
            adam_v,
            ops,
            adam,
            buffers: pl.list,
            x,
            spec,
        })
    }

    /// Whether the coupling layers run as whole-layer dispatches (`Fusion`).
    pub fn fused_layers(&self) -> bool {
        self.ops.iter().any(|op| matches!(op, Op::Layer(..)))
    }

    /// The buffer holding phi after the forward.
    pub fn phi(&self) -> &GpuBuffer {
        if self.spec.mode == Mode::Train {
            &self.x[self.spec.flow.n_layers]
        } else {
            &self.x[self.spec.flow.n_layers % 2]
        }
    }

    /// Every dispatch of one step in order: forward, backward in reverse, Adam, counter.
    pub fn step_dispatches(&self) -> Vec<&Dispatch> {
        let mut d: Vec<&Dispatch> = self
            .ops
            .iter()
            .flat_map(|op| op.forward(self.spec.mode))
            .collect();
        if self.spec.mode == Mode::Train {
            d.extend(self.ops.iter().rev().flat_map(|op| op.backward()));
            if let Some(adam) = &self.adam {
                d.push(&adam.step);
                d.push(&adam.advance);
            }
        }
        d
    }

    /// Record one step into a compute pass of `enc`.
    pub fn record(&self, enc: &mut wgpu::CommandEncoder) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("step"),
            timestamp_writes: None,
        });
        for d in self.step_dispatches() {
            d.record(&mut pass);
        }
    }

    /// Record and submit one step (the only submit of a training step).
    pub fn submit_step(&self, gpu: &Gpu) {
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            });
        self.record(&mut enc);
        gpu.queue.submit([enc.finish()]);
    }

    /// Bytes of all buffers this tape planned.
    pub fn memory_bytes(&self) -> u64 {
        self.buffers.iter().map(|(_, b)| b).sum()
    }
}
