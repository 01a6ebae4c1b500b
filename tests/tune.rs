//! Tilings chosen by measurement (src/tune.rs). Every candidate tiling is a specialisation the
//! kernel tests check against the f64 reference (tests/conv.rs, `conv_every_tuning_candidate`);
//! here the tuner itself, each test on a device of its own (the tilings a tuner installs apply
//! to every kernel later built on its device): a second tuner reads the first one's cache and
//! measures nothing; a corrupt or foreign cache is ignored with a warning and rewritten; `off`
//! keeps the rules; a resumed run's recorded tilings are installed whatever the cache holds,
//! and a tape built with them trains to the same loss as one with the rules.

use crate::common::*;
use gomaflow_wgpu::config::PriorKind;
use gomaflow_wgpu::flow::FlowSpec;
use gomaflow_wgpu::gpu::{AdapterChoice, Gpu, Precision};
use gomaflow_wgpu::kernels::tiling::ConvTiling;
use gomaflow_wgpu::lattice::Lattice;
use gomaflow_wgpu::rng::stream;
use gomaflow_wgpu::tape::{Fusion, Mode, Tape, TapeSpec, can_fuse, conv_specs};
use gomaflow_wgpu::tune::{Choice, Record, Source, TuneMode, Tuner};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn own_gpu() -> Gpu {
    Gpu::new(&AdapterChoice::new(None, None)).unwrap_or_else(|e| panic!("{e:#}"))
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gomaflow-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A small training tape: 2D L 4, two couplings of [4, 4], batch 4, one launch per kernel.
fn small_spec() -> TapeSpec {
    TapeSpec {
        flow: FlowSpec::new(Lattice::new(2, 4), 2, vec![4, 4], 3, true),
        batch: 4,
        mode: Mode::Train,
        prior: PriorKind::Normal {
            mu: 0.0,
            sigma: 1.0,
        },
        seed: 5,
        stream: stream::TRAIN,
        m2: -4.0,
        lam: 8.0,
        lr: 1e-3,
        adam_betas: [0.9, 0.999],
        fusion: Fusion::Off,
        precision: Precision::F32,
    }
}

fn sources(t: &Tuner) -> Vec<Source> {
    t.choices.values().map(|c| c.source).collect()
}

#[test]
fn tuning_is_cached_and_reused() {
    let dir = scratch_dir("tune-cache");
    let cache = dir.join("tilings.json");
    let spec = small_spec();

    // First run: every convolution measured, installed and cached.
    let g = own_gpu();
    let n = conv_specs(&g, &spec).len();
    assert!(n >= 3, "{n} convolutions");
    let mut t = Tuner::with_cache(&g, TuneMode::Auto, Some(cache.clone()));
    let mut measured = 0;
    t.prepare(&spec, &mut |_, total, key| {
        if !key.is_empty() {
            measured += 1;
        }
        assert_eq!(total, n);
    })
    .unwrap();
    assert_eq!(measured, n);
    assert_eq!(sources(&t), vec![Source::Measured; n]);
    for (k, c) in &t.choices {
        assert_eq!(g.conv_tiling(k), Some(c.tiling), "{k}");
        assert!(c.best_us.unwrap() <= c.rule_us.unwrap(), "{k}: {c:?}");
    }
    t.save_cache();
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert!(cache.exists());

    // Second run: everything from the cache, nothing measured.
    let g2 = own_gpu();
    let mut t2 = Tuner::with_cache(&g2, TuneMode::Auto, Some(cache.clone()));
    let mut calls = 0;
    t2.prepare(&spec, &mut |_, _, _| calls += 1).unwrap();
    assert_eq!(calls, 0);
    assert_eq!(sources(&t2), vec![Source::Cached; n]);
    for (k, c) in &t2.choices {
        assert_eq!(c.tiling, t.choices[k].tiling, "{k}");
        assert_eq!(g2.conv_tiling(k), Some(c.tiling), "{k}");
    }

    // A corrupt cache, then a foreign one: a warning, a new measurement, a readable cache.
    for bad in ["{ not json", r#"{"version": 99, "entries": {}}"#] {
        std::fs::write(&cache, bad).unwrap();
        let g3 = own_gpu();
        let mut t3 = Tuner::with_cache(&g3, TuneMode::Auto, Some(cache.clone()));
        assert_eq!(t3.warnings.len(), 1, "{bad}");
        assert!(
            t3.warnings[0].contains("ignoring the tiling cache"),
            "{:?}",
            t3.warnings
        );
        t3.prepare(&spec, &mut |_, _, _| {}).unwrap();
        assert_eq!(sources(&t3), vec![Source::Measured; n]);
        t3.save_cache();
        let again = Tuner::with_cache(&g3, TuneMode::Auto, Some(cache.clone()));
        assert!(again.warnings.is_empty(), "{:?}", again.warnings);
    }

    // Off: the rules, nothing installed, nothing measured.
    let g4 = own_gpu();
    let mut t4 = Tuner::with_cache(&g4, TuneMode::Off, Some(cache));
    t4.prepare(&spec, &mut |_, _, _| panic!("off measures nothing"))
        .unwrap();
    assert_eq!(sources(&t4), vec![Source::Rule; n]);
    for k in t4.choices.keys() {
        assert_eq!(g4.conv_tiling(k), None, "{k}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_installs_recorded_tilings() {
    let dir = scratch_dir("tune-resume");
    let spec = small_spec();
    let g = own_gpu();
    // A record unlike any rule: one sample per thread, one tap and one output channel per
    // weight-gradient thread, one sample per chunk.
    let odd = ConvTiling {
        samples_per_thread: 1,
        taps_per_thread: 1,
        couts_per_thread: 1,
        chunk: 1,
        branches_per_thread: 1,
        sites_per_thread: 1,
        forward_sites: 1,
    };
    let record: BTreeMap<String, Choice> = conv_specs(&g, &spec)
        .iter()
        .map(|s| {
            (
                s.tune_key(),
                Choice {
                    tiling: odd,
                    source: Source::Measured,
                    rule_us: None,
                    best_us: None,
                },
            )
        })
        .collect();
    let path = dir.join("tilings.json");
    let record = Record {
        convolutions: record,
        fusion: BTreeMap::new(),
    };
    std::fs::write(&path, serde_json::to_string(&record).unwrap()).unwrap();

    // Even asked to measure everything, a resumed run takes the record.
    let mut t = Tuner::with_cache(&g, TuneMode::Full, Some(dir.join("cache.json")));
    t.resume(&path).unwrap();
    t.prepare(&spec, &mut |_, _, key| {
        assert!(key.is_empty(), "measured {key}")
    })
    .unwrap();
    assert_eq!(
        sources(&t),
        vec![Source::Recorded; record.convolutions.len()]
    );
    for s in conv_specs(&g, &spec) {
        assert_eq!(s.tiling, odd, "{}", s.tune_key());
    }
    // A record that is not one is an error that names the file.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "[1, 2]").unwrap();
    let e = Tuner::with_cache(&g, TuneMode::Auto, None)
        .resume(&bad)
        .unwrap_err();
    assert!(format!("{e:#}").contains("bad.json"), "{e:#}");

    // The recorded tilings train as the rules do (other summation orders: equal to rounding).
    let rules = own_gpu();
    let mut losses = vec![];
    for dev in [&g, &rules] {
        let params = dev.upload_params(&spec.flow.init_params(3)).unwrap();
        let counter = dev.upload("counter", &[0u32; 4]).unwrap();
        let tape = Tape::new(dev, spec.clone(), &params, &counter).unwrap();
        for _ in 0..3 {
            tape.submit_step(dev);
        }
        dev.wait().unwrap();
        let metrics: Vec<f64> = dev
            .read::<f32>(&tape.metrics)
            .unwrap()
            .iter()
            .map(|&x| x as f64)
            .collect();
        losses.push(metrics[0]);
    }
    check(
        "loss after 3 steps, recorded tilings vs rules",
        &losses[..1],
        &losses[1..],
        1e-5,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under `Fusion::Auto`, whole layers against one launch per kernel is measured once, installed
/// (the tape built next follows it, and only the convolutions it runs per kernel are tuned),
/// cached, and read back; a tape whose fusion is forced is not measured.
#[test]
fn whole_layers_or_per_kernel_is_measured_and_cached() {
    let dir = scratch_dir("tune-fusion");
    let cache = dir.join("tilings.json");
    let spec = TapeSpec {
        fusion: Fusion::Auto,
        ..small_spec()
    };
    let key = spec.fusion_key();
    let g = own_gpu();
    assert!(can_fuse(&g, &spec));
    let mut t = Tuner::with_cache(&g, TuneMode::Auto, Some(cache.clone()));
    t.prepare(&spec, &mut |_, _, _| {}).unwrap();
    let c = t.fusion[&key].clone();
    assert_eq!(c.source, Source::Measured);
    assert!(c.best_ms.unwrap() <= c.rule_ms.unwrap(), "{c:?}");
    assert_eq!(g.fusion_choice(&key), Some(c.whole_layers));
    let params = g.upload_params(&spec.flow.init_params(1)).unwrap();
    let counter = g.upload("counter", &[0u32; 4]).unwrap();
    let tape = Tape::new(&g, spec.clone(), &params, &counter).unwrap();
    assert_eq!(tape.fused_layers(), c.whole_layers);
    // Whole layers leave no convolution per kernel (the tutorial-sized layers all fit).
    assert_eq!(
        t.choices.is_empty(),
        c.whole_layers,
        "{:?}",
        t.choices.keys()
    );
    t.save_cache();

    let g2 = own_gpu();
    let mut t2 = Tuner::with_cache(&g2, TuneMode::Auto, Some(cache));
    t2.prepare(&spec, &mut |_, _, key| panic!("measured {key}"))
        .unwrap();
    assert_eq!(t2.fusion[&key].source, Source::Cached);
    assert_eq!(t2.fusion[&key].whole_layers, c.whole_layers);
    assert_eq!(g2.fusion_choice(&key), Some(c.whole_layers));
    let forced = TapeSpec {
        fusion: Fusion::On,
        batch: 3,
        ..spec
    };
    t2.prepare(&forced, &mut |_, _, _| {}).unwrap();
    assert!(!t2.fusion.contains_key(&forced.fusion_key()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An f16 tape's convolutions are tuned as f16 kernels (the scratch buffers in their storage
/// types): their keys say so, apart from f32's (whose keys are as before f16 existed), and
/// the tape built next uses what was measured.
#[test]
fn f16_kernels_are_tuned_as_f16() {
    let dir = scratch_dir("tune-f16");
    let g = own_gpu();
    let f32_spec = small_spec();
    let spec = TapeSpec {
        precision: Precision::F16,
        ..small_spec()
    };
    let keys =
        |s: &TapeSpec| -> Vec<String> { conv_specs(&g, s).iter().map(|c| c.tune_key()).collect() };
    assert!(keys(&f32_spec).iter().all(|k| !k.contains("f16")));
    assert!(keys(&spec).iter().all(|k| k.ends_with(", f16 storage")));
    let mut t = Tuner::with_cache(&g, TuneMode::Auto, Some(dir.join("tilings.json")));
    t.prepare(&spec, &mut |_, _, _| {}).unwrap();
    assert_eq!(sources(&t), vec![Source::Measured; keys(&spec).len()]);
    for s in conv_specs(&g, &spec) {
        assert_eq!(
            s.tiling,
            t.choices[&s.tune_key()].tiling,
            "{}",
            s.tune_key()
        );
    }
    let params = g.upload_params(&spec.flow.init_params(3)).unwrap();
    let counter = g.upload("counter", &[0u32; 4]).unwrap();
    let tape = Tape::new(&g, spec, &params, &counter).unwrap();
    tape.submit_step(&g);
    g.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
