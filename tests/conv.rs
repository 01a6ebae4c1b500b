//! Periodic convolution (src/kernels/conv.rs, shaders/conv.wgsl): GPU forward and backward
//! against the f64 reference, and the reference's backward against finite differences of its
//! forward, in Nd = 1..4 with several kernel sizes and every activation and epilogue.
//!
//! Tolerance: an f32 sum of n terms of size O(1) is off by at most about n * 2^-24 relative to
//! the sum of magnitudes; each check uses 4 n 2^-24 with n the terms one output adds.

use crate::common::*;
use gomaflow_wgpu::flow::{CombiAct, Taps};
use gomaflow_wgpu::gpu::Precision;
use gomaflow_wgpu::kernels::conv::{
    Conv, ConvBuffers, ConvDims, ConvGrads, ConvSpec, InputGrad, reference,
};
use gomaflow_wgpu::kernels::tiling::{ConvCandidates, ConvTiling};
use gomaflow_wgpu::kernels::{Act, LatticeBuffers};
use gomaflow_wgpu::lattice::Lattice;

const U: f64 = 1.0 / 16_777_216.0;

struct Case {
    nd: usize,
    l: usize,
    k: usize,
    /// The tap set: the full k^Nd window unless a case names the axes of a lower-dimensional
    /// one (`Taps::Axes`, a combinational convolution's branch).
    axes: Option<Vec<usize>>,
    cin: usize,
    cout: usize,
    act: Act,
    in_mask: bool,
    input_grad: InputGrad,
}

impl Case {
    /// A 3-wide kernel (over `axes` only, where given).
    #[allow(clippy::too_many_arguments)]
    fn k3(
        nd: usize,
        l: usize,
        axes: Option<Vec<usize>>,
        cin: usize,
        cout: usize,
        act: Act,
        in_mask: bool,
        input_grad: InputGrad,
    ) -> Case {
        Case {
            nd,
            l,
            k: 3,
            axes,
            cin,
            cout,
            act,
            in_mask,
            input_grad,
        }
    }
}

fn run(c: &Case, seed: u64) {
    run_tilings(c, seed, 3, false);
}

/// `run` with `batch` samples; `candidates`: also with every tiling the tuner may choose
/// (`ConvCandidates::every_tiling`).
fn run_tilings(c: &Case, seed: u64, batch: usize, candidates: bool) {
    run_typed(c, seed, batch, candidates, [Precision::F32; 2]);
}

/// `run_tilings` with the input side (x, gx) and the output side (y, gy) stored as `types`.
/// The reference sees the stored inputs; an f16 output is further rounded once, by at most
/// 2^-11 of its value (half an ulp of an 11-bit significand), which the tolerance adds.
fn run_typed(c: &Case, seed: u64, batch: usize, candidates: bool, types: [Precision; 2]) {
    let g = gpu();
    let [tin, tout] = types;
    let lat = Lattice::new(c.nd, c.l);
    let v = lat.volume();
    let window = match &c.axes {
        None => Taps::Window { k: c.k },
        Some(axes) => Taps::Axes {
            k: c.k,
            axes: axes.clone(),
        },
    };
    let taps = window.count(c.nd);
    let dims = ConvDims {
        batch,
        volume: v,
        taps,
        cin: c.cin,
        cout: c.cout,
        extent: c.l,
    };
    let label = format!(
        "conv Nd={} L={} {:?} {}->{} {:?}{} {:?}",
        c.nd,
        c.l,
        window,
        c.cin,
        c.cout,
        c.act,
        if c.in_mask { " masked" } else { "" },
        c.input_grad
    );
    let mut r = rng(seed);
    let x = rounded_as(&uniform(&mut r, batch * c.cin * v, -1.0, 1.0), tin);
    let weights = rounded(&uniform(&mut r, dims.n_params(), -0.5, 0.5));
    let w = &weights[..];
    let gy = rounded_as(&uniform(&mut r, batch * c.cout * v, -1.0, 1.0), tout);
    let gx0 = rounded_as(&uniform(&mut r, batch * c.cin * v, -1.0, 1.0), tin);
    let parity = 1;
    let mask = lat.mask(parity);
    let x_eff: Vec<f64> = if c.in_mask {
        x.iter()
            .enumerate()
            .map(|(i, &xv)| xv * mask[i % v])
            .collect()
    } else {
        x.clone()
    };

    let layer = reference::Layer {
        lattice: &lat,
        taps: &window,
        batch,
        cin: c.cin,
        cout: c.cout,
    };
    let y_ref = layer.forward(&x_eff, w, c.act);
    let gw_ref = layer.backward_weight(&x_eff, &gy);
    let gx_plain = layer.backward_input(&gy, w);
    let gx_ref: Vec<f64> = match c.input_grad {
        InputGrad::Write => gx_plain,
        InputGrad::Skip => unreachable!(),
        InputGrad::TimesActGrad(a) => gx_plain
            .iter()
            .zip(&x)
            .map(|(gv, &xv)| gv * a.grad_from_output(xv))
            .collect(),
        InputGrad::AddMasked => gx_plain
            .iter()
            .enumerate()
            .map(|(i, gv)| gx0[i] + mask[i % v] * gv)
            .collect(),
        InputGrad::ToBranches(_) => unreachable!("tests/combi.rs"),
    };
    // GPU, with one and with two samples per thread (batch 3: the last block is partial), and
    // with the weights read through storage and through a uniform binding (w_off = 64 is
    // aligned for it, w_off = 5 is not).
    let lb = LatticeBuffers::new(g, lat, std::slice::from_ref(&window)).unwrap();
    let rule = ConvTiling::for_adapter(&dims, c.k, true);
    // Weight-gradient threads of one tap and one output channel (weights through storage),
    // then the tiling of a CPU adapter (a row of taps; wide layers in blocks of output
    // channels); two chunks for batch 3, the last one partial.
    let plain = |nb| ConvTiling {
        samples_per_thread: nb,
        taps_per_thread: 1,
        couts_per_thread: 1,
        chunk: 2,
        branches_per_thread: 1,
        sites_per_thread: 1,
        forward_sites: 1,
    };
    let cpu = |nb| ConvTiling {
        samples_per_thread: nb,
        chunk: 2,
        ..rule
    };
    let mut tilings: Vec<(ConvTiling, usize, bool)> =
        vec![(plain(1), 5, false), (cpu(2), 64, true), (cpu(1), 64, true)];
    if candidates {
        let cands = ConvCandidates::for_stage(&dims, c.k, 1, &rule);
        for t in cands.every_tiling(&dims, &rule) {
            tilings.push((t, 64, true));
        }
    }
    // Where rows split into 4-site blocks, each of those with 1 and with 4 sites per forward
    // and backward_input thread, whose outputs must be bitwise the same.
    if ConvTiling::forward_sites_fit(&dims, c.k) {
        for i in 0..tilings.len() {
            let (t, w_off, ubo) = tilings[i];
            let other = ConvTiling {
                forward_sites: 5 - t.forward_sites,
                ..t
            };
            if !tilings.contains(&(other, w_off, ubo)) {
                tilings.push((other, w_off, ubo));
            }
        }
    }
    // (tiling, w_off, ubo) -> the forward's and backward_input's outputs, as bits.
    type Run = (ConvTiling, usize, bool);
    let mut outputs: Vec<(Run, Vec<u32>, Vec<u32>)> = vec![];
    for (tiling, w_off, ubo) in tilings {
        let spec = ConvSpec {
            dims,
            taps: window.clone(),
            act: c.act,
            in_mask: c.in_mask,
            parity,
            w_off,
            input_grad: c.input_grad,
            branches: 1,
            w_stride: 0,
            combi_act: CombiAct::Branch,
            precision: tout,
            loss_scale: 1.0,
            tiling,
        };
        let bufs = (
            {
                // The layer's slice at w_off, surrounded by other values.
                let mut p = rounded(&uniform(&mut r, w_off + dims.n_params() + 70, -0.5, 0.5));
                p[w_off..w_off + dims.n_params()].copy_from_slice(w);
                let usage = if ubo {
                    gomaflow_wgpu::gpu::Usage::UNIFORM
                } else {
                    gomaflow_wgpu::gpu::Usage::empty()
                };
                g.upload_with("params", &f32s(&p), usage).unwrap()
            },
            g.storage("grads", w_off + dims.n_params() + 70).unwrap(),
            upload_as("x", &x, tin),
            g.activations("y", batch * c.cout * v, tout).unwrap(),
            upload_as("gy", &gy, tout),
            upload_as("gx", &gx0, tin),
            g.storage("partial", spec.partial_len()).unwrap(),
        );
        let spec_tiling = spec.tiling;
        assert_eq!(
            spec.in_type(),
            tin,
            "the first convolution reads the f32 field"
        );
        let conv = Conv::new(
            g,
            spec,
            &ConvBuffers {
                lattice: &lb,
                params: &bufs.0,
                x: &bufs.2,
                y: &bufs.3,
                hb: None,
                grad: Some(ConvGrads {
                    grads: &bufs.1,
                    gy: &bufs.4,
                    gx: &bufs.5,
                    partial: &bufs.6,
                    hb_in: None,
                }),
            },
        )
        .unwrap();
        let mut all = vec![&conv.forward];
        all.extend(&conv.backward);
        g.run(&all).unwrap();

        let label = format!(
            "{label} {types:?} batch {batch} {:?} {}",
            spec_tiling,
            if ubo {
                "uniform weights"
            } else {
                "storage weights"
            }
        );
        check(
            &format!("{label} forward"),
            &read(&bufs.3),
            &y_ref,
            4.0 * (c.cin * taps + 1) as f64 * U + store_rounding(tout),
        );
        let gw = read(&bufs.1)[w_off..w_off + dims.n_params()].to_vec();
        check(
            &format!("{label} backward_weight"),
            &gw,
            &gw_ref,
            4.0 * (batch * v) as f64 * U,
        );
        let gx = read(&bufs.5);
        check(
            &format!("{label} backward_input"),
            &gx,
            &gx_ref,
            4.0 * (c.cout * taps + 1) as f64 * U + store_rounding(tin),
        );
        let bits = |v: &[f64]| {
            v.iter()
                .map(|&f| (f as f32).to_bits())
                .collect::<Vec<u32>>()
        };
        outputs.push(((tiling, w_off, ubo), bits(&read(&bufs.3)), bits(&gx)));
    }
    for ((t, w_off, ubo), y, gx) in outputs.iter().filter(|o| o.0.0.forward_sites == 4) {
        let one = ConvTiling {
            forward_sites: 1,
            ..*t
        };
        let (_, y1, gx1) = outputs
            .iter()
            .find(|o| o.0 == (one, *w_off, *ubo))
            .expect("the one-site run of each 4-site tiling");
        assert!(
            y == y1 && gx == gx1,
            "{label}: 4 sites per thread ({t:?}) changed the forward ({}) or backward_input ({})",
            y != y1,
            gx != gx1
        );
    }

    // The reference backward is the derivative of the reference forward:
    // L(x, w) = sum r * act(conv(mask * x; w)), with dL/dpre = r * act'(y).
    let rr = uniform(&mut r, batch * c.cout * v, -1.0, 1.0);
    let loss_x = |xx: &[f64]| {
        let xe: Vec<f64> = if c.in_mask {
            xx.iter()
                .enumerate()
                .map(|(i, &xv)| xv * mask[i % v])
                .collect()
        } else {
            xx.to_vec()
        };
        dot(&rr, &layer.forward(&xe, w, c.act))
    };
    let gpre: Vec<f64> = rr
        .iter()
        .zip(&y_ref)
        .map(|(ri, &yi)| ri * c.act.grad_from_output(yi))
        .collect();
    let mut gx_an = layer.backward_input(&gpre, w);
    if c.in_mask {
        for (i, gv) in gx_an.iter_mut().enumerate() {
            *gv *= mask[i % v];
        }
    }
    check_fd(
        &format!("{label} reference backward_input"),
        &loss_x,
        &x,
        &gx_an,
        40,
        seed + 1,
    );
    let loss_w = |ww: &[f64]| dot(&rr, &layer.forward(&x_eff, ww, c.act));
    let gw_an = layer.backward_weight(&x_eff, &gpre);
    check_fd(
        &format!("{label} reference backward_weight"),
        &loss_w,
        w,
        &gw_an,
        40,
        seed + 2,
    );
}

/// The three convolutions of a coupling net, as the model chains them.
fn net(nd: usize, l: usize, k: usize, seed: u64) {
    net_over(nd, l, k, None, seed);
}

/// `net` over the tap set k^Nd (axes `None`) or k along `axes` only.
fn net_over(nd: usize, l: usize, k: usize, axes: Option<Vec<usize>>, seed: u64) {
    run(
        &Case {
            nd,
            l,
            k,
            axes: axes.clone(),
            cin: 1,
            cout: 3,
            act: Act::Leaky,
            in_mask: true,
            input_grad: InputGrad::AddMasked,
        },
        seed,
    );
    run(
        &Case {
            nd,
            l,
            k,
            axes: axes.clone(),
            cin: 3,
            cout: 4,
            act: Act::Leaky,
            in_mask: false,
            input_grad: InputGrad::TimesActGrad(Act::Leaky),
        },
        seed + 10,
    );
    run(
        &Case {
            nd,
            l,
            k,
            axes: axes.clone(),
            cin: 4,
            cout: 2,
            act: Act::Tanh,
            in_mask: false,
            input_grad: InputGrad::TimesActGrad(Act::Tanh),
        },
        seed + 20,
    );
    run(
        &Case {
            nd,
            l,
            k,
            axes: axes.clone(),
            cin: 2,
            cout: 3,
            act: Act::None,
            in_mask: false,
            input_grad: InputGrad::Write,
        },
        seed + 30,
    );
}

#[test]
fn conv_1d() {
    net(1, 8, 3, 100);
    net(1, 6, 5, 110);
    // Taps 4 sites either side: the widest window of 4-site blocks (3 blocks, 12 sites).
    net(1, 8, 9, 120);
}

#[test]
fn conv_2d() {
    net(2, 4, 3, 200);
    net(2, 6, 5, 210);
    // A pointwise kernel, and one wider than the lattice (taps alias the same sites).
    net(2, 4, 1, 220);
    net(2, 4, 5, 230);
    // Rows of 2 and 3 blocks of 4 sites (their periodic neighbours are other blocks).
    net(2, 8, 5, 240);
    net(2, 12, 3, 250);
}

/// Wide layers: the accumulators of one thread (NB x channels, taps x channels) are large.
#[test]
fn conv_wide_channels() {
    run(
        &Case {
            nd: 2,
            l: 4,
            k: 3,
            axes: None,
            cin: 32,
            cout: 32,
            act: Act::Leaky,
            in_mask: false,
            input_grad: InputGrad::TimesActGrad(Act::Leaky),
        },
        500,
    );
}

/// Every tiling the tuner may choose (`crate::tune`), on a batch of 17 (every samples-per-
/// thread candidate up to 16, the last block partial): the tutorial's three shapes, a 3D
/// window of 27 taps, a line of 3 taps (a combinational branch) and a wide layer.
#[test]
fn conv_every_tuning_candidate() {
    let case = Case::k3;
    let leaky = InputGrad::TimesActGrad(Act::Leaky);
    let cases = [
        case(2, 4, None, 1, 8, Act::Leaky, true, InputGrad::AddMasked),
        case(2, 4, None, 8, 8, Act::Leaky, false, leaky),
        case(2, 4, None, 8, 2, Act::Tanh, false, leaky),
        case(3, 3, None, 8, 8, Act::Leaky, false, leaky),
        case(
            3,
            3,
            Some(vec![1]),
            8,
            8,
            Act::Leaky,
            false,
            InputGrad::Write,
        ),
        case(2, 3, None, 32, 32, Act::None, false, leaky),
    ];
    for (i, c) in cases.iter().enumerate() {
        run_tilings(c, 600 + i as u64, 17, true);
    }
}

#[test]
fn conv_3d() {
    net(3, 4, 3, 300);
}

#[test]
fn conv_4d() {
    net(4, 4, 3, 400);
}

/// Lower-dimensional windows (the branches of a combinational convolution): k along some axes,
/// 1 along the others, through the same kernels.
#[test]
fn conv_axis_windows() {
    net_over(2, 4, 3, Some(vec![1]), 600);
    net_over(3, 4, 3, Some(vec![0, 2]), 610);
    net_over(3, 4, 5, Some(vec![2]), 620);
    // Off the last axis: every tap's row is its own (offset 0 along it).
    net_over(3, 8, 3, Some(vec![1]), 640);
    net_over(4, 3, 3, Some(vec![1]), 630);
    net_over(4, 3, 3, Some(vec![0, 1, 3]), 640);
}

/// A branch is the full k^Nd convolution with its kernel zero off the chosen axes.
#[test]
fn axis_window_is_the_full_window_zero_off_its_axes() {
    let (nd, k, cin, cout, batch) = (3, 3, 2, 3, 2);
    let lat = Lattice::new(nd, 4);
    let v = lat.volume();
    let full = Taps::Window { k };
    let full_offsets = full.offsets(nd);
    let mut r = rng(700);
    for branch in Taps::branches(nd, k, 1)
        .into_iter()
        .chain(Taps::branches(nd, k, 2))
    {
        let offs = branch.offsets(nd);
        let (bt, ft) = (offs.len(), full_offsets.len());
        let wb = uniform(&mut r, cout * cin * bt + cout, -0.5, 0.5);
        // The same weights on the full window: each branch tap at its offset, zero elsewhere.
        let mut wf = vec![0.0; cout * cin * ft + cout];
        for pair in 0..cout * cin {
            for (t, o) in offs.iter().enumerate() {
                let tf = full_offsets.iter().position(|f| f == o).unwrap();
                wf[pair * ft + tf] = wb[pair * bt + t];
            }
        }
        wf[cout * cin * ft..].copy_from_slice(&wb[cout * cin * bt..]);
        let x = uniform(&mut r, batch * cin * v, -1.0, 1.0);
        let layer = |taps| reference::Layer {
            lattice: &lat,
            taps,
            batch,
            cin,
            cout,
        };
        let yb = layer(&branch).forward(&x, &wb, Act::Leaky);
        let yf = layer(&full).forward(&x, &wf, Act::Leaky);
        check(
            &format!("{branch:?} against the full window"),
            &yb,
            &yf,
            1e-12,
        );
    }
}

/// f16 storage (`[device] precision = "f16"`): a coupling net's three convolutions as the
/// tape stores them (the first reads the f32 field and writes f16, the others f16 both sides)
/// in Nd = 1..4, every tuning candidate in 2D, and a combinational branch's window. Tolerance:
/// the f32 one plus 2^-11 relative for the one rounding of an f16 output.
#[test]
fn conv_f16_storage() {
    use Precision::{F16, F32};
    // The first convolution (one input channel) reads the masked field.
    let stage = |nd, l, axes, cin, cout, act, input_grad| {
        Case::k3(nd, l, axes, cin, cout, act, cin == 1, input_grad)
    };
    let leaky = InputGrad::TimesActGrad(Act::Leaky);
    for (nd, l) in [(1, 8), (2, 4), (3, 3), (4, 3)] {
        let candidates = nd == 2;
        let seed = 700 + 10 * nd as u64;
        let first = stage(nd, l, None, 1, 8, Act::Leaky, InputGrad::AddMasked);
        run_typed(&first, seed, 3, candidates, [F32, F16]);
        let mid = stage(nd, l, None, 8, 8, Act::Leaky, leaky);
        run_typed(&mid, seed + 1, 3, candidates, [F16, F16]);
        let last = stage(nd, l, None, 8, 2, Act::Tanh, leaky);
        run_typed(&last, seed + 2, 3, candidates, [F16, F16]);
    }
    let branch = stage(3, 4, Some(vec![1]), 8, 8, Act::Leaky, InputGrad::Write);
    run_typed(&branch, 750, 3, false, [F16, F16]);
}

/// The rule's forward block: on a CPU adapter 4 sites of a row per thread where L is a multiple
/// of 4 (with samples per thread so that NB x 4 sites x channels stays at 64 accumulators), one
/// site elsewhere and on GPUs.
#[test]
fn conv_rule_forward_sites() {
    let dims = |cin, cout, extent| ConvDims {
        batch: 64,
        volume: extent * extent,
        taps: 9,
        cin,
        cout,
        extent,
    };
    let block = |d: &ConvDims, k, software| ConvTiling::for_adapter(d, k, software).forward_block();
    assert_eq!(block(&dims(8, 8, 8), 3, true), (2, 4));
    assert_eq!(block(&dims(1, 8, 8), 3, true), (2, 4));
    assert_eq!(block(&dims(8, 2, 16), 3, true), (2, 4));
    assert_eq!(block(&dims(8, 8, 6), 3, true), (8, 1));
    assert_eq!(block(&dims(8, 8, 8), 11, true), (8, 1));
    // Wide layers keep one site (4 x 32 accumulators per sample would spill).
    assert_eq!(block(&dims(32, 32, 8), 3, true), (2, 1));
    assert_eq!(block(&dims(8, 8, 8), 3, false), (1, 1));
}
