//! The tape (src/tape.rs) against the f64 reference model (src/flow.rs): the gradient of the whole
//! model, every parameter, against the hand-written reference backward and against central
//! finite differences of the reference loss; full training steps (prior draw, forward,
//! backward, Adam, counter) against the reference; the parameter counts of the 2D and 3D defaults.
//! Tolerance: f32 through a few coupling layers: 1e-4 (relative to 1 + |value|).

use crate::common::*;
use gomaflow_wgpu::config::PriorKind;
use gomaflow_wgpu::flow::{Combi, CombiAct, CouplingKind, FlowSpec, reference};
use gomaflow_wgpu::gpu::Precision;
use gomaflow_wgpu::kernels::adam::{self, AdamSpec};
use gomaflow_wgpu::kernels::prior::reference as prior_ref;
use gomaflow_wgpu::lattice::Lattice;
use gomaflow_wgpu::rng::stream;
use gomaflow_wgpu::tape::{Fusion, Mode, Tape, TapeSpec};

fn flow(nd: usize, l: usize, layers: usize, hidden: Vec<usize>, k: usize, tanh: bool) -> FlowSpec {
    FlowSpec::new(Lattice::new(nd, l), layers, hidden, k, tanh)
}

#[test]
fn parameter_counts() {
    assert_eq!(flow(2, 8, 16, vec![8, 8], 3, true).n_params(), 12_960);
    assert_eq!(flow(3, 8, 16, vec![8, 8], 3, true).n_params(), 38_304);
}

fn tape_spec(f: &FlowSpec, batch: usize, prior: PriorKind, lr: f64) -> TapeSpec {
    tape_spec_fused(f, batch, prior, lr, Fusion::On)
}

fn tape_spec_fused(
    f: &FlowSpec,
    batch: usize,
    prior: PriorKind,
    lr: f64,
    fusion: Fusion,
) -> TapeSpec {
    TapeSpec {
        flow: f.clone(),
        batch,
        mode: Mode::Train,
        prior,
        seed: 4242,
        stream: stream::TRAIN,
        m2: -4.0,
        lam: 8.0,
        lr,
        adam_betas: [0.9, 0.999],
        fusion,
        precision: Precision::F32,
    }
}

/// Run `steps` training steps on the GPU and on the reference, comparing the gradient and the
/// loss of each step and the parameters after it; with each coupling layer's forward as one
/// dispatch (where the net allows) and as separate launches.
fn train_steps(label: &str, f: &FlowSpec, batch: usize, prior: PriorKind, steps: u64, fd: bool) {
    train_steps_betas(label, f, batch, prior, steps, fd, DEFAULT_BETAS);
}

const DEFAULT_BETAS: [f64; 2] = [0.9, 0.999];

fn train_steps_betas(
    label: &str,
    f: &FlowSpec,
    batch: usize,
    prior: PriorKind,
    steps: u64,
    fd: bool,
    betas: [f64; 2],
) {
    train_steps_with(label, f, batch, prior.clone(), steps, fd, Fusion::On, betas);
    let label = format!("{label} unfused");
    train_steps_with(&label, f, batch, prior, steps, false, Fusion::Off, betas);
}

#[allow(clippy::too_many_arguments)]
fn train_steps_with(
    label: &str,
    f: &FlowSpec,
    batch: usize,
    prior: PriorKind,
    steps: u64,
    fd: bool,
    fusion: Fusion,
    betas: [f64; 2],
) {
    let g = gpu();
    let lr = 1e-2;
    let p0: Vec<f64> = f.init_params(7).iter().map(|&x| x as f64).collect();
    let params = g.upload_params(&f32s(&p0)).unwrap();
    let counter = g.upload("counter", &[0u32; 4]).unwrap();
    let spec = TapeSpec {
        adam_betas: betas,
        ..tape_spec_fused(f, batch, prior.clone(), lr, fusion)
    };
    let adam_spec = AdamSpec {
        beta1: betas[0],
        beta2: betas[1],
        ..AdamSpec::new(p0.len(), lr)
    };
    let tape = Tape::new(g, spec, &params, &counter).unwrap();
    let v = f.lattice.volume();

    let n = p0.len();
    let (mut p, mut m, mut s2) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
    for t in 1..=steps {
        tape.submit_step(g);
        g.wait().unwrap();
        let (z, logr) = prior_ref::sample(&prior, 4242, stream::TRAIN, (t - 1) as u32, batch, v);
        let (loss, grad) = reference::loss_and_grad(f, &p, &z, &logr, -4.0, 8.0);
        let gpu_grad = read(tape.grads.as_ref().unwrap());
        let gpu_loss = read(&tape.metrics)[0];
        check(
            &format!("{label} step {t} loss"),
            &[gpu_loss],
            &[loss],
            1e-4,
        );
        // Relative to the gradient's scale: entries near zero carry absolute f32 noise.
        let scale = grad.iter().fold(0.0f64, |a, b| a.max(b.abs())).max(1.0);
        let gs: Vec<f64> = grad.iter().map(|x| x / scale).collect();
        let gg: Vec<f64> = gpu_grad.iter().map(|x| x / scale).collect();
        check(
            &format!("{label} step {t} gradient of all {n} parameters"),
            &gg,
            &gs,
            1e-4,
        );

        if fd && t == 1 {
            // The reference backward is the derivative of the reference loss, every parameter.
            let loss_of = |q: &[f64]| reference::loss_and_grad(f, q, &z, &logr, -4.0, 8.0).0;
            let mut worst: f64 = 0.0;
            for (i, gi) in grad.iter().enumerate() {
                let d = central_diff(&loss_of, &p, i, 1e-5);
                worst = worst.max((d - gi).abs() / (1.0 + gi.abs()));
            }
            eprintln!(
                "CHECK {label} reference gradient vs finite differences, all {n} parameters: max error {worst:.2e} (tolerance 1e-6)"
            );
            assert!(
                worst < 1e-6,
                "{label}: reference backward vs finite differences {worst:e}"
            );
        }

        // Adam on the reference; where the gradient is far from zero the update is determined;
        // near zero Adam's first steps are sign(g) * lr and f32 noise may flip the sign.
        adam::reference::step(&adam_spec, t, &mut p, &grad, &mut m, &mut s2);
        let gp = read(&tape.params);
        let determined: Vec<usize> = (0..n).filter(|&i| grad[i].abs() > 1e-3 * scale).collect();
        let got: Vec<f64> = determined.iter().map(|&i| gp[i]).collect();
        let want: Vec<f64> = determined.iter().map(|&i| p[i]).collect();
        check(
            &format!(
                "{label} step {t} parameters after Adam ({} of {n})",
                determined.len()
            ),
            &got,
            &want,
            1e-5,
        );
        let all_close = (0..n).all(|i| (gp[i] - p[i]).abs() <= 2.0 * lr * t as f64 + 1e-6);
        assert!(
            all_close,
            "{label}: a parameter moved more than Adam allows"
        );
        // Continue the reference from the GPU's parameters so that sign flips do not compound.
        p = gp;
    }
    assert_eq!(g.read::<u32>(&tape.counter).unwrap()[0], steps as u32);
}

#[test]
fn tape_2d() {
    let normal = PriorKind::Normal {
        mu: 0.0,
        sigma: 1.0,
    };
    train_steps(
        "tape 2D L=4 2 layers hidden [3]",
        &flow(2, 4, 2, vec![3], 3, true),
        3,
        normal.clone(),
        3,
        true,
    );
    train_steps(
        "tape 2D L=6 4 layers hidden [4, 3]",
        &flow(2, 6, 4, vec![4, 3], 3, true),
        5,
        normal.clone(),
        2,
        false,
    );
    // Equal hidden widths, three of them: the whole-layer kernels' hidden-to-hidden stages
    // (both halves of their workgroup buffer), on a lattice not a multiple of a workgroup.
    train_steps(
        "tape 2D L=5 3 layers hidden [3, 3, 3]",
        &flow(2, 5, 3, vec![3, 3, 3], 3, true),
        4,
        normal.clone(),
        2,
        true,
    );
    // 16 hidden channels on 4 x 4: more channels than threads in a whole-layer workgroup
    // on a CPU adapter (8 threads of 2 sites).
    train_steps(
        "tape 2D L=4 2 layers hidden [16]",
        &flow(2, 4, 2, vec![16], 3, true),
        3,
        normal.clone(),
        2,
        false,
    );
    // 14 x 14 with [8, 8]: the forward fits one dispatch, the backward (gradients and the
    // layer's weight gradients in workgroup memory) does not and runs unfused.
    train_steps(
        "tape 2D L=14 2 layers hidden [8, 8]",
        &flow(2, 14, 2, vec![8, 8], 3, true),
        2,
        normal.clone(),
        1,
        false,
    );
    // No final tanh, no hidden layer (a single convolution 1 -> 2), kernel 5.
    train_steps(
        "tape 2D L=4 no tanh, no hidden, k=5",
        &flow(2, 4, 2, vec![], 5, false),
        3,
        normal,
        2,
        true,
    );
}

#[test]
fn tape_other_dimensions() {
    let normal = PriorKind::Normal {
        mu: 0.0,
        sigma: 1.0,
    };
    train_steps(
        "tape 1D L=8",
        &flow(1, 8, 3, vec![3, 2], 3, true),
        4,
        normal.clone(),
        2,
        true,
    );
    train_steps(
        "tape 1D L=12 hidden [4, 4]",
        &flow(1, 12, 2, vec![4, 4], 3, false),
        3,
        normal.clone(),
        2,
        true,
    );
    train_steps(
        "tape 3D L=4",
        &flow(3, 4, 2, vec![2], 3, true),
        2,
        normal.clone(),
        2,
        false,
    );
    train_steps(
        "tape 4D L=2",
        &flow(4, 2, 2, vec![2], 3, true),
        2,
        normal,
        2,
        false,
    );
}

#[test]
fn tape_potential_prior() {
    let pot = PriorKind::Potential {
        m2: -4.0,
        lam: 8.0,
        xmin: -2.0,
        xmax: 2.0,
    };
    train_steps(
        "tape 2D L=4 Potential prior",
        &flow(2, 4, 2, vec![3], 3, true),
        3,
        pot,
        2,
        false,
    );
}

/// The inference tape computes the same phi, log q and S as the training tape.
#[test]
fn inference_matches_training_forward() {
    let g = gpu();
    let f = flow(2, 4, 4, vec![4], 3, true);
    let normal = PriorKind::Normal {
        mu: 0.0,
        sigma: 1.0,
    };
    let params = g.upload_params(&f.init_params(3)).unwrap();
    let c1 = g.upload("counter", &[0u32; 4]).unwrap();
    let c2 = g.upload("counter", &[0u32; 4]).unwrap();
    let train = Tape::new(g, tape_spec(&f, 5, normal.clone(), 0.0), &params, &c1).unwrap();
    let mut spec = tape_spec(&f, 5, normal, 0.0);
    spec.mode = Mode::Infer;
    let infer = Tape::new(g, spec, &params, &c2).unwrap();
    assert!(infer.memory_bytes() < train.memory_bytes());
    infer.submit_step(g);
    let (phi_i, lq_i, s_i) = (read(infer.phi()), read(&infer.logq), read(&infer.action));
    train.submit_step(g); // lr = 0: parameters unchanged
    let (phi_t, lq_t, s_t) = (read(train.phi()), read(&train.logq), read(&train.action));
    assert_eq!(phi_i, phi_t);
    assert_eq!(lq_i, lq_t);
    assert_eq!(s_i, s_t);
}

/// Symmetrised couplings (an odd flow) in Nd = 1-4, as whole layers (`Fusion::On`) and per
/// kernel, every parameter's gradient against the reference and the reference against finite
/// differences; with the identity start and Adam's betas (0.8, 0.9).
#[test]
fn tape_z2() {
    let normal = PriorKind::Normal {
        mu: 0.0,
        sigma: 1.0,
    };
    let z2 = |f: FlowSpec| f.with_coupling(CouplingKind::AffineZ2);
    train_steps(
        "tape z2 2D L=4 2 layers hidden [4]",
        &z2(flow(2, 4, 2, vec![4], 3, true)),
        3,
        normal.clone(),
        3,
        true,
    );
    train_steps(
        "tape z2 1D L=8 3 layers hidden [4, 4] no tanh",
        &z2(flow(1, 8, 3, vec![4, 4], 3, false)),
        2,
        normal.clone(),
        2,
        true,
    );
    train_steps(
        "tape z2 3D L=4",
        &z2(flow(3, 4, 2, vec![2], 3, true)),
        2,
        normal.clone(),
        2,
        false,
    );
    train_steps(
        "tape z2 4D L=2",
        &z2(flow(4, 2, 2, vec![2], 3, true)),
        2,
        normal.clone(),
        2,
        false,
    );
    train_steps_betas(
        "tape z2 2D L=4 identity start, betas (0.8, 0.9)",
        &z2(flow(2, 4, 3, vec![3], 3, true)).with_identity_init(),
        3,
        normal,
        3,
        true,
        [0.8, 0.9],
    );
}

/// Combinational convolutions (every r of Nd = 2, 3, 4; the mean after and before the
/// activation; symmetrised and with the identity start): every parameter's gradient against
/// the reference, the reference against finite differences, Adam's steps.
#[test]
fn tape_combi() {
    let normal = PriorKind::Normal {
        mu: 0.0,
        sigma: 1.0,
    };
    let combi = |r, act| Combi { r, act };
    let (branch, last) = (CombiAct::Branch, CombiAct::Last);
    train_steps(
        "tape combi 2C1 branch L=4 hidden [3, 3]",
        &flow(2, 4, 2, vec![3, 3], 3, true).with_combi(combi(1, branch)),
        3,
        normal.clone(),
        2,
        true,
    );
    train_steps(
        "tape combi 2C1 last L=4 no tanh",
        &flow(2, 4, 2, vec![3], 3, false).with_combi(combi(1, last)),
        2,
        normal.clone(),
        2,
        true,
    );
    train_steps(
        "tape combi 3C1 branch L=4",
        &flow(3, 4, 2, vec![2], 3, true).with_combi(combi(1, branch)),
        2,
        normal.clone(),
        2,
        true,
    );
    train_steps(
        "tape combi 3C2 last L=4",
        &flow(3, 4, 2, vec![2], 3, true).with_combi(combi(2, last)),
        2,
        normal.clone(),
        2,
        false,
    );
    for r in 1..=3 {
        train_steps(
            &format!("tape combi 4C{r} branch L=2"),
            &flow(4, 2, 2, vec![2], 3, true).with_combi(combi(r, branch)),
            2,
            normal.clone(),
            2,
            false,
        );
    }
    train_steps_betas(
        "tape combi 2C1 z2 identity start",
        &flow(2, 4, 3, vec![3], 3, true)
            .with_combi(combi(1, branch))
            .with_coupling(CouplingKind::AffineZ2)
            .with_identity_init(),
        3,
        normal,
        3,
        true,
        [0.8, 0.9],
    );
}

/// Rational-quadratic spline couplings in Nd = 1-4 (per kernel: no whole-layer kernel holds
/// them), plain and combinational, with and without the final tanh, from PyTorch's start and
/// the identity start: every parameter's gradient against the reference, the reference against
/// finite differences, Adam's steps. The identity start is the identity map.
#[test]
fn tape_spline() {
    let normal = PriorKind::Normal {
        mu: 0.0,
        sigma: 1.0,
    };
    let spline = |f: FlowSpec, bins| f.with_coupling(CouplingKind::Spline { bins, bound: 3.0 });
    train_steps(
        "tape spline K=8 2D L=4 hidden [4, 4] no tanh",
        &spline(flow(2, 4, 2, vec![4, 4], 3, false), 8),
        3,
        normal.clone(),
        3,
        true,
    );
    train_steps(
        "tape spline K=4 1D L=8 tanh",
        &spline(flow(1, 8, 3, vec![3], 3, true), 4),
        2,
        normal.clone(),
        2,
        true,
    );
    train_steps(
        "tape spline K=2 3D L=4",
        &spline(flow(3, 4, 2, vec![2], 3, false), 2),
        2,
        normal.clone(),
        2,
        false,
    );
    train_steps(
        "tape spline K=6 4D L=2",
        &spline(flow(4, 2, 2, vec![2], 3, false), 6),
        2,
        normal.clone(),
        2,
        false,
    );
    let cross = Combi {
        r: 1,
        act: CombiAct::Branch,
    };
    let ident =
        spline(flow(2, 4, 3, vec![3, 3], 3, false).with_combi(cross), 8).with_identity_init();
    train_steps_betas(
        "tape spline K=8 2C1 identity start, betas (0.8, 0.9)",
        &ident,
        3,
        normal,
        3,
        true,
        [0.8, 0.9],
    );
    let mut r = rng(5);
    let z = uniform(&mut r, 3 * 16, -4.0, 4.0);
    let logr = vec![-1.0, 2.0, 0.5];
    let q: Vec<f64> = ident.init_params(9).iter().map(|&w| w as f64).collect();
    let fw = reference::forward(&ident, &q, &z, &logr);
    check("spline identity start phi", &fw.x[3], &z, 1e-12);
    check("spline identity start log q", &fw.logq, &logr, 1e-12);
}

/// The identity start: the last convolution of every net is zero (the others as PyTorch's
/// default from the same seed), so the flow starts as the identity map, phi = z.
#[test]
fn identity_init_starts_as_the_identity() {
    let f = flow(2, 4, 4, vec![4, 4], 3, true);
    let ident = f.clone().with_identity_init();
    let (p, q) = (f.init_params(9), ident.init_params(9));
    for net in &ident.nets {
        let last = net.convs.last().unwrap();
        assert!(q[last.params()].iter().all(|&w| w == 0.0));
        for c in &net.convs[..net.convs.len() - 1] {
            assert_eq!(p[c.params()], q[c.params()]);
            assert!(q[c.params()].iter().any(|&w| w != 0.0));
        }
    }
    let mut r = rng(4);
    let z = uniform(&mut r, 3 * 16, -2.0, 2.0);
    let logr = vec![-1.0, 2.0, 0.5];
    let qf: Vec<f64> = q.iter().map(|&w| w as f64).collect();
    let fw = reference::forward(&ident, &qf, &z, &logr);
    assert_eq!(fw.x[4], z);
    assert_eq!(fw.logq, logr);
    let pf: Vec<f64> = p.iter().map(|&w| w as f64).collect();
    assert_ne!(reference::forward(&f, &pf, &z, &logr).x[4], z);
}

/// The symmetrised flow is odd and its density even: pushing -z gives -phi and the same
/// log q, on the GPU (to the bit: the two halves of the net's batch swap) and in the f64
/// reference, untrained and after training steps; as whole layers and per kernel. The plain
/// flow is not odd (the check can fail).
#[test]
fn z2_flow_is_odd() {
    let g = gpu();
    let normal = PriorKind::Normal {
        mu: 0.0,
        sigma: 1.0,
    };
    let (batch, v) = (6, 36);
    let mut r = rng(17);
    let z = rounded(&uniform(&mut r, batch * v, -3.0, 3.0));
    let minus_z: Vec<f64> = z.iter().map(|x| -x).collect();
    let logr: Vec<f64> = z
        .chunks(v)
        .map(|c| prior_ref::log_density(&normal, c))
        .collect();
    let combi = Combi {
        r: 1,
        act: CombiAct::Branch,
    };
    for (z2, fusion, combi, precision) in [
        (true, Fusion::On, None, Precision::F32),
        (true, Fusion::Off, None, Precision::F32),
        (false, Fusion::On, None, Precision::F32),
        (true, Fusion::On, Some(combi), Precision::F32),
        // f16 storage (per kernel): rounding to nearest is symmetric in the sign.
        (true, Fusion::Off, None, Precision::F16),
        (true, Fusion::Off, Some(combi), Precision::F16),
    ] {
        let mut f = flow(2, 6, 4, vec![4, 4], 3, true);
        if let Some(c) = combi {
            f = f.with_combi(c);
        }
        if z2 {
            f = f.with_coupling(CouplingKind::AffineZ2);
        }
        let params = g.upload_params(&f.init_params(5)).unwrap();
        let c1 = g.upload("counter", &[0u32; 4]).unwrap();
        let c2 = g.upload("counter", &[0u32; 4]).unwrap();
        let train_spec = TapeSpec {
            precision,
            ..tape_spec_fused(&f, 8, normal.clone(), 1e-2, fusion)
        };
        let train = Tape::new(g, train_spec, &params, &c1).unwrap();
        let mut spec = tape_spec_fused(&f, batch, normal.clone(), 0.0, fusion);
        spec.mode = Mode::Infer;
        spec.precision = precision;
        let infer = Tape::new(g, spec, &params, &c2).unwrap();
        let push = |z: &[f64]| {
            g.write(&infer.x[0], &f32s(z));
            g.write(&infer.logq, &f32s(&logr));
            infer.submit_forward_from_input(g);
            (read(infer.phi()), read(&infer.logq))
        };
        for trained in [false, true] {
            if trained {
                for _ in 0..20 {
                    train.submit_step(g);
                }
                g.wait().unwrap();
            }
            let label = format!("z2 {z2} {fusion:?} {combi:?} {precision:?} trained {trained}");
            let ((phi, lq), (phi_m, lq_m)) = (push(&z), push(&minus_z));
            let odd = phi.iter().zip(&phi_m).map(|(a, b)| (a + b).abs());
            let worst = odd.fold(0.0f64, f64::max);
            assert!(
                phi.iter().zip(&z).any(|(a, b)| (a - b).abs() > 1e-3),
                "{label}: the flow is the identity, the test would prove nothing"
            );
            if !z2 {
                assert!(worst > 1e-3, "{label}: a plain flow came out odd");
                continue;
            }
            eprintln!("CHECK {label}: max |f(z) + f(-z)| {worst:.1e}");
            assert_eq!(worst, 0.0, "{label}: f(-z) != -f(z)");
            assert_eq!(lq, lq_m, "{label}: log q(-phi) != log q(phi)");
            let p: Vec<f64> = read(&params);
            let (a, b) = (
                reference::forward(&f, &p, &z, &logr),
                reference::forward(&f, &p, &minus_z, &logr),
            );
            let n = f.n_layers;
            let ref_odd = a.x[n].iter().zip(&b.x[n]).map(|(p, q)| (p + q).abs());
            assert!(ref_odd.fold(0.0f64, f64::max) < 1e-12, "{label}: reference");
            check(
                &format!("{label} reference log q(-phi)"),
                &b.logq,
                &a.logq,
                1e-12,
            );
        }
    }
}

/// f16 storage of the nets' activations and gradients (`[device] precision = "f16"`): a
/// training step's loss, every parameter's gradient and the flow's phi and log q against the
/// f64 reference (which stores nothing in f16), for a plain, a symmetrised and two
/// combinational flows, one launch per kernel and as whole layers. Each stored activation and
/// gradient is rounded by at most 2^-11 relative (4.9e-4). Measured here (lavapipe, per
/// kernel): phi within 1.2e-4, log q 3.5e-6 and the loss 8.7e-6 relative, the gradient 2.0e-3
/// of its largest entry (the symmetrised flow, whose two net halves cancel); the tolerances
/// are 1e-3, 1e-4, 1e-4 and 1e-2.
#[test]
fn f16_tape_against_reference() {
    let g = gpu();
    let normal = PriorKind::Normal {
        mu: 0.0,
        sigma: 1.0,
    };
    let batch = 6;
    let combi = |act| Combi { r: 1, act };
    let base = flow(2, 6, 4, vec![8, 8], 3, true);
    let flows = [
        ("plain", base.clone()),
        (
            "symmetrised",
            base.clone().with_coupling(CouplingKind::AffineZ2),
        ),
        (
            "2C1 branch",
            base.clone().with_combi(combi(CombiAct::Branch)),
        ),
        ("2C1 last", base.clone().with_combi(combi(CombiAct::Last))),
    ];
    for ((label, f), fusion) in (flows.iter()).flat_map(|f| [(f, Fusion::Off), (f, Fusion::On)]) {
        let label = format!("f16 tape {label} {fusion:?}");
        let p0 = f.init_params(11);
        let params = g.upload_params(&p0).unwrap();
        let counter = g.upload("counter", &[0u32; 4]).unwrap();
        let spec = TapeSpec {
            precision: Precision::F16,
            ..tape_spec_fused(f, batch, normal.clone(), 0.0, fusion)
        };
        let tape = Tape::new(g, spec, &params, &counter).unwrap();
        assert_eq!(tape.fused_layers(), fusion == Fusion::On, "{label}");
        tape.submit_step(g);
        g.wait().unwrap();
        let v = f.lattice.volume();
        let p: Vec<f64> = p0.iter().map(|&x| x as f64).collect();
        let (z, logr) = prior_ref::sample(&normal, 4242, stream::TRAIN, 0, batch, v);
        let fwd = reference::forward(f, &p, &z, &logr);
        let phi_err = max_err(&read(tape.phi()), &fwd.x[f.n_layers]);
        check(
            &format!("{label} phi"),
            &read(tape.phi()),
            &fwd.x[f.n_layers],
            1e-3,
        );
        let lq_scale = fwd.logq.iter().fold(1.0f64, |a, b| a.max(b.abs()));
        let rel = |x: &[f64]| x.iter().map(|v| v / lq_scale).collect::<Vec<_>>();
        check(
            &format!("{label} log q"),
            &rel(&read(&tape.logq)),
            &rel(&fwd.logq),
            1e-4,
        );
        let (loss, grad) = reference::loss_and_grad(f, &p, &z, &logr, -4.0, 8.0);
        let gpu_loss = read(&tape.metrics)[0];
        check(
            &format!("{label} loss"),
            &[gpu_loss / loss.abs().max(1.0)],
            &[loss / loss.abs().max(1.0)],
            1e-4,
        );
        let scale = grad.iter().fold(0.0f64, |a, b| a.max(b.abs())).max(1e-3);
        let gs: Vec<f64> = grad.iter().map(|x| x / scale).collect();
        let gg: Vec<f64> = read(tape.grads.as_ref().unwrap())
            .iter()
            .map(|x| x / scale)
            .collect();
        check(
            &format!("{label} gradient (of the largest)"),
            &gg,
            &gs,
            1e-2,
        );
        assert!(
            phi_err > 0.0,
            "{label}: no rounding at all: is the tape f16?"
        );
    }
}
