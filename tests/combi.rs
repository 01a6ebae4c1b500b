//! Combinational convolutions: a stage's branches and their mean as one kernel (conv.wgsl with
//! BR branches, src/kernels/conv.rs) and the last stage's mean backward (src/kernels/combi.rs,
//! shaders/combi.wgsl) against the f64 reference (branch convolutions and their mean); the
//! reference mean's backward against finite differences; the model's layout of the branches
//! (DESIGN's parameter counts, checkpoint names). A single branch through the plain kernel is
//! tests/conv.rs's `conv_axis_windows`, whole training steps tests/tape.rs's `tape_combi`.
//! Tolerance: 4 n 2^-24 for a sum of n terms of size O(1).

use crate::common::*;
use gomaflow_wgpu::flow::{Combi, CombiAct, FlowSpec, PARAM_ALIGN, Taps};
use gomaflow_wgpu::gpu::Precision;
use gomaflow_wgpu::kernels::combi::{
    CombiSpec, Mean, keeps_signs, reference, row_stride, sign_words,
};
use gomaflow_wgpu::kernels::conv::{
    Conv, ConvBuffers, ConvDims, ConvGrads, ConvSpec, InputGrad, reference as conv_ref,
};
use gomaflow_wgpu::kernels::tiling::{ConvCandidates, ConvTiling};
use gomaflow_wgpu::kernels::{Act, LatticeBuffers};
use gomaflow_wgpu::lattice::Lattice;

const U: f64 = 1.0 / 16_777_216.0;

/// One combinational stage as one kernel (conv.wgsl with BR branches): the branches' outputs
/// and their mean, the input gradient through every epilogue a stage uses, each branch's
/// weight gradient; against the reference branch convolutions and mean.
struct Stage {
    nd: usize,
    l: usize,
    r: usize,
    cin: usize,
    cout: usize,
    act: Act,
    mode: CombiAct,
    in_mask: bool,
    input_grad: InputGrad,
}

fn stage(c: &Stage, seed: u64) {
    stage_tilings(c, seed, 3, false);
}

/// `stage` with `batch` samples; `candidates`: also with every tiling the tuner may choose
/// (`ConvCandidates::every_tiling`).
fn stage_tilings(c: &Stage, seed: u64, batch: usize, candidates: bool) {
    stage_typed(c, seed, batch, candidates, [Precision::F32; 2]);
}

/// `stage_tilings` with the input side (x, gx, the previous stage's branches) and the output
/// side (y, gy, the branches' outputs) stored as `types`: the reference reads the stored
/// inputs; an f16 output is further rounded once, by at most 2^-11 of its value.
fn stage_typed(c: &Stage, seed: u64, batch: usize, candidates: bool, types: [Precision; 2]) {
    let g = gpu();
    let [tin, tout] = types;
    let k = 3;
    let lat = Lattice::new(c.nd, c.l);
    let v = lat.volume();
    let branches = Taps::branches(c.nd, k, c.r);
    let nb = branches.len();
    let taps = branches[0].count(c.nd);
    let dims = ConvDims {
        batch,
        volume: v,
        taps,
        cin: c.cin,
        cout: c.cout,
        extent: c.l,
    };
    let np = dims.n_params();
    let w_stride = np.div_ceil(PARAM_ALIGN) * PARAM_ALIGN;
    let (n_in, n_out) = (batch * c.cin * v, batch * c.cout * v);
    // Under "last" the branches share one gradient row and keep no outputs (stride 0); a
    // LeakyReLU stage under "branch" keeps its branches' signs, and its gradient is one row
    // that each branch reads through its act'.
    let after = c.mode == CombiAct::Branch;
    let act_in = match c.input_grad {
        InputGrad::ToBranches(a) => a,
        _ => Act::None,
    };
    let signs = keeps_signs(c.mode, c.act);
    let signs_in = matches!(c.input_grad, InputGrad::ToBranches(_)) && keeps_signs(c.mode, act_in);
    let (s_in, s_out) = (
        row_stride(n_in, c.mode, act_in),
        row_stride(n_out, c.mode, c.act),
    );
    let label = format!(
        "combi stage {}C{} L={} {}->{} {:?} {:?} {:?} {types:?}",
        c.nd, c.r, c.l, c.cin, c.cout, c.act, c.mode, c.input_grad
    );
    let mut r = rng(seed);
    let x = rounded_as(&uniform(&mut r, n_in, -1.0, 1.0), tin);
    let w: Vec<Vec<f64>> = (0..nb)
        .map(|_| rounded(&uniform(&mut r, np, -0.5, 0.5)))
        .collect();
    let mut gy: Vec<Vec<f64>> = if after {
        (0..nb)
            .map(|_| rounded_as(&uniform(&mut r, n_out, -1.0, 1.0), tout))
            .collect()
    } else {
        vec![rounded_as(&uniform(&mut r, n_out, -1.0, 1.0), tout); nb]
    };
    // The previous stage's branch outputs (for ToBranches) and dL/dx's prior contents.
    let hb_in: Vec<Vec<f64>> = (0..nb)
        .map(|_| rounded_as(&uniform(&mut r, n_in, -1.0, 1.0), tin))
        .collect();
    let gx0 = rounded_as(&uniform(&mut r, n_in, -1.0, 1.0), tin);
    let parity = 1;
    let mask = lat.mask(parity);
    let x_eff: Vec<f64> = (x.iter().enumerate())
        .map(|(i, &xv)| if c.in_mask { xv * mask[i % v] } else { xv })
        .collect();

    // The reference: each branch a convolution over its taps, then the mean.
    let branch_act = match c.mode {
        CombiAct::Branch => c.act,
        CombiAct::Last => Act::None,
    };
    let layer = |t| conv_ref::Layer {
        lattice: &lat,
        taps: t,
        batch,
        cin: c.cin,
        cout: c.cout,
    };
    let hb: Vec<Vec<f64>> = (branches.iter().zip(&w))
        .map(|(t, wb)| layer(t).forward(&x_eff, wb, branch_act))
        .collect();
    let y = reference::forward(&hb, c.mode, c.act);
    // Keeping signs, the kernel reads one row R and branch b's gradient is R act'(h_b).
    let g_row = gy[0].clone();
    if signs {
        for (gb, hbb) in gy.iter_mut().zip(&hb) {
            for ((g, r), h) in gb.iter_mut().zip(&g_row).zip(hbb) {
                *g = r * c.act.grad_from_output(*h);
            }
        }
    }
    let mut gin = vec![0.0; n_in];
    for ((t, wb), gb) in branches.iter().zip(&w).zip(&gy) {
        for (a, b) in gin.iter_mut().zip(layer(t).backward_input(gb, wb)) {
            *a += b;
        }
    }
    let k_inv = 1.0 / nb as f64;
    let gx_want: Vec<f64> = match c.input_grad {
        InputGrad::AddMasked => (0..n_in).map(|i| gx0[i] + mask[i % v] * gin[i]).collect(),
        InputGrad::Write => gin.clone(),
        InputGrad::ToBranches(_) if signs_in => gin.iter().map(|g| g * k_inv).collect(),
        InputGrad::ToBranches(a) => (0..if after { nb } else { 1 })
            .flat_map(|b| {
                let mut row: Vec<f64> = (0..n_in)
                    .map(|i| {
                        let from = match c.mode {
                            CombiAct::Branch => hb_in[b][i],
                            CombiAct::Last => x[i],
                        };
                        gin[i] * k_inv * a.grad_from_output(from)
                    })
                    .collect();
                if after {
                    row.resize(s_in, 0.0);
                }
                row
            })
            .collect(),
        _ => unreachable!(),
    };

    // [branches, stride] with the last row unpadded (one row under "last").
    let rows = |m: &[Vec<f64>], stride: usize| {
        let mut out = vec![0.0; (nb - 1) * stride + m[0].len()];
        for (b, row) in m.iter().enumerate() {
            out[b * stride..b * stride + row.len()].copy_from_slice(row);
        }
        out
    };
    let set = Taps::Branches(branches.clone());
    let lb = LatticeBuffers::new(g, lat, std::slice::from_ref(&set)).unwrap();
    // The CPU adapters' rule for the stage (several branches per weight-gradient thread where
    // they fit).
    let software = ConvTiling::for_stage(&dims, k, nb, true);
    let one = ConvTiling {
        samples_per_thread: 1,
        taps_per_thread: 1,
        couts_per_thread: 1,
        chunk: 2,
        branches_per_thread: 1,
        sites_per_thread: 1,
        forward_sites: 1,
    };
    let mut tilings = vec![(software, true), (one, false)];
    if candidates {
        let rule = ConvTiling::for_stage(&dims, k, nb, true);
        let cands = ConvCandidates::for_stage(&dims, k, nb, &rule);
        tilings.extend(
            cands
                .every_tiling(&dims, &rule)
                .into_iter()
                .map(|t| (t, true)),
        );
    }
    for (tiling, ubo) in tilings {
        let w_off = 64;
        let spec = ConvSpec {
            dims,
            taps: set.clone(),
            act: c.act,
            in_mask: c.in_mask,
            parity,
            w_off,
            input_grad: c.input_grad,
            tiling,
            branches: nb,
            w_stride,
            combi_act: c.mode,
            precision: tout,
            loss_scale: 1.0,
        };
        let span = spec.param_span();
        assert_eq!(spec.in_type(), tin, "the first stage reads the f32 field");
        // The branches' slices at w_off + b * w_stride, other values around and between.
        let mut p = rounded(&uniform(&mut r, w_off + span + 70, -0.5, 0.5));
        for (b, wb) in w.iter().enumerate() {
            p[w_off + b * w_stride..w_off + b * w_stride + np].copy_from_slice(wb);
        }
        let usage = if ubo {
            gomaflow_wgpu::gpu::Usage::UNIFORM
        } else {
            gomaflow_wgpu::gpu::Usage::empty()
        };
        let params = g.upload_with("params", &f32s(&p), usage).unwrap();
        let grads = g.storage("grads", w_off + span + 70).unwrap();
        let (bx, by, bhb) = (
            upload_as("x", &x, tin),
            g.activations("y", n_out, tout).unwrap(),
            // Sign words are u32, whatever the precision.
            g.activations(
                "hb",
                (nb - 1) * s_out + n_out,
                if signs { Precision::F32 } else { tout },
            )
            .unwrap(),
        );
        let bgy = if signs {
            upload_as("gy", &g_row, tout)
        } else {
            upload_as("gy", &rows(&gy, s_out), tout)
        };
        let to_branches = matches!(c.input_grad, InputGrad::ToBranches(_));
        let bgx = if to_branches {
            upload_as("gx", &vec![9.0; (nb - 1) * s_in + n_in], tin)
        } else {
            upload_as("gx", &gx0, tin)
        };
        let bhb_in = upload_as("hb_in", &rows(&hb_in, s_in), tin);
        let partial = g.storage("partial", spec.partial_len()).unwrap();
        let conv = Conv::new(
            g,
            spec,
            &ConvBuffers {
                lattice: &lb,
                params: &params,
                x: &bx,
                y: &by,
                hb: Some(&bhb),
                grad: Some(ConvGrads {
                    grads: &grads,
                    gy: &bgy,
                    gx: &bgx,
                    partial: &partial,
                    hb_in: to_branches.then_some(&bhb_in),
                }),
            },
        )
        .unwrap();
        let mut all = vec![&conv.forward];
        all.extend(&conv.backward);
        g.run(&all).unwrap();

        let label = format!("{label} {tiling:?}");
        let sum_tol = |terms: usize| 4.0 * terms as f64 * U;
        if signs {
            // Bit br * cout + co of word (b * words + k / 32) * v + s: h > 0, exactly (away
            // from zero, where f32 and f64 may round to opposite signs).
            let words = sign_words(nb, c.cout);
            let bits = g.read::<u32>(&bhb).unwrap();
            for (br, h) in hb.iter().enumerate() {
                for b in 0..batch {
                    for co in 0..c.cout {
                        for s in 0..v {
                            let k = br * c.cout + co;
                            let word = bits[(b * words + k / 32) * v + s];
                            let hv = h[(b * c.cout + co) * v + s];
                            assert!(
                                hv.abs() < 1e-5 || ((word >> (k % 32)) & 1 == 1) == (hv > 0.0),
                                "{label} {tiling:?}: sign of branch {br} channel {co} at {b}, {s}"
                            );
                        }
                    }
                }
            }
        }
        let got_hb = read(&bhb);
        for (b, want) in hb.iter().enumerate().filter(|_| after && !signs) {
            check(
                &format!("{label} branch {b} output"),
                &got_hb[b * s_out..b * s_out + n_out],
                want,
                sum_tol(c.cin * taps + 1) + store_rounding(tout),
            );
        }
        check(
            &format!("{label} mean"),
            &read(&by),
            &y,
            sum_tol(nb * (c.cin * taps + 1)) + store_rounding(tout),
        );
        let gw = read(&grads);
        for (b, ((t, wb), gb)) in branches.iter().zip(&w).zip(&gy).enumerate() {
            let _ = wb;
            let at = w_off + b * w_stride;
            check(
                &format!("{label} branch {b} weight gradient"),
                &gw[at..at + np],
                &layer(t).backward_weight(&x_eff, gb),
                sum_tol(batch * v),
            );
            // The padding after each branch's slice is not written: it stays zero.
            let pad_end = (at + w_stride).min(w_off + span);
            assert!(
                gw[at + np..pad_end].iter().all(|&q| q == 0.0),
                "{label}: padding"
            );
        }
        let got_gx = read(&bgx);
        let got_gx: Vec<f64> = if to_branches {
            // Compare the rows, not the padding between them.
            let padded = after && !signs_in;
            (0..if padded { nb } else { 1 })
                .flat_map(|b| {
                    let mut row = got_gx[b * s_in..b * s_in + n_in].to_vec();
                    if padded {
                        row.resize(s_in, 0.0);
                    }
                    row
                })
                .collect()
        } else {
            got_gx
        };
        check(
            &format!("{label} input gradient"),
            &got_gx,
            &gx_want,
            sum_tol(nb * c.cout * taps + 1) + store_rounding(tin),
        );
    }
}

#[test]
fn combi_stage() {
    let stages = [
        // The first stage of a coupling (masked input, one channel), both activations.
        (
            2,
            4,
            1,
            1,
            4,
            Act::Leaky,
            CombiAct::Branch,
            true,
            InputGrad::AddMasked,
        ),
        (
            3,
            4,
            2,
            1,
            3,
            Act::Leaky,
            CombiAct::Last,
            true,
            InputGrad::Write,
        ),
        // Middle and last stages, their input gradient to the previous stage's branches.
        (
            3,
            4,
            1,
            4,
            4,
            Act::Leaky,
            CombiAct::Branch,
            false,
            InputGrad::ToBranches(Act::Leaky),
        ),
        (
            4,
            3,
            2,
            3,
            2,
            Act::Tanh,
            CombiAct::Branch,
            false,
            InputGrad::ToBranches(Act::Leaky),
        ),
        (
            4,
            3,
            3,
            2,
            2,
            Act::Tanh,
            CombiAct::Last,
            false,
            InputGrad::ToBranches(Act::Leaky),
        ),
        (
            2,
            6,
            1,
            3,
            2,
            Act::None,
            CombiAct::Last,
            false,
            InputGrad::ToBranches(Act::Tanh),
        ),
    ];
    for (i, (nd, l, r, cin, cout, act, mode, in_mask, input_grad)) in stages.into_iter().enumerate()
    {
        stage(
            &Stage {
                nd,
                l,
                r,
                cin,
                cout,
                act,
                mode,
                in_mask,
                input_grad,
            },
            100 + i as u64,
        );
    }
}

/// Every tiling the tuner may choose for a combinational stage (3C1 and 3C2 on 3D L 3, batch
/// 17: every samples-per-thread candidate, the last block partial; 3C1 on 3D L 4, whose 64
/// sites also give the weight gradient's candidates of 4 sites per step).
#[test]
fn combi_every_tuning_candidate() {
    let st = |l, r, cin, cout, act, mode, in_mask, input_grad| Stage {
        nd: 3,
        l,
        r,
        cin,
        cout,
        act,
        mode,
        in_mask,
        input_grad,
    };
    let (branch, last) = (CombiAct::Branch, CombiAct::Last);
    let to_leaky = InputGrad::ToBranches(Act::Leaky);
    let stages = [
        st(3, 1, 1, 8, Act::Leaky, branch, true, InputGrad::AddMasked),
        st(3, 1, 8, 8, Act::Leaky, branch, false, to_leaky),
        st(3, 2, 8, 2, Act::Tanh, last, false, to_leaky),
        st(4, 1, 1, 8, Act::Leaky, branch, true, InputGrad::AddMasked),
        st(4, 1, 8, 8, Act::Leaky, branch, false, to_leaky),
        st(4, 1, 8, 2, Act::Tanh, branch, false, to_leaky),
    ];
    for (i, c) in stages.iter().enumerate() {
        stage_tilings(c, 700 + i as u64, 17, true);
    }
}

/// The rule for a 3C1 stage: on a CPU adapter a weight-gradient thread holds every branch where
/// their accumulators fit (1 -> 8, 8 -> 2), one where they would not (8 -> 8), and takes 4 sites
/// per step where the volume is a multiple of 4; a GPU keeps one branch and one site per thread.
#[test]
fn combi_rule_branches_and_sites_per_thread() {
    let dims = |cin, cout| ConvDims {
        batch: 64,
        cin,
        cout,
        volume: 512,
        taps: 3,
        extent: 8,
    };
    let nbr = |cin, cout, software| {
        ConvTiling::for_stage(&dims(cin, cout), 3, 3, software).branches_per_thread
    };
    assert_eq!(nbr(1, 8, true), 3);
    assert_eq!(nbr(8, 2, true), 3);
    assert_eq!(nbr(8, 8, true), 1);
    assert_eq!(nbr(1, 8, false), 1);
    // A plain convolution has one branch.
    assert_eq!(
        ConvTiling::for_stage(&dims(1, 8), 3, 1, true).branches_per_thread,
        1
    );
    let sites = |volume, branches, software| {
        let d = ConvDims {
            volume,
            ..dims(8, 8)
        };
        ConvTiling::for_stage(&d, 3, branches, software).sites_per_thread
    };
    assert_eq!(sites(512, 3, true), 4);
    assert_eq!(sites(27, 3, true), 1);
    assert_eq!(sites(512, 3, false), 1);
    // A plain convolution keeps the rule its results were recorded with.
    assert_eq!(sites(512, 1, true), 1);
}

/// The last stage's mean backward (combi.wgsl) against the reference, and the reference
/// mean's backward against finite differences of its forward.
fn mean_backward(branches: usize, mode: CombiAct, act: Act, seed: u64) {
    mean_backward_typed(branches, mode, act, seed, Precision::F32);
}

/// `mean_backward` with every buffer stored as `ty` (the net's last stage under `[device]
/// precision = "f16"`): the reference reads the stored values; the f16 gradient is rounded
/// once more, by at most 2^-11 of its value.
fn mean_backward_typed(branches: usize, mode: CombiAct, act: Act, seed: u64, ty: Precision) {
    let g = gpu();
    let (rows, volume) = (6, 16);
    let spec = CombiSpec {
        rows,
        volume,
        branches,
        act,
        mode,
        cout: 2,
    };
    let (n, stride, span) = (spec.n(), spec.stride(), spec.span());
    let after = mode == CombiAct::Branch;
    assert!(
        !after || stride > n,
        "the rows are padded: the test covers the stride"
    );
    let label = format!("combi mean {branches} branches {mode:?} {act:?} {ty:?}");
    let mut r = rng(seed);
    // Branch outputs: activated under Branch (what the branch convolutions wrote), raw under
    // Last.
    let hb: Vec<Vec<f64>> = (0..branches)
        .map(|_| {
            let a = uniform(&mut r, n, -1.5, 1.5);
            let h: Vec<f64> = match mode {
                CombiAct::Branch => a.iter().map(|&x| act.apply(x)).collect(),
                CombiAct::Last => a,
            };
            rounded_as(&h, ty)
        })
        .collect();
    let y = rounded_as(&reference::forward(&hb, mode, act), ty);
    let gy = rounded_as(&uniform(&mut r, n, -1.0, 1.0), ty);
    // Under Last the kernel reads y and writes one row shared by every branch.
    let padded = row_stride(n, CombiAct::Branch, Act::None);
    let mut flat = vec![7.0; branches * padded];
    for (b, h) in hb.iter().enumerate() {
        let at = b * padded;
        flat[at..at + n].copy_from_slice(h);
    }
    let (bhb, by, bgy, bghb) = (
        upload_as("hb", &flat, ty),
        upload_as("y", &y, ty),
        upload_as("gy", &gy, ty),
        upload_as("ghb", &vec![7.0; span + 64], ty),
    );
    let m = Mean::new(g, spec, &bhb, &by, &bgy, &bghb).unwrap();
    g.run(&[&m.backward]).unwrap();

    let tol = 8.0 * U + store_rounding(ty);
    let gb = reference::backward(&hb, &y, &gy, mode, act);
    let got = read(&bghb);
    for (b, want) in gb.iter().enumerate() {
        if !after {
            // Every branch's gradient is the one row.
            check(
                &format!("{label} backward, branch {b}"),
                &got[..n],
                want,
                tol,
            );
            continue;
        }
        check(
            &format!("{label} backward, branch {b}"),
            &got[b * stride..b * stride + n],
            want,
            tol,
        );
        // The padding between rows is not written.
        assert!(
            got[b * stride + n..(b + 1) * stride]
                .iter()
                .all(|&p| p == 7.0)
        );
    }
    assert!(
        got[span..].iter().all(|&p| p == 7.0),
        "{label}: past the rows"
    );

    // The backward is the derivative of L = <gy, y> with respect to the branches'
    // pre-activations.
    let a: Vec<f64> = uniform(&mut r, branches * n, -1.5, 1.5);
    let branch_out = |a: &[f64]| -> Vec<Vec<f64>> {
        a.chunks(n)
            .map(|c| match mode {
                CombiAct::Branch => c.iter().map(|&x| act.apply(x)).collect(),
                CombiAct::Last => c.to_vec(),
            })
            .collect()
    };
    let loss = |a: &[f64]| dot(&reference::forward(&branch_out(a), mode, act), &gy);
    let hb_a = branch_out(&a);
    let y_a = reference::forward(&hb_a, mode, act);
    let ga: Vec<f64> = reference::backward(&hb_a, &y_a, &gy, mode, act).concat();
    check_fd(&label, &loss, &a, &ga, 60, seed);
}

#[test]
fn combi_mean() {
    let mut seed = 10;
    for branches in [2, 3, 4, 6] {
        // (A LeakyReLU stage under Branch keeps signs: conv.wgsl applies its mean's backward.)
        for (mode, act) in [
            (CombiAct::Branch, Act::None),
            (CombiAct::Branch, Act::Tanh),
            (CombiAct::Last, Act::Leaky),
            (CombiAct::Last, Act::Tanh),
            (CombiAct::Last, Act::None),
        ] {
            mean_backward(branches, mode, act, seed);
            seed += 1;
        }
    }
}

/// f16 storage (`[device] precision = "f16"`): the last stage's mean backward, and stages
/// of 2C1, 3C1 (signs kept), 3C2 and 4C2 nets with every epilogue, f16 on both sides (the first
/// stage reads the f32 field).
#[test]
fn combi_f16_storage() {
    use Precision::{F16, F32};
    for (i, (mode, act)) in [
        (CombiAct::Branch, Act::Tanh),
        (CombiAct::Last, Act::Tanh),
        (CombiAct::Last, Act::None),
    ]
    .into_iter()
    .enumerate()
    {
        mean_backward_typed(3, mode, act, 60 + i as u64, F16);
    }
    let st = |nd, l, r, cin, cout, act, mode, input_grad| Stage {
        nd,
        l,
        r,
        cin,
        cout,
        act,
        mode,
        in_mask: cin == 1,
        input_grad,
    };
    let leaky = InputGrad::ToBranches(Act::Leaky);
    let (branch, last) = (CombiAct::Branch, CombiAct::Last);
    let cases = [
        (
            st(2, 4, 1, 1, 4, Act::Leaky, branch, InputGrad::AddMasked),
            [F32, F16],
        ),
        (st(3, 4, 1, 4, 4, Act::Leaky, branch, leaky), [F16, F16]),
        (st(3, 4, 1, 4, 2, Act::Tanh, branch, leaky), [F16, F16]),
        (st(3, 4, 2, 3, 3, Act::Leaky, last, leaky), [F16, F16]),
        (st(4, 3, 2, 3, 2, Act::Tanh, branch, leaky), [F16, F16]),
    ];
    for (i, (c, types)) in cases.iter().enumerate() {
        stage_typed(c, 160 + i as u64, 3, false, *types);
    }
}

/// DESIGN's table: 16 layers, channels [1, 8, 8, 2], k = 3; C(Nd, r) branches of k^r taps,
/// each with its own bias.
#[test]
fn combi_parameter_counts() {
    let count = |nd: usize, r: usize| {
        FlowSpec::new(Lattice::new(nd, 4), 16, vec![8, 8], 3, true)
            .with_combi(Combi {
                r,
                act: CombiAct::Branch,
            })
            .n_params()
    };
    let table = [
        (2, 1, 9_024),
        (3, 1, 13_536),
        (3, 2, 38_880),
        (4, 1, 18_048),
        (4, 2, 77_760),
        (4, 3, 153_216),
    ];
    for (nd, r, want) in table {
        assert_eq!(count(nd, r), want, "{nd}C{r}");
    }
}

/// Each stage holds its branches in `Taps::branches` order with zero biases (the weights from
/// the r-dimensional fan-in); the checkpoint names each branch; the identity start zeroes the
/// whole last stage.
#[test]
fn combi_layout() {
    let f = FlowSpec::new(Lattice::new(3, 4), 2, vec![4], 3, true).with_combi(Combi {
        r: 2,
        act: CombiAct::Last,
    });
    let net = &f.nets[1];
    assert_eq!(net.branches, 3);
    assert_eq!(net.convs.len(), 6);
    assert_eq!(net.channels(), vec![1, 4, 2]);
    for (stage, want_act) in net.stages().zip([Act::Leaky, Act::Tanh]) {
        let taps: Vec<Taps> = stage.iter().map(|c| c.taps.clone()).collect();
        assert_eq!(taps, Taps::branches(3, 3, 2));
        assert!(stage.iter().all(|c| c.act == want_act && c.n_taps == 9));
        // The mean applies the activation under "last".
        assert!(stage.iter().all(|c| net.branch_act(c) == Act::None));
    }
    let p = f.init_params(3);
    let bound = 1.0 / (9.0f32).sqrt();
    for c in f.blocks() {
        assert!(p[c.bias()].iter().all(|&b| b == 0.0));
        assert!(p[c.weights()].iter().all(|&w| w.abs() <= bound && w != 0.0));
    }
    let names: Vec<String> = f.tensors().iter().map(|t| t.name.clone()).collect();
    assert_eq!(names[0], "layers.0.net.0.branches.0.weight");
    assert_eq!(names[5], "layers.0.net.0.branches.2.bias");
    assert_eq!(names[6], "layers.0.net.2.branches.0.weight");
    assert_eq!(f.tensors()[0].shape, vec![4, 1, 3, 3]);
    assert_eq!(names.len(), 2 * 2 * 2 * 3);

    let ident = f.clone().with_identity_init();
    let q = ident.init_params(3);
    for (j, stage) in ident.nets[0].stages().enumerate() {
        for c in stage {
            let zero = q[c.params()].iter().all(|&w| w == 0.0);
            assert_eq!(zero, j == 1, "stage {j}");
        }
    }
    assert!(f.variant().contains("3C2"), "{}", f.variant());
}
