//! The prior (src/kernels/prior.rs, shaders/prior.wgsl): the GPU's Philox normals against the
//! f64 reference of the same counters, their mean and variance, and reproducibility.
//! Tolerance: Box-Muller in f32 (log, sqrt, cos/sin of up to 2 pi) is good to a few 1e-7
//! absolute for |z| < 6: we use 1e-5; log r sums V of them: 4 V 2^-24 relative.

mod common;
use common::*;
use gomaflow_wgpu::kernels::prior::{Prior, PriorSpec, reference, stream};

const U: f64 = 1.0 / 16_777_216.0;

/// Draw `batch` samples of `volume` sites with draw index `draw`.
fn draw(seed: u64, stream_id: u32, draw: u32, batch: usize, volume: usize) -> (Vec<f64>, Vec<f64>) {
    let g = gpu();
    let counter = g.upload("counter", &[draw, 0u32, 0, 0]).unwrap();
    let z = g.storage("z", batch * volume).unwrap();
    let logq = g.storage("logq", batch).unwrap();
    let p = Prior::new(
        g,
        PriorSpec {
            batch,
            volume,
            seed,
            stream: stream_id,
        },
        &counter,
        &z,
        &logq,
    )
    .unwrap();
    g.run(&[&p.sample]).unwrap();
    (read(&z), read(&logq))
}

#[test]
fn prior_matches_reference() {
    // Volumes that are and are not multiples of 4 (the generator's block).
    for (volume, batch) in [(64, 3), (6, 5), (4096, 2), (2, 7)] {
        let (z, lr) = draw(12345, stream::TRAIN, 17, batch, volume);
        let (z_ref, lr_ref) = reference::sample_normal(12345, stream::TRAIN, 17, batch, volume);
        check(&format!("prior V={volume} z"), &z, &z_ref, 1e-5);
        check(
            &format!("prior V={volume} log r"),
            &lr,
            &lr_ref,
            4.0 * volume as f64 * U + 1e-6,
        );
        // log r is the density of the numbers actually drawn.
        let own: Vec<f64> = z.chunks(volume).map(reference::log_normal).collect();
        check(
            &format!("prior V={volume} log r of own z"),
            &lr,
            &own,
            4.0 * volume as f64 * U + 1e-6,
        );
    }
}

#[test]
fn prior_moments() {
    let (batch, volume) = (64, 4096);
    let (z, _) = draw(2021, stream::TRAIN, 0, batch, volume);
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
fn prior_reproducible() {
    let a = draw(7, stream::TRAIN, 3, 4, 64);
    let b = draw(7, stream::TRAIN, 3, 4, 64);
    assert_eq!(a.0, b.0, "same seed and counter must give the same bits");
    let other_seed = draw(8, stream::TRAIN, 3, 4, 64);
    let other_draw = draw(7, stream::TRAIN, 4, 4, 64);
    let other_stream = draw(7, stream::EVAL, 3, 4, 64);
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
    // Samples of one batch differ from each other.
    assert_ne!(a.0[..64], a.0[64..128]);
}
