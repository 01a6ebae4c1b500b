//! Affine coupling (src/kernels/coupling.rs, shaders/coupling.wgsl): forward output and log J,
//! backward, against the f64 reference; the reference backward against finite differences.
//! Tolerance: one exp and one fma per site (a few ulp), and a V-term sum for log q: 4 V 2^-24.

use crate::common::*;
use gomaflow_wgpu::gpu::Precision;
use gomaflow_wgpu::kernels::coupling::{
    Coupling, CouplingBuffers, CouplingGrads, CouplingSpec, reference,
};
use gomaflow_wgpu::kernels::{Act, LatticeBuffers};
use gomaflow_wgpu::lattice::Lattice;

const U: f64 = 1.0 / 16_777_216.0;

fn run(nd: usize, l: usize, parity: u32, final_act: Act, seed: u64) {
    run_typed(nd, l, parity, final_act, seed, Precision::F32);
}

/// `run` with the net's output (s, t) and its gradient stored as `st_type`: the reference
/// reads the stored (s, t); an f16 gradient is further rounded once, by at most 2^-11 of its
/// value, which its tolerance adds (y and log q stay f32).
fn run_typed(nd: usize, l: usize, parity: u32, final_act: Act, seed: u64, st_type: Precision) {
    let g = gpu();
    let lat = Lattice::new(nd, l);
    let v = lat.volume();
    let batch = 5;
    let label = format!("coupling Nd={nd} L={l} parity={parity} {final_act:?} {st_type:?}");
    let mut r = rng(seed);
    let x = rounded(&uniform(&mut r, batch * v, -2.0, 2.0));
    // The net's output: post-activation values (in (-1, 1) for tanh).
    let st_pre = uniform(&mut r, 2 * batch * v, -1.5, 1.5);
    let st = rounded_as(
        &st_pre
            .iter()
            .map(|&s| final_act.apply(s))
            .collect::<Vec<_>>(),
        st_type,
    );
    let logq0 = rounded(&uniform(&mut r, batch, -10.0, 10.0));
    let gy = rounded(&uniform(&mut r, batch * v, -1.0, 1.0));
    let glogq = rounded(&uniform(&mut r, batch, -1.0, 1.0));
    let mask = lat.mask(parity);

    let lb = LatticeBuffers::new(g, lat, &[]).unwrap();
    let (bx, bst, by, blogq, bgy, bgx, bgst, bglogq) = (
        upload("x", &x),
        upload_as("st", &st, st_type),
        g.storage("y", batch * v).unwrap(),
        upload("logq", &logq0),
        upload("gy", &gy),
        g.storage("gx", batch * v).unwrap(),
        g.activations("gst", 2 * batch * v, st_type).unwrap(),
        upload("glogq", &glogq),
    );
    let c = Coupling::new(
        g,
        CouplingSpec {
            batch,
            volume: v,
            parity,
            final_act,
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
    g.run(&[&c.forward, c.backward.as_ref().unwrap()]).unwrap();

    let (y_ref, logj) = reference::forward(&x, &st, &mask, batch);
    check(&format!("{label} forward y"), &read(&by), &y_ref, 8.0 * U);
    let logq_ref: Vec<f64> = logq0.iter().zip(&logj).map(|(a, b)| a - b).collect();
    check(
        &format!("{label} forward log q"),
        &read(&blogq),
        &logq_ref,
        4.0 * v as f64 * U,
    );
    let (gx_ref, gst_ref) = reference::backward(&x, &st, &mask, &gy, &glogq, final_act);
    check(
        &format!("{label} backward x"),
        &read(&bgx),
        &gx_ref,
        8.0 * U,
    );
    check(
        &format!("{label} backward st"),
        &read(&bgst),
        &gst_ref,
        8.0 * U + store_rounding(st_type),
    );

    // Reference backward vs finite differences of L = r.y + c.(log q0 - log J), as a function
    // of x and of the pre-activation net output.
    let rr = uniform(&mut r, batch * v, -1.0, 1.0);
    let cc = glogq.clone();
    let loss = |xx: &[f64], sp: &[f64]| {
        let s: Vec<f64> = sp.iter().map(|&u| final_act.apply(u)).collect();
        let (y, lj) = reference::forward(xx, &s, &mask, batch);
        dot(&rr, &y) - dot(&cc, &lj)
    };
    let st_exact: Vec<f64> = st_pre.iter().map(|&s| final_act.apply(s)).collect();
    let (gx_an, gst_an) = reference::backward(&x, &st_exact, &mask, &rr, &cc, final_act);
    check_fd(
        &format!("{label} reference backward x"),
        &|xx| loss(xx, &st_pre),
        &x,
        &gx_an,
        40,
        seed + 1,
    );
    check_fd(
        &format!("{label} reference backward st"),
        &|sp| loss(&x, sp),
        &st_pre,
        &gst_an,
        40,
        seed + 2,
    );
}

#[test]
fn coupling_all_dimensions() {
    for (nd, l) in [(1, 8), (2, 4), (2, 8), (3, 4), (4, 4)] {
        for parity in [0, 1] {
            run(nd, l, parity, Act::Tanh, 10 * nd as u64 + parity as u64);
        }
        run(nd, l, 0, Act::None, 100 + nd as u64);
    }
}

#[test]
fn coupling_large_volume() {
    // More sites than threads per workgroup: the strided loop and the tree both matter.
    run(2, 32, 1, Act::Tanh, 7);
}

/// f16 storage of (s, t) and its gradient (`[device] precision = "f16"`).
#[test]
fn coupling_f16_storage() {
    for (nd, l) in [(1, 8), (2, 8), (3, 4), (4, 4)] {
        for parity in [0, 1] {
            let seed = 200 + 10 * nd as u64 + parity as u64;
            run_typed(nd, l, parity, Act::Tanh, seed, Precision::F16);
        }
    }
    run_typed(2, 32, 1, Act::None, 250, Precision::F16);
}
