//! Rational-quadratic spline coupling (src/kernels/spline.rs, shaders/spline.wgsl): forward
//! output and log J, backward, against the f64 reference; the reference backward against
//! finite differences; a zero net output is the identity map.
//! Tolerance: two K-term softmaxes, a K-step knot sum and a rational function per site: y to a
//! few hundred ulp of B, log q to a sum of V such terms. The gradients divide by the bin's
//! width w (>= 2B/1000) and by the rational function's denominator squared, which amplifies
//! the knot sum's rounding by up to B/w: 2^-12 there.

use crate::common::*;
use gomaflow_wgpu::gpu::Precision;
use gomaflow_wgpu::kernels::coupling::{Coupling, CouplingBuffers, CouplingGrads};
use gomaflow_wgpu::kernels::spline::{SplineSpec, channels, reference};
use gomaflow_wgpu::kernels::{Act, LatticeBuffers};
use gomaflow_wgpu::lattice::Lattice;

const U: f64 = 1.0 / 16_777_216.0;

struct Case {
    nd: usize,
    l: usize,
    parity: u32,
    bins: usize,
    bound: f64,
    final_act: Act,
    precision: Precision,
    /// A zero net output (the identity start) instead of a random one.
    zero: bool,
    seed: u64,
}

fn case(nd: usize, l: usize, parity: u32, bins: usize, final_act: Act, seed: u64) -> Case {
    Case {
        nd,
        l,
        parity,
        bins,
        bound: 3.0,
        final_act,
        precision: Precision::F32,
        zero: false,
        seed,
    }
}

/// The GPU kernels against the reference on random x (some beyond +-B, in the identity tails)
/// and random net outputs, and the reference backward against finite differences.
fn run(t: Case) {
    let g = gpu();
    let lat = Lattice::new(t.nd, t.l);
    let v = lat.volume();
    let (batch, k, bound) = (5, t.bins, t.bound);
    let c = channels(k);
    let label = format!(
        "spline K={k} Nd={} L={} parity={} {:?} {:?}",
        t.nd, t.l, t.parity, t.final_act, t.precision
    );
    let mut r = rng(t.seed);
    let x = rounded(&uniform(&mut r, batch * v, -1.2 * bound, 1.2 * bound));
    let st_pre = if t.zero {
        vec![0.0; c * batch * v]
    } else {
        uniform(&mut r, c * batch * v, -1.5, 1.5)
    };
    let act = |u: &[f64]| -> Vec<f64> { u.iter().map(|&s| t.final_act.apply(s)).collect() };
    let st = rounded_as(&act(&st_pre), t.precision);
    let logq0 = rounded(&uniform(&mut r, batch, -10.0, 10.0));
    let gy = rounded(&uniform(&mut r, batch * v, -1.0, 1.0));
    let glogq = rounded(&uniform(&mut r, batch, -1.0, 1.0));
    let mask = lat.mask(t.parity);

    let lb = LatticeBuffers::new(g, lat, &[]).unwrap();
    let (bx, bst, by, blogq, bgy, bgx, bgst, bglogq) = (
        upload("x", &x),
        upload_as("st", &st, t.precision),
        g.storage("y", batch * v).unwrap(),
        upload("logq", &logq0),
        upload("gy", &gy),
        g.storage("gx", batch * v).unwrap(),
        g.activations("gst", c * batch * v, t.precision).unwrap(),
        upload("glogq", &glogq),
    );
    let spline = Coupling::spline(
        g,
        SplineSpec {
            batch,
            volume: v,
            parity: t.parity,
            bins: k,
            bound,
            final_act: t.final_act,
        },
        &CouplingBuffers {
            lattice: &lb,
            x: &bx,
            st: &bst,
            y: &by,
            logq: &blogq,
            grad: Some(CouplingGrads {
                gy: &bgy,
                gx: &bgx,
                gst: &bgst,
                glogq: &bglogq,
            }),
        },
    )
    .unwrap();
    g.run(&[&spline.forward, spline.backward.as_ref().unwrap()])
        .unwrap();

    let (y_ref, logj) = reference::forward(&x, &st, &mask, batch, k, bound);
    check(&format!("{label} forward y"), &read(&by), &y_ref, 256.0 * U);
    if t.zero {
        // The identity map: y = x, log J = 0, in the reference and on the GPU.
        check(&format!("{label} reference y = x"), &y_ref, &x, 1e-12);
        check(
            &format!("{label} reference log J"),
            &logj,
            &vec![0.0; batch],
            1e-12,
        );
        check(&format!("{label} y = x"), &read(&by), &x, 16.0 * U);
        let got = read(&blogq);
        check(
            &format!("{label} log q unchanged"),
            &got,
            &logq0,
            8.0 * v as f64 * U,
        );
    }
    let logq_ref: Vec<f64> = logq0.iter().zip(&logj).map(|(a, b)| a - b).collect();
    check(
        &format!("{label} forward log q"),
        &read(&blogq),
        &logq_ref,
        32.0 * v as f64 * U,
    );
    let (gx_ref, gst_ref) = reference::backward(&x, &st, &mask, &gy, &glogq, k, bound, t.final_act);
    check(
        &format!("{label} backward x"),
        &read(&bgx),
        &gx_ref,
        4096.0 * U,
    );
    check(
        &format!("{label} backward st"),
        &read(&bgst),
        &gst_ref,
        4096.0 * U + 4.0 * store_rounding(t.precision),
    );

    // Reference backward vs finite differences of L = r.y + c.(log q0 - log J), as a function
    // of x and of the pre-activation net output.
    let rr = uniform(&mut r, batch * v, -1.0, 1.0);
    let cc = glogq.clone();
    let loss = |xx: &[f64], sp: &[f64]| {
        let (y, lj) = reference::forward(xx, &act(sp), &mask, batch, k, bound);
        dot(&rr, &y) - dot(&cc, &lj)
    };
    let st_exact = act(&st_pre);
    let (gx_an, gst_an) =
        reference::backward(&x, &st_exact, &mask, &rr, &cc, k, bound, t.final_act);
    check_fd(
        &format!("{label} reference backward x"),
        &|xx| loss(xx, &st_pre),
        &x,
        &gx_an,
        60,
        t.seed + 1,
    );
    check_fd(
        &format!("{label} reference backward st"),
        &|sp| loss(&x, sp),
        &st_pre,
        &gst_an,
        120,
        t.seed + 2,
    );
}

#[test]
fn spline_all_dimensions() {
    for (nd, l) in [(1, 8), (2, 4), (2, 8), (3, 4), (4, 4)] {
        for parity in [0, 1] {
            run(case(
                nd,
                l,
                parity,
                8,
                Act::None,
                10 * nd as u64 + parity as u64,
            ));
        }
        run(case(nd, l, 0, 4, Act::Tanh, 100 + nd as u64));
    }
}

#[test]
fn spline_bins_and_bounds() {
    // Two bins (one interior knot), many bins, and a narrow interval most x fall outside of.
    run(case(2, 8, 0, 2, Act::None, 300));
    run(case(2, 8, 1, 16, Act::None, 301));
    run(Case {
        bound: 0.5,
        ..case(2, 8, 1, 6, Act::Tanh, 302)
    });
    // More sites than threads per workgroup: the strided loop and the tree both matter.
    run(case(2, 32, 1, 8, Act::None, 303));
}

/// f16 storage of the net's output and its gradient (`[device] precision = "f16"`).
#[test]
fn spline_f16_storage() {
    for (nd, l) in [(1, 8), (2, 8), (4, 4)] {
        run(Case {
            precision: Precision::F16,
            ..case(nd, l, 1, 8, Act::None, 400 + nd as u64)
        });
    }
}

/// A zero net output (every coupling's start under `init = "identity"`) is the identity map:
/// y = x and log J = 0, on the GPU and in the reference.
#[test]
fn spline_zero_output_is_identity() {
    for (parity, bins) in [(0, 8), (1, 3)] {
        run(Case {
            zero: true,
            ..case(2, 8, parity, bins, Act::None, 500 + parity as u64)
        });
    }
}
