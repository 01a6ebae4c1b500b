//! Sampling with a trained flow (src/sample.rs): the independence Metropolis-Hastings chain
//! reproduces the exact free field in 2 and 3 dimensions, and agrees with HMC on an
//! interacting theory.
//!
//! The chain is exact in the limit whatever the flow, but a finite chain is only trustworthy
//! (errors included) when the flow covers the target's tails: reverse-KL training makes flows
//! narrower than the target at first, and then the weights p/q are heavy-tailed where the flow
//! is thin and the chain visits those regions too rarely. A flow trained for 400 steps (ESS 0.2)
//! gave <phi^2> 6 sigma low here; the flows below are trained to ESS ~0.7, with the weights'
//! Pareto k (PSIS) checked below 0.7, as a user would before trusting the errors.

use crate::common::*;
use gomaflow_wgpu::files::FloatType;
use gomaflow_wgpu::lattice::Lattice;
use gomaflow_wgpu::mcmc::{HmcOptions, run_hmc};
use gomaflow_wgpu::observables::{Summary, free};
use gomaflow_wgpu::sample::{self, SampleOptions};
use std::path::PathBuf;

/// `config` with a higher learning rate (the free field trains stably at 3e-3).
fn with_lr(text: String, lr: f64) -> String {
    text.replace("base_lr = 0.001", &format!("base_lr = {lr}"))
}

fn chain(
    run: &std::path::Path,
    samples: usize,
    npy: Option<PathBuf>,
) -> (sample::SampleRun, Summary) {
    let opts = SampleOptions {
        samples,
        burn_in: 500,
        seed: Some(5),
        batch: 1024,
        latest: false,
        save_npy: npy,
        npy_dtype: FloatType::F32,
        shard: None,
        precision: None,
    };
    let r = sample::run(gpu(), run, &opts, |_| {}).unwrap();
    let lat = Lattice::new(r.cfg.physical.nd, r.cfg.physical.l);
    let s = Summary::of(&lat, std::slice::from_ref(&r.primaries));
    (r, s)
}

fn free_field(nd: usize, l: usize, m2: f64, layers: usize) {
    let run = trained(
        &format!("mh-free-{nd}"),
        &with_lr(config(nd, l, m2, 0.0, layers, "[8]", 12, 150), 3e-3),
    );
    let npy = run.join("chain.npy");
    let (r, s) = chain(&run, 100_000, Some(npy.clone()));
    let lat = Lattice::new(nd, l);
    let g = free::g(&lat, m2);
    eprintln!(
        "CHECK flow+MH free field {nd}D L={l}: acceptance {:.3}, ESS {:.3}, tau_acc {:.2}, <phi^2> {:.5} ± {:.5} (exact {:.5})",
        r.stats.acceptance, r.stats.ess, r.stats.tau_acc, s.phi2.mean, s.phi2.error, g[0]
    );
    eprintln!("      Pareto k of the weights {:.2}", r.stats.pareto_k);
    assert!(
        r.stats.pareto_k < 0.7,
        "the flow's weights are too heavy-tailed to trust the errors"
    );
    assert!((s.phi2.mean - g[0]).abs() < 3.0 * s.phi2.error, "phi^2");
    for (rr, gr) in g.iter().enumerate() {
        let (v, e) = s.g[rr];
        eprintln!("      G({rr}) = {v:.5} ± {e:.5} (exact {gr:.5})");
        assert!((v - gr).abs() < 3.0 * e, "G({rr})");
    }
    // The saved chain: a .npy of the configurations after burn-in.
    let bytes = std::fs::read(&npy).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    let shape = format!(
        "'shape': ({}, {})",
        99_500,
        vec![l.to_string(); nd].join(", ")
    );
    assert!(header.contains(&shape), "{header}");
    assert_eq!(bytes.len(), 10 + header_len + 99_500 * lat.volume() * 4);
}

#[test]
fn flow_mh_free_field_2d() {
    free_field(2, 4, 1.0, 8);
}

/// m^2 = 4 in 3D: the flows the CI budget trains at m^2 = 1 reach only ESS 0.3-0.4, and for some
/// proposal seeds a 30k-100k chain read G(r) 3 sigma low (exact with 300k; reweighting the same
/// proposals read the same, so it is the proposal set, not the chain). At m^2 = 4 the flow
/// reaches ESS 0.65 and every seed tried was within 2.2 sigma.
#[test]
fn flow_mh_free_field_3d() {
    free_field(3, 4, 4.0, 8);
}

/// An interacting theory (2D, L = 4, m^2 = -1, lambda = 1, symmetric phase): the flow's chain
/// and HMC agree on <|m|>, <phi^2> and chi_2 within 3 combined standard errors. (In the
/// broken phase, m^2 = -4, lambda = 8, 1800 steps leave the flow at ESS 0.003: it misses one
/// well's tail, and a 40k chain then reads <phi^2> 4 sigma low while its acceptance looks fine at
/// 42%. `sample` warns about such flows.)
#[test]
fn flow_mh_agrees_with_hmc() {
    let text = with_lr(config(2, 4, -1.0, 1.0, 8, "[8]", 12, 150), 2e-3);
    let run = trained("mh-vs-hmc", &text);
    let (r, flow) = chain(&run, 40_000, None);
    let dir = tmpdir("mh-vs-hmc-hmc");
    let cfg = load(&dir, &text);
    let h = run_hmc(
        gpu(),
        &cfg,
        &HmcOptions {
            chains: 64,
            trajectories: 600,
            burn_in: 100,
            eps: 0.1,
            n_steps: 10,
            target_acceptance: 0.8,
            seed: 3,
        },
        |_, _, _| {},
    )
    .unwrap();
    let hmc = Summary::of(&Lattice::new(2, 4), &h.primaries);
    eprintln!(
        "CHECK flow+MH vs HMC, 2D L=4 m2=-1 lam=1: MH acceptance {:.3}, ESS {:.3}, HMC acceptance {:.3}",
        r.stats.acceptance, r.stats.ess, h.acceptance
    );
    assert!(
        r.stats.ess > 0.01,
        "the flow is too poor for its chain's errors to be trusted"
    );
    for (name, a, b) in [
        ("|m|", flow.abs_m, hmc.abs_m),
        ("phi^2", flow.phi2, hmc.phi2),
        ("chi_2", flow.chi2, hmc.chi2),
    ] {
        let sigma = (a.error.powi(2) + b.error.powi(2)).sqrt();
        eprintln!(
            "      {name}: flow {:.5} ± {:.5} (tau {:.1}), HMC {:.5} ± {:.5} (tau {:.1}), {:.2} sigma apart",
            a.mean,
            a.error,
            a.tau_int,
            b.mean,
            b.error,
            b.tau_int,
            (a.mean - b.mean).abs() / sigma
        );
        assert!((a.mean - b.mean).abs() < 3.0 * sigma, "{name}");
    }
}

/// `--save-npy --npy-dtype f16`: the same chain as the f32 file, each value rounded to the
/// nearest f16 (relative error at most 2^-11, absolute 2^-25 among the subnormals), in half the
/// bytes.
#[test]
fn saved_chain_in_half_precision() {
    let run = trained("npy-f16", &config(2, 4, -1.0, 1.0, 2, "[4]", 1, 20));
    let save = |ty: FloatType, name: &str| {
        let p = run.join(name);
        let opts = SampleOptions {
            samples: 1500,
            burn_in: 500,
            seed: Some(3),
            batch: 1024,
            latest: false,
            save_npy: Some(p.clone()),
            npy_dtype: ty,
            shard: None,
            precision: None,
        };
        sample::run(gpu(), &run, &opts, |_| {}).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let hl = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        let header = std::str::from_utf8(&bytes[10..10 + hl])
            .unwrap()
            .to_string();
        (header, bytes[10 + hl..].to_vec())
    };
    let (h32, b32) = save(FloatType::F32, "chain32.npy");
    let (h16, b16) = save(FloatType::F16, "chain16.npy");
    assert!(
        h32.contains("'descr': '<f4'") && h32.contains("'shape': (1000, 4, 4)"),
        "{h32}"
    );
    assert!(
        h16.contains("'descr': '<f2'") && h16.contains("'shape': (1000, 4, 4)"),
        "{h16}"
    );
    assert_eq!(b16.len() * 2, b32.len());
    let x32: &[f32] = bytemuck::cast_slice(&b32);
    let x16: Vec<f32> = b16
        .chunks_exact(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    let mut worst = 0.0f64;
    for (&a, &b) in x32.iter().zip(&x16) {
        let err = (a as f64 - b as f64).abs();
        let tol = (a.abs() as f64 * 2f64.powi(-11)).max(2f64.powi(-25));
        worst = worst.max(err / tol);
        assert!(err <= tol, "{a} saved as {b}");
    }
    eprintln!("CHECK f16 chain: worst rounding {worst:.3} of the bound");
}
