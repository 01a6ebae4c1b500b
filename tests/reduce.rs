//! Deterministic reductions (src/kernels/reduce.rs, shaders/reduce.wgsl) against f64 sums.
//! Tolerance: a tree sum of n f32 terms is off by about log2(n) 2^-24 relative to the sum of
//! magnitudes; we use 4 log2(n) 2^-24 times that sum.

use crate::common::*;
use gomaflow_wgpu::kernels::reduce::{self, reference};

const U: f64 = 1.0 / 16_777_216.0;

#[test]
fn row_sums() {
    let g = gpu();
    for (rows, n) in [(1, 1), (3, 100), (7, 256), (2, 5000), (64, 64)] {
        let mut r = rng(rows as u64 * 1000 + n as u64);
        let a = rounded(&uniform(&mut r, rows * n, -1.0, 1.0));
        let (ba, bo) = (upload("a", &a), g.storage("out", rows).unwrap());
        let d = reduce::row_sum(g, rows, n, 0.5, &ba, &bo).unwrap();
        g.run(&[&d]).unwrap();
        let want: Vec<f64> = a.chunks(n).map(|c| 0.5 * c.iter().sum::<f64>()).collect();
        let tol = 4.0 * (n as f64).log2().max(1.0) * U * n as f64;
        check(&format!("row_sum {rows}x{n}"), &read(&bo), &want, tol);
        // Deterministic: the same bits on a second run.
        let first = g.read::<f32>(&bo).unwrap();
        g.run(&[&d]).unwrap();
        assert_eq!(first, g.read::<f32>(&bo).unwrap());
    }
}

#[test]
fn loss_and_metrics() {
    let g = gpu();
    // (Scale 1024: the loss scale of an f16 tape of batch 1000, `TapeSpec::loss_scale`.)
    for (batch, scale) in [(1, 1.0), (64, 1.0), (1000, 1.0), (1000, 1024.0)] {
        let mut r = rng(batch as u64);
        let logq = rounded(&uniform(&mut r, batch, -80.0, -40.0));
        let s = rounded(&uniform(&mut r, batch, 30.0, 60.0));
        let (bq, bs, bm, bg) = (
            upload("logq", &logq),
            upload("S", &s),
            g.storage("metrics", reduce::METRICS).unwrap(),
            g.storage("glogq", batch).unwrap(),
        );
        let d = reduce::loss(g, batch, scale, &bq, &bs, &bm, &bg).unwrap();
        g.run(&[&d]).unwrap();
        let want = reference::loss_metrics(&logq, &s);
        let m = read(&bm);
        // Terms are O(50): relative to the loss, a tree over `batch` terms.
        let tol = 4.0 * (batch as f64).log2().max(1.0) * U * 100.0;
        check(
            &format!("loss batch={batch} loss"),
            &m[..1],
            &want[..1],
            tol,
        );
        check(
            &format!("loss batch={batch} ess"),
            &m[1..2],
            &want[1..2],
            1e-5,
        );
        check(
            &format!("loss batch={batch} max/mean log w"),
            &m[2..4],
            &want[2..4],
            tol,
        );
        check(
            &format!("loss batch={batch} dL/dlog q"),
            &read(&bg),
            &vec![scale / batch as f64; batch],
            1e-7,
        );
    }
}

#[test]
fn ess_hand_cases() {
    // Equal weights: ESS per sample 1. One weight dominating: 1/N.
    assert!((reference::ess_per_sample(&[0.3; 10]) - 1.0).abs() < 1e-12);
    assert!((reference::ess_per_sample(&[0.0, -1000.0, -1000.0, -1000.0]) - 0.25).abs() < 1e-12);
    // Two weights 1 and e: (1+e)^2 / (1+e^2) / 2.
    let e = std::f64::consts::E;
    let want = (1.0 + e).powi(2) / (1.0 + e * e) / 2.0;
    assert!((reference::ess_per_sample(&[0.0, 1.0]) - want).abs() < 1e-12);
}
