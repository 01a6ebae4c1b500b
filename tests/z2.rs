//! The symmetrised coupling's element-wise kernels (src/kernels/z2.rs, shaders/z2.wgsl):
//! mirror, combine and their backwards against the f64 reference; the reference backwards
//! against finite differences of the reference forwards. Tolerance: one add and one multiply
//! by 1/2 (exact) per output, so a few ulp.

use crate::common::*;
use gomaflow_wgpu::gpu::Precision;
use gomaflow_wgpu::kernels::z2::{Combine, Mirror, Z2Spec, reference};
use gomaflow_wgpu::kernels::{Act, LatticeBuffers};
use gomaflow_wgpu::lattice::Lattice;

fn run(nd: usize, l: usize, parity: u32, final_act: Act, seed: u64) {
    run_typed(nd, l, parity, final_act, seed, Precision::F32);
}

/// `run` with the net's outputs u and their gradient gu stored as `u_type` (the field, (s, t)
/// and its gradient stay f32): the reference reads the stored u; an f16 gu is further rounded
/// once, by at most 2^-11 of its value, which its tolerance adds.
fn run_typed(nd: usize, l: usize, parity: u32, final_act: Act, seed: u64, u_type: Precision) {
    let g = gpu();
    let lat = Lattice::new(nd, l);
    let v = lat.volume();
    let batch = 3;
    let label = format!("z2 Nd={nd} L={l} parity={parity} {final_act:?} {u_type:?}");
    let mut r = rng(seed);
    let x = rounded(&uniform(&mut r, batch * v, -2.0, 2.0));
    // The net's output after its activation (in (-1, 1) for tanh).
    let u: Vec<f64> = uniform(&mut r, 4 * batch * v, -1.5, 1.5)
        .iter()
        .map(|&a| final_act.apply(a))
        .collect();
    let u = rounded_as(&u, u_type);
    let gst = rounded(&uniform(&mut r, 2 * batch * v, -1.0, 1.0));
    let gxx = rounded(&uniform(&mut r, 2 * batch * v, -1.0, 1.0));
    let gx0 = rounded(&uniform(&mut r, batch * v, -1.0, 1.0));
    let mask = lat.mask(parity);
    let spec = Z2Spec {
        batch,
        volume: v,
        parity,
        final_act,
    };

    let lb = LatticeBuffers::new(g, lat, &[]).unwrap();
    let (bx, bxx, bgxx, bgx) = (
        upload("x", &x),
        g.storage("xx", 2 * batch * v).unwrap(),
        upload("gxx", &gxx),
        upload("gx", &gx0),
    );
    let (bu, bst, bgst, bgu) = (
        upload_as("u", &u, u_type),
        g.storage("st", 2 * batch * v).unwrap(),
        upload("gst", &gst),
        g.activations("gu", 4 * batch * v, u_type).unwrap(),
    );
    let m = Mirror::new(g, spec, &lb, &bx, &bxx, Some((&bgxx, &bgx))).unwrap();
    let c = Combine::new(g, spec, &bu, &bst, Some((&bgst, &bgu))).unwrap();
    g.run(&[
        &m.forward,
        m.backward.as_ref().unwrap(),
        &c.forward,
        c.backward.as_ref().unwrap(),
    ])
    .unwrap();

    let tol = 4.0 / 16_777_216.0;
    check(
        &format!("{label} mirror"),
        &read(&bxx),
        &reference::mirror(&x),
        tol,
    );
    let gx_want: Vec<f64> = gx0
        .iter()
        .zip(reference::mirror_backward(&gxx, &mask))
        .map(|(a, b)| a + b)
        .collect();
    check(
        &format!("{label} mirror_backward (added)"),
        &read(&bgx),
        &gx_want,
        tol,
    );
    check(
        &format!("{label} combine"),
        &read(&bst),
        &reference::combine(&u, v),
        tol,
    );
    check(
        &format!("{label} combine_backward"),
        &read(&bgu),
        &reference::combine_backward(&u, &gst, v, final_act),
        tol + store_rounding(u_type),
    );

    // The reference backwards are the derivatives of the reference forwards: the gradient of
    // L = <gst, combine(act(a))> with respect to the pre-activation a, and of
    // L = <gxx, mirror(mask x)> with respect to x.
    let a: Vec<f64> = uniform(&mut r, 4 * batch * v, -1.5, 1.5);
    let loss_c = |a: &[f64]| {
        let u: Vec<f64> = a.iter().map(|&y| final_act.apply(y)).collect();
        dot(&reference::combine(&u, v), &gst)
    };
    let ua: Vec<f64> = a.iter().map(|&y| final_act.apply(y)).collect();
    let ga = reference::combine_backward(&ua, &gst, v, final_act);
    check_fd(
        &format!("{label} combine_backward"),
        &loss_c,
        &a,
        &ga,
        40,
        seed,
    );
    let loss_m = |x: &[f64]| {
        let mx: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, &y)| y * mask[i % v])
            .collect();
        dot(&reference::mirror(&mx), &gxx)
    };
    let gm = reference::mirror_backward(&gxx, &mask);
    check_fd(
        &format!("{label} mirror_backward"),
        &loss_m,
        &x,
        &gm,
        40,
        seed,
    );
}

#[test]
fn z2_kernels() {
    run(1, 8, 0, Act::Tanh, 1);
    run(2, 6, 1, Act::Tanh, 2);
    run(2, 4, 0, Act::None, 3);
    run(3, 4, 1, Act::Tanh, 4);
    run(4, 2, 0, Act::None, 5);
}

/// f16 storage of the net's outputs and their gradient (`[device] precision = "f16"`).
#[test]
fn z2_kernels_f16_storage() {
    run_typed(1, 8, 0, Act::Tanh, 11, Precision::F16);
    run_typed(2, 6, 1, Act::Tanh, 12, Precision::F16);
    run_typed(3, 4, 1, Act::None, 14, Precision::F16);
    run_typed(4, 2, 0, Act::Tanh, 15, Precision::F16);
}
