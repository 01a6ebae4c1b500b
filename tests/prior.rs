//! The prior (src/kernels/prior.rs, shaders/prior.wgsl): the GPU's Philox draws against the
//! f64 reference of the same counters, their distribution, and reproducibility.
//! Tolerance: Box-Muller in f32 (log, sqrt, cos/sin of up to 2 pi) is good to a few 1e-7
//! absolute for |z| < 6: we use 1e-5; log r sums V of them: 4 V 2^-24 relative.

use crate::common::*;
use gomaflow_wgpu::config::PriorKind;
use gomaflow_wgpu::kernels::prior::{Prior, PriorSpec, potential, potential_constants, reference};
use gomaflow_wgpu::rng::stream;

const U: f64 = 1.0 / 16_777_216.0;
const NORMAL: PriorKind = PriorKind::Normal {
    mu: 0.0,
    sigma: 1.0,
};

/// Draw `batch` samples of `volume` sites with draw index `draw`.
fn draw(
    kind: &PriorKind,
    seed: u64,
    stream_id: u32,
    draw: u32,
    batch: usize,
    volume: usize,
) -> (Vec<f64>, Vec<f64>) {
    let g = gpu();
    let counter = g.upload("counter", &[draw, 0u32, 0, 0]).unwrap();
    let z = g.storage("z", batch * volume).unwrap();
    let logq = g.storage("logq", batch).unwrap();
    let spec = PriorSpec {
        batch,
        volume,
        seed,
        stream: stream_id,
        kind: kind.clone(),
    };
    let p = Prior::new(g, spec, &counter, &z, &logq).unwrap();
    g.run(&[&p.sample]).unwrap();
    (read(&z), read(&logq))
}

#[test]
fn normal_matches_reference() {
    // Volumes that are and are not multiples of 4 (the generator's block).
    for (volume, batch) in [(64, 3), (6, 5), (4096, 2), (2, 7)] {
        for kind in [
            NORMAL,
            PriorKind::Normal {
                mu: 0.5,
                sigma: 2.0,
            },
        ] {
            let (z, lr) = draw(&kind, 12345, stream::TRAIN, 17, batch, volume);
            let (z_ref, lr_ref) = reference::sample(&kind, 12345, stream::TRAIN, 17, batch, volume);
            let tol = 4.0 * volume as f64 * U + 1e-6;
            check(&format!("prior {kind:?} V={volume} z"), &z, &z_ref, 1e-5);
            check(
                &format!("prior {kind:?} V={volume} log r"),
                &lr,
                &lr_ref,
                tol,
            );
            // log r is the density of the numbers actually drawn.
            let own: Vec<f64> = z
                .chunks(volume)
                .map(|c| reference::log_density(&kind, c))
                .collect();
            check(
                &format!("prior {kind:?} V={volume} log r of own z"),
                &lr,
                &own,
                tol,
            );
        }
    }
}

#[test]
fn normal_moments() {
    let (batch, volume) = (64, 4096);
    let (z, _) = draw(&NORMAL, 2021, stream::TRAIN, 0, batch, volume);
    let n = z.len() as f64;
    let mean = z.iter().sum::<f64>() / n;
    let var = z.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let m4 = z.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n;
    eprintln!(
        "CHECK prior moments over {n} draws: mean {mean:.5}, variance {var:.5}, 4th moment {m4:.4}"
    );
    // 5 sigma: sd(mean) = 1/sqrt(n), sd(var) = sqrt(2/n), sd(m4) = sqrt(96/n).
    assert!(mean.abs() < 5.0 / n.sqrt(), "mean {mean}");
    assert!((var - 1.0).abs() < 5.0 * (2.0 / n).sqrt(), "variance {var}");
    assert!(
        (m4 - 3.0).abs() < 5.0 * (96.0 / n).sqrt(),
        "fourth moment {m4}"
    );
    // Neighbouring sites are uncorrelated.
    let c: f64 = z.windows(2).map(|w| w[0] * w[1]).sum::<f64>() / (n - 1.0);
    assert!(c.abs() < 5.0 / n.sqrt(), "lag-1 correlation {c}");
}

#[test]
fn reproducible() {
    for kind in [
        NORMAL,
        PriorKind::Potential {
            m2: -4.0,
            lam: 8.0,
            xmin: -2.0,
            xmax: 2.0,
        },
    ] {
        let a = draw(&kind, 7, stream::TRAIN, 3, 4, 64);
        let b = draw(&kind, 7, stream::TRAIN, 3, 4, 64);
        assert_eq!(a.0, b.0, "same seed and counter must give the same bits");
        let other_seed = draw(&kind, 8, stream::TRAIN, 3, 4, 64);
        let other_draw = draw(&kind, 7, stream::TRAIN, 4, 4, 64);
        let other_stream = draw(&kind, 7, stream::EVAL, 3, 4, 64);
        for (name, o) in [
            ("seed", &other_seed),
            ("draw", &other_draw),
            ("stream", &other_stream),
        ] {
            let same = a.0.iter().zip(&o.0).filter(|(x, y)| x == y).count();
            assert!(
                same == 0,
                "another {name} repeated {same} of {} numbers",
                a.0.len()
            );
        }
        assert_ne!(a.0[..64], a.0[64..128], "samples of one batch must differ");
    }
}

/// GomalizingFlow's Potential prior: the GPU's rejection sampler takes the same decisions as the
/// f64 reference (but for f32 rounding at the acceptance boundary, at most 1 in 1000 sites), and
/// its draws follow exp(-v)/Z: a Kolmogorov-Smirnov test against the exact CDF.
#[test]
fn potential_prior() {
    for (m2, lam) in [(-4.0, 8.0), (1.0, 8.0), (-0.53, 8.0)] {
        let kind = PriorKind::Potential {
            m2,
            lam,
            xmin: -2.0,
            xmax: 2.0,
        };
        let (batch, volume) = (16, 4096);
        let (z, lr) = draw(&kind, 99, stream::TRAIN, 5, batch, volume);
        let (z_ref, _) = reference::sample(&kind, 99, stream::TRAIN, 5, batch, volume);
        let differ = z
            .iter()
            .zip(&z_ref)
            .filter(|(a, b)| (*a - *b).abs() > 1e-5)
            .count();
        eprintln!(
            "CHECK potential prior m2={m2}: {differ} of {} sites differ from the reference (allowed 0.1%)",
            z.len()
        );
        assert!(differ * 1000 <= z.len(), "{differ} sites differ");
        assert!(z.iter().all(|&x| (-2.0..=2.0).contains(&x)));
        let own: Vec<f64> = z
            .chunks(volume)
            .map(|c| reference::log_density(&kind, c))
            .collect();
        check(
            &format!("potential prior m2={m2} log r of own z"),
            &lr,
            &own,
            4.0 * volume as f64 * U,
        );

        // KS: the exact CDF by Simpson on a fine grid.
        let (vmin, log_norm) = potential_constants(m2, lam, -2.0, 2.0);
        let _ = vmin;
        let grid = 40_000;
        let h = 4.0 / grid as f64;
        let mut cdf = vec![0.0; grid + 1];
        for i in 1..=grid {
            let (a, b) = (-2.0 + (i - 1) as f64 * h, -2.0 + i as f64 * h);
            let f = |x: f64| (-potential(m2, lam, x) - log_norm).exp();
            cdf[i] = cdf[i - 1] + h / 6.0 * (f(a) + 4.0 * f(0.5 * (a + b)) + f(b));
        }
        let mut sorted = z.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let d = sorted
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let j = (((x + 2.0) / h) as usize).min(grid);
                let f = cdf[j];
                (f - i as f64 / n).abs().max((f - (i + 1) as f64 / n).abs())
            })
            .fold(0.0, f64::max);
        // Critical value at significance 1e-4: sqrt(-ln(5e-5) / 2) / sqrt(n) = 2.23 / sqrt(n);
        // the CDF grid adds at most h * max density.
        let crit = 2.23 / n.sqrt() + h * 2.0;
        eprintln!(
            "CHECK potential prior m2={m2}: KS distance {d:.2e} (critical {crit:.2e}), cdf(2) = {:.6}",
            cdf[grid]
        );
        assert!(
            (cdf[grid] - 1.0).abs() < 1e-6,
            "normalisation {}",
            cdf[grid]
        );
        assert!(d < crit, "KS distance {d} >= {crit}");
    }
}
