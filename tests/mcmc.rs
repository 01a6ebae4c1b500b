//! The chains and their statistics (src/mcmc.rs, src/observables.rs): Wolff's estimator on a
//! series with known tau_int, the jackknife, the MH acceptance and acceptance-based tau on hand
//! cases, and HMC on the GPU reproducing the exact free field in 2 and 3 dimensions.

use crate::common::*;
use gomaflow_wgpu::lattice::Lattice;
use gomaflow_wgpu::mcmc::{HmcOptions, MhChain, run_hmc};
use gomaflow_wgpu::observables::{Summary, free, jackknife, pareto_k, tau_acceptance, wolff};
use gomaflow_wgpu::rng::Philox;

/// AR(1): x_t = rho x_{t-1} + sqrt(1 - rho^2) e_t has rho(t) = rho^t, so
/// tau_int = 1/2 + sum rho^t = (1 + rho) / (2 (1 - rho)).
#[test]
fn wolff_on_ar1() {
    for rho in [0.0, 0.5, 0.9] {
        let mut r = Philox::new(3, 0);
        let normal = |r: &mut Philox| {
            let (u1, u2) = (1.0 - r.uniform(), r.uniform());
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        };
        let replicas: Vec<Vec<f64>> = (0..4)
            .map(|_| {
                let mut x = normal(&mut r);
                (0..50_000)
                    .map(|_| {
                        x = rho * x + (1.0 - rho * rho).sqrt() * normal(&mut r);
                        x
                    })
                    .collect()
            })
            .collect();
        let refs: Vec<&[f64]> = replicas.iter().map(|v| v.as_slice()).collect();
        let a = wolff(&refs);
        let exact = (1.0 + rho) / (2.0 * (1.0 - rho));
        eprintln!(
            "CHECK Wolff AR(1) rho={rho}: tau_int {:.3} ± {:.3} (exact {exact:.3}), W = {}, mean {:.4} ± {:.4}",
            a.tau_int, a.tau_int_error, a.window, a.mean, a.error
        );
        assert!((a.tau_int - exact).abs() < 4.0 * a.tau_int_error + 0.05 * exact);
        // The error of the mean accounts for the correlation: 0 within 4 of them.
        assert!(a.mean.abs() < 4.0 * a.error);
        let n = 200_000.0;
        assert!((a.error - (2.0 * exact / n).sqrt()).abs() < 0.15 * a.error);
    }
}

#[test]
fn jackknife_of_a_mean_is_the_standard_error() {
    let data: Vec<Vec<f64>> = (0..100).map(|i| vec![(i % 7) as f64, 1.0]).collect();
    let (m, e) = jackknife(std::slice::from_ref(&data), 1, &|x| x[0]);
    let xs: Vec<f64> = data.iter().map(|r| r[0]).collect();
    let mean = xs.iter().sum::<f64>() / 100.0;
    let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 99.0).sqrt();
    assert!((m - mean).abs() < 1e-12);
    assert!((e - sd / 10.0).abs() < 1e-12);
    // A ratio: bias-corrected, finite error.
    let (r, re) = jackknife(&[data], 5, &|x| x[0] / x[1]);
    assert!((r - mean).abs() < 1e-9 && re > 0.0);
}

#[test]
fn metropolis_hand_cases() {
    let mut r = Philox::new(1, 0);
    // Rising weights: every proposal accepted.
    let c = MhChain::run(&[0.0, 1.0, 2.0, 3.0], &mut r);
    assert_eq!(c.accepted, vec![true; 4]);
    assert_eq!(c.acceptance(0), 1.0);
    // Equal weights: every proposal accepted (ratio 1).
    assert_eq!(MhChain::run(&[0.5; 10], &mut r).acceptance(0), 1.0);
    // A first state no later one can displace: all rejected. Over the 3 steps after the start,
    // rho(1) = 2/2 and rho(2) = 1/1 (every window of t steps is all rejections): tau = 5/2.
    let c = MhChain::run(&[0.0, -1000.0, -1000.0, -1000.0], &mut r);
    assert_eq!(c.accepted, vec![true, false, false, false]);
    assert_eq!(c.state, vec![0, 0, 0, 0]);
    assert_eq!(tau_acceptance(&c.accepted[1..]), 2.5);
    // Independent samples: tau = 1/2.
    assert_eq!(tau_acceptance(&[true; 100]), 0.5);
    // Weights 1 and 1/2 with equal probability: the chain sits on w in proportion to w, and
    // accepts with probability sum_w pi(w) sum_w' q(w') min(1, w'/w) = 2/3 * 3/4 + 1/3 = 5/6.
    let lw: Vec<f64> = (0..200_000)
        .map(|_| {
            if r.uniform() < 0.5 {
                0.0
            } else {
                (0.5f64).ln()
            }
        })
        .collect();
    let a = MhChain::run(&lw, &mut r).acceptance(0);
    eprintln!(
        "CHECK MH acceptance, two-point weights: {a:.4} (exact 5/6 = {:.4})",
        5.0 / 6.0
    );
    assert!((a - 5.0 / 6.0).abs() < 0.004);
}

/// HMC reproduces the exact free-field <phi^2> and G(r) within 3 sigma.
fn hmc_free(nd: usize, l: usize, m2: f64, seed: u64) {
    let dir = tmpdir(&format!("hmc-free-{nd}"));
    let cfg = load(&dir, &config(nd, l, m2, 0.0, 2, "[4]", 1, 1));
    let opts = HmcOptions {
        chains: 64,
        trajectories: 400,
        burn_in: 100,
        eps: 0.2,
        n_steps: 8,
        target_acceptance: 0.8,
        seed,
    };
    let run = run_hmc(gpu(), &cfg, &opts, |_, _, _| {}).unwrap();
    let lat = Lattice::new(nd, l);
    let s = Summary::of(&lat, &run.primaries);
    let g = free::g(&lat, m2);
    eprintln!(
        "CHECK HMC free field {nd}D L={l}: acceptance {:.3}, <phi^2> {:.5} ± {:.5} (exact {:.5}), tau_int {:.2}",
        run.acceptance, s.phi2.mean, s.phi2.error, g[0], s.phi2.tau_int
    );
    assert!(run.acceptance > 0.6);
    assert!((s.phi2.mean - g[0]).abs() < 3.0 * s.phi2.error, "phi^2");
    for (r, (gr, &(v, e))) in g.iter().zip(&s.g).enumerate() {
        eprintln!("      G({r}) = {v:.5} ± {e:.5} (exact {gr:.5})");
        assert!((v - gr).abs() < 3.0 * e, "G({r})");
    }
    // chi_2 = V <m^2> = 1 / (2 m2) exactly.
    let chi = free::m2_mean(&lat, m2) * lat.volume() as f64;
    assert!(
        (s.chi2.mean - chi).abs() < 3.0 * s.chi2.error,
        "chi2 {} vs {chi}",
        s.chi2.mean
    );
}

#[test]
fn hmc_free_field_2d() {
    hmc_free(2, 6, 0.5, 11);
}

#[test]
fn hmc_free_field_3d() {
    hmc_free(3, 4, 1.0, 12);
}

/// Pareto-smoothed importance sampling's k: weights w = U^-xi have a Pareto tail of shape xi.
#[test]
fn pareto_k_of_known_tails() {
    let mut r = Philox::new(8, 0);
    for xi in [0.2, 0.5, 0.9] {
        let lw: Vec<f64> = (0..20_000)
            .map(|_| -xi * (1.0 - r.uniform()).ln())
            .collect();
        let k = pareto_k(&lw);
        eprintln!("CHECK Pareto k of a tail of shape {xi}: {k:.3}");
        assert!((k - xi).abs() < 0.1, "{k} vs {xi}");
    }
    // Bounded weights: k well below 0.5.
    let lw: Vec<f64> = (0..20_000).map(|_| r.uniform()).collect();
    assert!(pareto_k(&lw) < 0.2);
}
