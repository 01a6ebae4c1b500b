//! The phi^4 action (src/kernels/action.rs, shaders/action.wgsl): S per sample and its gradient
//! against the f64 reference (written in the kinetic form, the shader in the expanded one),
//! and the reference gradient against finite differences of the reference action.
//! Tolerance: S sums V terms of O(10): 4 V 2^-24 relative; the gradient is a few terms per site.

use crate::common::*;
use gomaflow_wgpu::kernels::LatticeBuffers;
use gomaflow_wgpu::kernels::action::{Action, ActionSpec, reference};
use gomaflow_wgpu::lattice::Lattice;

const U: f64 = 1.0 / 16_777_216.0;

fn run(nd: usize, l: usize, m2: f64, lam: f64, seed: u64) {
    let g = gpu();
    let lat = Lattice::new(nd, l);
    let v = lat.volume();
    let batch = 4;
    let label = format!("action Nd={nd} L={l} m2={m2} lam={lam}");
    let mut r = rng(seed);
    let phi = rounded(&uniform(&mut r, batch * v, -2.0, 2.0));
    let scale = 0.25;
    let lb = LatticeBuffers::new(g, lat, &[]).unwrap();
    let (bphi, bs, bgrad, bs2) = (
        upload("phi", &phi),
        g.storage("S", batch).unwrap(),
        g.storage("grad", batch * v).unwrap(),
        g.storage("S only", batch).unwrap(),
    );
    let spec = ActionSpec {
        batch,
        m2,
        lam,
        scale,
    };
    let a = Action::new(g, spec, &lb, &bphi, &bs, &bgrad).unwrap();
    let a2 = Action::new(g, spec, &lb, &bphi, &bs2, &bgrad).unwrap();
    g.run(&[&a.action_grad, &a2.action]).unwrap();

    let s_ref = reference::action(&lat, &phi, m2, lam);
    check(
        &format!("{label} S (action_grad)"),
        &read(&bs),
        &s_ref,
        4.0 * v as f64 * U,
    );
    check(
        &format!("{label} S (action)"),
        &read(&bs2),
        &s_ref,
        4.0 * v as f64 * U,
    );
    let grad_ref: Vec<f64> = reference::grad(&lat, &phi, m2, lam)
        .iter()
        .map(|x| x * scale)
        .collect();
    check(
        &format!("{label} gradient"),
        &read(&bgrad),
        &grad_ref,
        16.0 * U,
    );

    let one = phi[..v].to_vec();
    let f = |p: &[f64]| reference::action(&lat, p, m2, lam)[0];
    check_fd(
        &format!("{label} reference gradient"),
        &f,
        &one,
        &reference::grad(&lat, &one, m2, lam),
        40,
        seed + 1,
    );
}

#[test]
fn action_all_dimensions() {
    for (nd, l) in [(1, 8), (2, 4), (2, 8), (3, 4), (4, 4)] {
        run(nd, l, -4.0, 8.0, nd as u64);
        run(nd, l, 0.5, 0.0, 10 + nd as u64);
    }
}

#[test]
fn action_large_volume() {
    run(2, 32, -4.0, 5.113, 99);
    run(3, 8, -4.0, 5.0, 98);
}

#[test]
fn action_constant_field() {
    // phi = c everywhere: S = V (m2 c^2 + lam c^4), the kinetic term vanishes; a hand value.
    let g = gpu();
    let lat = Lattice::new(2, 4);
    let v = lat.volume();
    let c = 0.5;
    let lb = LatticeBuffers::new(g, lat, &[]).unwrap();
    let phi = vec![c; v];
    let (bphi, bs, bg) = (
        upload("phi", &phi),
        g.storage("S", 1).unwrap(),
        g.storage("g", v).unwrap(),
    );
    let a = Action::new(
        g,
        ActionSpec {
            batch: 1,
            m2: -4.0,
            lam: 8.0,
            scale: 1.0,
        },
        &lb,
        &bphi,
        &bs,
        &bg,
    )
    .unwrap();
    g.run(&[&a.action_grad]).unwrap();
    let want = v as f64 * (-4.0 * c * c + 8.0 * c.powi(4)); // 16 * (-1 + 0.5) = -8
    check("action constant field S", &read(&bs), &[want], 1e-6);
    // dS/dphi = 2 m2 c + 4 lam c^3 (the neighbour terms cancel against 2*2Nd c).
    check(
        "action constant field gradient",
        &read(&bg),
        &vec![2.0 * -4.0 * c + 4.0 * 8.0 * c.powi(3); v],
        1e-6,
    );
}
