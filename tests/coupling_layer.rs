//! A whole coupling layer in one dispatch (src/kernels/coupling_layer.rs,
//! shaders/coupling_layer.wgsl) against the f64 reference model (`flow::reference::forward`,
//! built from the convolution and coupling references): y, log q and, in training, every
//! convolution's output, for two consecutive layers (both checkerboard parities), Nd = 1..4,
//! one to three hidden layers, both final activations, plain and symmetrised couplings, plain
//! and combinational nets (each branch's output too), the GPU and the CPU-adapter tilings.
//! In training, the backward too: dL/dx of each layer and every weight gradient against
//! `flow::reference::layer_backward`. Then whole tapes with and without the fusion against
//! each other (tests/tape.rs checks whole training steps, fused and not, against the reference).
//! Tolerance: f32 through three convolutions of up to 8 x 81 terms and a V-term log J: 1e-5.

use crate::common::*;
use gomaflow_wgpu::config::PriorKind;
use gomaflow_wgpu::flow::{Combi, CombiAct, CouplingKind, FlowSpec, reference};
use gomaflow_wgpu::gpu::Precision;
use gomaflow_wgpu::kernels::LatticeBuffers;
use gomaflow_wgpu::kernels::coupling_layer::{
    CouplingLayer, CouplingLayerBuffers, CouplingLayerGrads, CouplingLayerSpec, activation_offsets,
};
use gomaflow_wgpu::lattice::Lattice;
use gomaflow_wgpu::rng::stream;
use gomaflow_wgpu::tape::{Fusion, Mode, Tape, TapeSpec};

fn flow(nd: usize, l: usize, hidden: Vec<usize>, k: usize, tanh: bool) -> FlowSpec {
    flow_layers(nd, l, 2, hidden, k, tanh)
}

fn flow_layers(
    nd: usize,
    l: usize,
    n: usize,
    hidden: Vec<usize>,
    k: usize,
    tanh: bool,
) -> FlowSpec {
    FlowSpec::new(Lattice::new(nd, l), n, hidden, k, tanh)
}

fn run(f: &FlowSpec, batch: usize, train: bool, seed: u64) {
    // The adapter's tiling, then a GPU's (one site and one tap per thread, a sample per
    // backward workgroup).
    run_tiled(f, batch, train, seed, false);
    run_tiled(f, batch, train, seed, true);
}

/// Two layers forward (and, training, backward: layer 1 then layer 0) against the reference.
fn run_tiled(f: &FlowSpec, batch: usize, train: bool, seed: u64, gpu_tiling: bool) {
    let g = gpu();
    let v = f.lattice.volume();
    let label = format!(
        "coupling layer Nd={} L={} hidden {:?} k={} tanh={} z2={} combi {:?} train={train} gpu tiling {gpu_tiling}",
        f.lattice.nd,
        f.lattice.l,
        f.hidden,
        f.kernel_size,
        f.final_tanh,
        f.z2(),
        f.combi
    );
    let mut r = rng(seed);
    // Weights wider than PyTorch's initialisation, so the activations are not all small.
    let mut p: Vec<f64> = f
        .init_params(seed)
        .iter()
        .map(|&w| 2.0 * w as f64)
        .collect();
    p = rounded(&p);
    let x = rounded(&uniform(&mut r, batch * v, -2.0, 2.0));
    let logq0 = rounded(&uniform(&mut r, batch, -10.0, 10.0));
    let want = reference::forward(f, &p, &x, &logq0);

    let lb = LatticeBuffers::new(g, f.lattice, &f.tap_sets()).unwrap();
    let params = g.upload_params(&f32s(&p)).unwrap();
    let xs = [
        upload("x0", &x),
        g.storage("x1", batch * v).unwrap(),
        g.storage("x2", batch * v).unwrap(),
    ];
    let logq = upload("logq", &logq0);
    let channels = f.channels();
    // The net's batch: twice the coupling's where it is symmetrised.
    let nb = batch * f.nets[0].coupling.net_batch_factor();
    let (offsets, h_len) = activation_offsets(nb, v, &channels, Precision::F32);
    // Backward: dL/dphi (the output of layer 1) and dL/dlog q given; dL/dx of each layer's
    // input, the weight-gradient scratch and the gradient computed.
    let gy2 = rounded(&uniform(&mut r, batch * v, -1.0, 1.0));
    let glogq = rounded(&uniform(&mut r, batch, -1.0, 1.0));
    let gxs = [
        g.storage("gx0", batch * v).unwrap(),
        g.storage("gx1", batch * v).unwrap(),
        upload("gy2", &gy2),
    ];
    let bglogq = upload("glogq", &glogq);
    let grads = g.storage("grads", f.param_len).unwrap();
    let spec_of = |l: usize| CouplingLayerSpec {
        batch,
        volume: v,
        net: f.nets[l].clone(),
        train,
        gpu_tiling,
        precision: Precision::F32,
        loss_scale: 1.0,
    };
    let partial = g.storage("partial", spec_of(0).partial_len(g)).unwrap();
    // Every stage's output, then (a combinational layer averaging after the activation)
    // every branch's.
    let hb_len = spec_of(0).branch_len();
    assert_eq!(spec_of(0).h_len(), h_len + hb_len);
    let h: Vec<_> = (0..2)
        .map(|l| g.storage(&format!("h{l}"), h_len + hb_len).unwrap())
        .collect();
    let layers: Vec<CouplingLayer> = (0..2)
        .map(|l| {
            let spec = spec_of(l);
            assert_eq!(spec.unfusable(g), None, "{label}");
            assert_eq!(spec.backward_unfusable(g), None, "{label}");
            CouplingLayer::new(
                g,
                spec,
                &CouplingLayerBuffers {
                    lattice: &lb,
                    params: &params,
                    x: &xs[l],
                    y: &xs[l + 1],
                    logq: &logq,
                    h: &h[l],
                    grad: train.then(|| CouplingLayerGrads {
                        gy: &gxs[l + 1],
                        gx: &gxs[l],
                        glogq: &bglogq,
                        partial: &partial,
                        grads: &grads,
                    }),
                },
            )
            .unwrap()
        })
        .collect();
    if gpu_tiling {
        let key = &layers[0].forward.label;
        assert!(key.contains(",SPT=1,TPT=1,"), "{key}");
    }
    let mut dispatches = vec![&layers[0].forward, &layers[1].forward];
    dispatches.extend(layers[1].backward.iter().chain(&layers[0].backward));
    assert_eq!(dispatches.len(), if train { 6 } else { 2 });
    g.run(&dispatches).unwrap();

    for l in 0..2 {
        check(
            &format!("{label} layer {l} y"),
            &read(&xs[l + 1]),
            &want.x[l + 1],
            1e-5,
        );
        if train {
            let got = read(&h[l]);
            for (j, want_h) in want.h[l].iter().enumerate() {
                let seg = &got[offsets[j]..offsets[j] + want_h.len()];
                check(
                    &format!("{label} layer {l} conv {j} output"),
                    seg,
                    want_h,
                    1e-5,
                );
            }
            // Every branch's output, in the order of the net's blocks.
            if hb_len > 0 {
                let want_hb: Vec<f64> = want.hb[l].concat();
                assert_eq!(want_hb.len(), hb_len, "{label}");
                check(
                    &format!("{label} layer {l} branches"),
                    &got[h_len..],
                    &want_hb,
                    1e-5,
                );
            }
        }
    }
    check(&format!("{label} log q"), &read(&logq), &want.logq, 1e-5);
    if !train {
        return;
    }
    let mut grad = vec![0.0; p.len()];
    let gx1 = reference::layer_backward(f, &p, &want, 1, &gy2, &glogq, &mut grad);
    let gx0 = reference::layer_backward(f, &p, &want, 0, &gx1, &glogq, &mut grad);
    check(
        &format!("{label} layer 1 dL/dx"),
        &read(&gxs[1]),
        &gx1,
        1e-5,
    );
    check(
        &format!("{label} layer 0 dL/dx"),
        &read(&gxs[0]),
        &gx0,
        1e-5,
    );
    // Relative to the gradient's scale (sums of V * batch terms).
    let scale = grad.iter().fold(1.0f64, |a, b| a.max(b.abs()));
    let got: Vec<f64> = read(&grads).iter().map(|x| x / scale).collect();
    let want: Vec<f64> = grad.iter().map(|x| x / scale).collect();
    check(
        &format!("{label} weight gradients of both layers"),
        &got,
        &want,
        1e-5,
    );
}

#[test]
fn coupling_layer_2d() {
    // The tutorial's net on an 8 x 8 lattice, training and inference.
    run(&flow(2, 8, vec![8, 8], 3, true), 5, true, 1);
    run(&flow(2, 8, vec![8, 8], 3, true), 3, false, 2);
    // One hidden layer (no HID -> HID stage), no final tanh, a 5 x 5 kernel.
    run(&flow(2, 6, vec![4], 5, false), 4, true, 3);
    // Three hidden layers: both halves of the workgroup buffer in turn; a lattice that is
    // not a multiple of the workgroup.
    run(&flow(2, 5, vec![3, 3, 3], 3, true), 3, true, 4);
}

/// Symmetrised couplings: the net on x and -x in one workgroup, combined.
#[test]
fn coupling_layer_z2() {
    let z2 = |f: FlowSpec| f.with_coupling(CouplingKind::AffineZ2);
    run(&z2(flow(2, 8, vec![8, 8], 3, true)), 5, true, 11);
    run(&z2(flow(2, 8, vec![8, 8], 3, true)), 3, false, 12);
    run(&z2(flow(2, 6, vec![4], 5, false)), 4, true, 13);
    run(&z2(flow(2, 5, vec![3, 3, 3], 3, true)), 3, true, 14);
    run(&z2(flow(1, 12, vec![4, 4], 3, true)), 4, true, 15);
    run(&z2(flow(3, 4, vec![4, 4], 3, true)), 3, true, 16);
    run(&z2(flow(4, 3, vec![2, 2], 3, true)), 2, true, 17);
}

#[test]
fn coupling_layer_other_dimensions() {
    run(&flow(1, 12, vec![4, 4], 3, true), 4, true, 5);
    run(&flow(3, 4, vec![4, 4], 3, true), 3, true, 6);
    run(&flow(4, 3, vec![2, 2], 3, true), 2, true, 7);
}

/// Combinational nets: every r-subset count of Nd = 2, 3, 4, the mean after the branches'
/// activations and before the stage's, symmetrised, training and inference, both tilings.
#[test]
fn coupling_layer_combi() {
    let combi = |f: FlowSpec, r, act| f.with_combi(Combi { r, act });
    let (branch, last) = (CombiAct::Branch, CombiAct::Last);
    run(
        &combi(flow(2, 4, vec![3, 3], 3, true), 1, branch),
        3,
        true,
        21,
    );
    run(
        &combi(flow(2, 4, vec![3, 3], 3, true), 1, branch),
        3,
        false,
        22,
    );
    run(&combi(flow(2, 6, vec![4], 5, false), 1, last), 2, true, 23);
    // Three hidden layers: the hidden stages' branch strides; L 5, not a multiple of WG.
    run(
        &combi(flow(2, 5, vec![3, 3, 3], 3, true), 1, branch),
        2,
        true,
        24,
    );
    run(
        &combi(flow(3, 4, vec![4, 4], 3, true), 1, branch),
        2,
        true,
        25,
    );
    run(
        &combi(flow(3, 4, vec![2, 2], 3, true), 2, last),
        2,
        true,
        26,
    );
    run(
        &combi(flow(3, 3, vec![2, 2], 3, true), 2, branch),
        2,
        true,
        27,
    );
    for r in 1..=3 {
        run(
            &combi(flow(4, 2, vec![2, 2], 3, true), r, branch),
            2,
            true,
            28 + r as u64,
        );
    }
    run(&combi(flow(4, 3, vec![2], 3, false), 2, last), 2, true, 32);
    let z2 = |f: FlowSpec| f.with_coupling(CouplingKind::AffineZ2);
    run(
        &z2(combi(flow(2, 4, vec![3, 3], 3, true), 1, branch)),
        2,
        true,
        33,
    );
    run(
        &z2(combi(flow(3, 4, vec![2], 3, true), 2, last)),
        2,
        true,
        34,
    );
}

/// Where the net's hidden widths differ, the layer is not fused, and says why.
#[test]
fn unequal_hidden_widths_are_not_fused() {
    let f = flow(2, 4, vec![4, 3], 3, true);
    let spec = CouplingLayerSpec {
        batch: 2,
        volume: 16,
        net: f.nets[0].clone(),
        train: false,
        gpu_tiling: false,
        precision: Precision::F32,
        loss_scale: 1.0,
    };
    let why = spec.unfusable(gpu()).expect("[4, 3] must not fuse");
    assert!(why.contains("[1, HID, ..., HID, 2]"), "{why}");
    // A lattice whose activations overflow workgroup memory: 2D L 32 with [8, 8].
    let f = flow(2, 32, vec![8, 8], 3, true);
    let spec = CouplingLayerSpec {
        volume: 1024,
        net: f.nets[0].clone(),
        ..spec
    };
    let why = spec.unfusable(gpu()).expect("L 32 must not fuse");
    assert!(why.contains("workgroup memory"), "{why}");
    // 14 x 14: the forward fits, the backward (with the weight gradients) does not.
    let f = flow(2, 14, vec![8, 8], 3, true);
    let spec = CouplingLayerSpec {
        volume: 196,
        net: f.nets[0].clone(),
        ..spec
    };
    assert_eq!(spec.unfusable(gpu()), None);
    let why = spec
        .backward_unfusable(gpu())
        .expect("L 14 backward must not fuse");
    assert!(why.contains("weight gradients"), "{why}");
    // f16 activations halve the forward's workgroup memory: with [8, 8] its largest even
    // lattice goes from L 14 to L 22 (the backward's f32 gradients are unchanged).
    for (l, precision, fits) in [
        (14, Precision::F32, true),
        (16, Precision::F32, false),
        (22, Precision::F16, true),
        (24, Precision::F16, false),
    ] {
        let f = flow(2, l, vec![8, 8], 3, true);
        let spec = CouplingLayerSpec {
            volume: l * l,
            net: f.nets[0].clone(),
            precision,
            ..spec.clone()
        };
        assert_eq!(spec.unfusable(gpu()).is_none(), fits, "L {l} {precision:?}");
    }
}

/// Inference and training tapes, fused and not, draw the same phi and log q (the fused layer
/// sums log J in another order, so log q agrees to rounding; phi bit for bit).
#[test]
fn fused_and_unfused_tapes_agree() {
    let plain = flow_layers(2, 8, 4, vec![8, 8], 3, true);
    tapes_agree(&plain);
    tapes_agree(&plain.with_coupling(CouplingKind::AffineZ2));
    let combi = |act| flow_layers(2, 8, 4, vec![8, 8], 3, true).with_combi(Combi { r: 1, act });
    tapes_agree(&combi(CombiAct::Branch));
    tapes_agree(&combi(CombiAct::Last).with_coupling(CouplingKind::AffineZ2));
}

/// The same under `[device] precision = "f16"`: whole layers keep their activations as f16
/// (in workgroup memory and for the backward) and round (s, t) where the per-kernel path
/// stores them, so phi agrees bit for bit there too; the whole-layer backward keeps its
/// gradients in f32 where the per-kernel one stores f16, so the two training steps' gradients
/// agree within the f16 rounding (measured: 6e-5 of the largest; tolerance 1e-3).
#[test]
fn fused_and_unfused_tapes_agree_in_f16() {
    let plain = flow_layers(2, 8, 4, vec![8, 8], 3, true);
    tapes_agree_in(&plain, Precision::F16);
    tapes_agree_in(&plain.with_coupling(CouplingKind::AffineZ2), Precision::F16);
    let combi = |act| flow_layers(2, 8, 4, vec![8, 8], 3, true).with_combi(Combi { r: 1, act });
    tapes_agree_in(&combi(CombiAct::Branch), Precision::F16);
    tapes_agree_in(
        &combi(CombiAct::Last).with_coupling(CouplingKind::AffineZ2),
        Precision::F16,
    );
}

fn tapes_agree(f: &FlowSpec) {
    tapes_agree_in(f, Precision::F32);
}

fn tapes_agree_in(f: &FlowSpec, precision: Precision) {
    let g = gpu();
    let params = g.upload_params(&f.init_params(11)).unwrap();
    let mut out = vec![];
    let mut grads = vec![];
    for mode in [Mode::Infer, Mode::Train] {
        for fusion in [Fusion::On, Fusion::Off] {
            let spec = TapeSpec {
                flow: f.clone(),
                batch: 6,
                mode,
                prior: PriorKind::Normal {
                    mu: 0.0,
                    sigma: 1.0,
                },
                seed: 99,
                stream: stream::TRAIN,
                m2: -4.0,
                lam: 8.0,
                lr: 0.0,
                adam_betas: [0.9, 0.999],
                fusion,
                precision,
            };
            let counter = g.upload("counter", &[0u32; 4]).unwrap();
            let tape = Tape::new(g, spec, &params, &counter).unwrap();
            let n_fused = tape
                .ops
                .iter()
                .filter(|op| op.name() == "coupling layer")
                .count();
            assert_eq!(n_fused, if fusion == Fusion::On { 4 } else { 0 });
            tape.submit_step(g);
            if let Some(gr) = &tape.grads {
                grads.push(read(gr));
            }
            out.push((
                format!("z2 {} {mode:?} {fusion:?} {precision:?}", f.z2()),
                read(tape.phi()),
                read(&tape.logq),
                read(&tape.metrics)[0],
            ));
        }
    }
    let (l0, phi0, lq0, loss0) = &out[0];
    for (l, phi, lq, loss) in &out[1..] {
        assert_eq!(phi, phi0, "{l} vs {l0}: phi");
        check(&format!("tape {l} vs {l0}: log q"), lq, lq0, 1e-6);
        check(
            &format!("tape {l} vs {l0}: loss"),
            &[*loss],
            &[*loss0],
            1e-6,
        );
    }
    // The training step's gradients, whole layers against per kernel.
    let scale = grads[1].iter().fold(1e-6f64, |a, b| a.max(b.abs()));
    let rel = |g: &[f64]| g.iter().map(|x| x / scale).collect::<Vec<_>>();
    let tol = if precision == Precision::F16 {
        1e-3
    } else {
        1e-5
    };
    check(
        &format!(
            "tape z2 {} {precision:?} gradient, whole layers vs per kernel",
            f.z2()
        ),
        &rel(&grads[0]),
        &rel(&grads[1]),
        tol,
    );
}
