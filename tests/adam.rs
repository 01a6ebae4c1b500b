//! Adam (src/kernels/adam.rs, shaders/adam.wgsl): a hand-computed first step, then several steps
//! with the GPU step counter against the f64 reference.
//! Tolerance: each step is a handful of f32 operations (pow, sqrt, division): 1e-6 relative.

use crate::common::*;
use gomaflow_wgpu::kernels::adam::{Adam, AdamSpec, reference};

#[test]
fn adam_first_step_by_hand() {
    let g = gpu();
    // p = 1, g = 0.5, t = 1: m = 0.05, v = 0.00025, m^ = 0.5, v^ = 0.25,
    // p -= 0.1 * 0.5 / (0.5 + 1e-8) = 0.1 (to 2e-8).  Also g = -2 from p = 3: p = 3.1.
    let state = g.upload("state", &[0u32, 0, 0, 0]).unwrap();
    let p = g.upload("p", &[1.0f32, 3.0]).unwrap();
    let gr = g.upload("g", &[0.5f32, -2.0]).unwrap();
    let m = g.storage("m", 2).unwrap();
    let v = g.storage("v", 2).unwrap();
    let adam = Adam::new(g, AdamSpec::new(2, 0.1), &state, &p, &gr, &m, &v).unwrap();
    g.run(&[&adam.step, &adam.advance]).unwrap();
    check("adam hand step p", &read(&p), &[0.9, 3.1], 1e-6);
    check("adam hand step m", &read(&m), &[0.05, -0.2], 1e-7);
    check("adam hand step v", &read(&v), &[0.00025, 0.004], 1e-7);
    assert_eq!(
        g.read::<u32>(&state).unwrap()[0],
        1,
        "advance counts the step"
    );
}

#[test]
fn adam_many_steps() {
    let g = gpu();
    // More parameters than one row of workgroups would hold in a small grid.
    let n = 70_000;
    let mut r = rng(5);
    let p0 = rounded(&uniform(&mut r, n, -1.0, 1.0));
    let spec = AdamSpec::new(n, 1e-3);
    let state = g.upload("state", &[0u32, 0, 0, 0]).unwrap();
    let (bp, bg, bm, bv) = (
        upload("p", &p0),
        g.storage("g", n).unwrap(),
        g.storage("m", n).unwrap(),
        g.storage("v", n).unwrap(),
    );
    let mut adam = Adam::new(g, spec, &state, &bp, &bg, &bm, &bv).unwrap();
    let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
    for t in 1..=5u64 {
        if t == 4 {
            // A schedule boundary: the new rate applies from the next step.
            adam.set_lr(g, 1e-4);
        }
        let gr = rounded(&uniform(&mut r, n, -1.0, 1.0));
        g.write(&bg, &f32s(&gr));
        g.run(&[&adam.step, &adam.advance]).unwrap();
        let s = AdamSpec::new(n, if t >= 4 { 1e-4 } else { 1e-3 });
        reference::step(&s, t, &mut p, &gr, &mut m, &mut v);
    }
    check("adam 5 steps p", &read(&bp), &p, 1e-6);
    check("adam 5 steps m", &read(&bm), &m, 1e-6);
    check("adam 5 steps v", &read(&bv), &v, 1e-6);
    assert_eq!(g.read::<u32>(&state).unwrap()[0], 5);
}
