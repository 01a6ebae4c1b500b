//! Property-based fuzzing (proptest) of everything that reads user input: the config parser,
//! the Julia-expression parser, and the checkpoint loader. Each must never panic, and whatever
//! it accepts must satisfy the invariants the rest of the program relies on.
//!
//! CI runs a few hundred cases of each. For a long run, set FUZZ_SECONDS:
//!   FUZZ_SECONDS=600 cargo test --release --test fuzz -- --nocapture --test-threads 1

use gomaflow_wgpu::checkpoint::{self, Checkpoint};
use gomaflow_wgpu::config::{Config, MAX_SITES, PriorKind, Schedule, TABLES, julia};
use gomaflow_wgpu::flow::FlowSpec;
use gomaflow_wgpu::lattice::Lattice;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use std::path::Path;
use std::time::{Duration, Instant};

const TUTORIAL: &str = include_str!("../configs/phi4_2d_L8.toml");

/// Run `test` on values of `strategy`: CI's few hundred cases, or for FUZZ_SECONDS seconds.
fn drive<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let seconds: Option<u64> = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok());
    let cfg = RunnerConfig {
        cases: if seconds.is_some() { 2000 } else { 300 },
        failure_persistence: None,
        ..Default::default()
    };
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        let mut runner = TestRunner::new(cfg.clone());
        if let Err(e) = runner.run(&strategy, &test) {
            panic!("{name}: {e}");
        }
        total += cfg.cases as u64;
        match seconds {
            Some(s) if start.elapsed() < Duration::from_secs(s) => continue,
            _ => break,
        }
    }
    eprintln!(
        "CHECK fuzz {name}: {total} cases in {:.0} s, no failure",
        start.elapsed().as_secs_f64()
    );
}

/// A TOML value of any kind, including ones no key accepts.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}").replace("inf", "inf").replace("NaN", "nan")),
        prop_oneof![
            Just("nan"),
            Just("-inf"),
            Just("+inf"),
            Just("0"),
            Just("-0.0"),
            Just("1e308")
        ]
        .prop_map(String::from),
        "[ -~]{0,30}".prop_map(|s| format!("{s:?}")),
        julia_text().prop_map(|s| format!("{s:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        proptest::collection::vec(any::<i32>(), 0..6).prop_map(|v| format!("{v:?}")),
        Just("{ a = 1 }".to_string()),
        Just("[[x]]".to_string()),
    ]
}

/// Every key the config knows, and one it does not.
fn keys() -> Vec<&'static str> {
    let mut k: Vec<&str> = TABLES
        .iter()
        .flat_map(|(_, keys)| keys.iter().copied())
        .collect();
    k.push("bogus");
    k
}

/// The tutorial config with keys set to arbitrary values, lines dropped, and bytes damaged.
fn config_text() -> impl Strategy<Value = String> {
    let edits =
        proptest::collection::vec((0..40usize, prop::sample::select(keys()), value()), 0..5);
    let drops = proptest::collection::vec(0..40usize, 0..3);
    let bytes = proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3);
    (edits, drops, bytes).prop_map(|(edits, drops, bytes)| {
        let mut lines: Vec<String> = TUTORIAL.lines().map(String::from).collect();
        for (at, key, v) in edits {
            let at = at % lines.len();
            // Replace the key where it is set, else insert it somewhere.
            match lines
                .iter()
                .position(|l| l.starts_with(&format!("{key} =")))
            {
                Some(i) => lines[i] = format!("{key} = {v}"),
                None => lines.insert(at, format!("{key} = {v}")),
            }
        }
        for d in drops {
            if !lines.is_empty() {
                let i = d % lines.len();
                lines.remove(i);
            }
        }
        let mut s = lines.join("\n").into_bytes();
        for (i, b) in bytes {
            if !s.is_empty() {
                let k = i.index(s.len());
                s[k] = b;
            }
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

#[test]
fn fuzz_config_parser() {
    drive("config parser", config_text(), |text| {
        match Config::parse(&text, Path::new("fuzz.toml")) {
            Ok(c) => {
                let p = &c.physical;
                prop_assert!(p.l >= 2 && p.l % 2 == 0 && (1..=4).contains(&p.nd));
                prop_assert!((p.l as u128).pow(p.nd as u32) <= MAX_SITES as u128);
                prop_assert!(p.m2.is_finite() && p.lam >= 0.0 && (p.lam > 0.0 || p.m2 > 0.0));
                prop_assert!(c.model.kernel_size % 2 == 1 && c.model.n_layers >= 1);
                prop_assert!(c.model.hidden_sizes.iter().all(|&h| (1..=128).contains(&h)));
                let t = &c.training;
                prop_assert!(
                    (1..=65535).contains(&t.batchsize) && t.epochs >= 1 && t.iterations >= 1
                );
                prop_assert!(t.base_lr > 0.0 && t.base_lr.is_finite());
                prop_assert!(t.eval_samples >= 1024 && t.eval_batchsize >= 1);
                for e in [1, 2, 1000] {
                    prop_assert!(c.lr(e) > 0.0 && c.lr(e).is_finite());
                }
                // What it accepts, it writes back in a form it accepts again.
                let again = Config::parse(&c.to_toml(), Path::new("fuzz.toml"));
                prop_assert!(again.is_ok(), "{:?}", again.err());
            }
            Err(e) => prop_assert!(format!("{e:#}").starts_with("fuzz.toml"), "{e:#}"),
        }
        Ok(())
    });
}

/// Strings made of the Julia parser's vocabulary, and anything else.
fn julia_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "Normal",
            "Potential",
            "Step",
            "{Float32}",
            "{Float64}",
            "{Int}",
            "(",
            ")",
            "[",
            "]",
            ",",
            ";",
            "=",
            "m²",
            "λ",
            "xmin",
            "xmax",
            "f0",
            "e",
            ".",
            "-",
            "+",
            "0.f0",
            "1.f0",
            "-4f0",
            "8f0",
            "1e-3",
            "200",
            "1500",
            "0.5f0",
            " ",
            "²",
            "nan",
            "Inf"
        ])
        .prop_map(String::from),
        any::<f32>().prop_map(|f| f.to_string()),
        "\\PC{0,3}",
    ];
    proptest::collection::vec(token, 0..14).prop_map(|v| v.concat())
}

#[test]
fn fuzz_julia_parser() {
    drive("Julia-string parser", julia_text(), |s| {
        if let Ok(p) = julia::prior(&s) {
            match p {
                PriorKind::Normal { mu, sigma } => {
                    prop_assert!(mu.is_finite() && sigma > 0.0 && sigma.is_finite())
                }
                PriorKind::Potential {
                    m2,
                    lam,
                    xmin,
                    xmax,
                } => {
                    prop_assert!(
                        m2.is_finite()
                            && lam >= 0.0
                            && lam.is_finite()
                            && xmin < xmax
                            && xmax.is_finite()
                    )
                }
            }
        }
        if let Ok(Schedule::Step { lr0, decay, steps }) = julia::schedule(&s) {
            prop_assert!(
                lr0 > 0.0 && decay > 0.0 && !steps.is_empty() && steps.iter().all(|&n| n >= 1)
            );
        }
        let _ = julia::number(&s);
        Ok(())
    });
}

fn small_flow() -> FlowSpec {
    FlowSpec::new(Lattice::new(2, 4), 2, vec![3], 3, true)
}

#[test]
fn fuzz_checkpoint_loader() {
    let flow = small_flow();
    let dir = std::env::temp_dir().join(format!("gomaflow-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good_path = dir.join("good.safetensors");
    let n = flow.param_len;
    checkpoint::save(
        &good_path,
        &flow,
        &Checkpoint {
            params: flow.init_params(1),
            adam: Some((vec![0.5; n], vec![0.25; n])),
            step: 7,
            evaluated_epochs: 1,
            best_acceptance: 0.3,
            elapsed_s: 1.0,
        },
    )
    .unwrap();
    let good = std::fs::read(&good_path).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let damage = (
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        proptest::option::of(any::<prop::sample::Index>()),
        proptest::collection::vec(any::<u8>(), 0..3),
        any::<bool>(),
    );
    let path = dir.join("fuzzed.safetensors");
    drive(
        "checkpoint loader",
        damage,
        |(flips, cut, tail, in_header)| {
            let mut b = good.clone();
            for (i, v) in flips {
                // Half the time aim at the JSON header, where the structure lives.
                let k = if in_header {
                    8 + i.index(header_len)
                } else {
                    i.index(b.len())
                };
                b[k] = v;
            }
            if let Some(c) = cut {
                b.truncate(c.index(b.len()));
            }
            b.extend(tail);
            std::fs::write(&path, &b).unwrap();
            match checkpoint::load(&path, &flow, true) {
                Ok(ck) => {
                    prop_assert_eq!(ck.params.len(), n);
                    prop_assert!(ck.params.iter().all(|v| v.is_finite()));
                    if let Some((m, v)) = ck.adam {
                        prop_assert!(m.len() == n && v.len() == n);
                    }
                }
                Err(e) => prop_assert!(format!("{e:#}").contains("fuzzed.safetensors"), "{e:#}"),
            }
            Ok(())
        },
    );
}

/// Checkpoints written before the parameters were aligned hold Adam's moments packed end to
/// end; they must load into the aligned layout with every moment beside its parameter.
#[test]
fn checkpoint_with_packed_adam_moments_loads() {
    let flow = small_flow();
    assert!(flow.n_params() < flow.param_len, "the test needs padding");
    let dir = std::env::temp_dir().join(format!("gomaflow-packed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("old.safetensors");
    let packed: Vec<f32> = (0..flow.n_params()).map(|i| i as f32 + 1.0).collect();
    let squared: Vec<f32> = packed.iter().map(|v| v * v).collect();
    checkpoint::save(
        &path,
        &flow,
        &Checkpoint {
            params: flow.init_params(1),
            adam: Some((packed.clone(), squared)),
            step: 3,
            evaluated_epochs: 0,
            best_acceptance: 0.0,
            elapsed_s: 0.0,
        },
    )
    .unwrap();
    let ck = checkpoint::load(&path, &flow, true).unwrap();
    let (m, v) = ck.adam.expect("moments kept");
    assert_eq!(m.len(), flow.param_len);
    // Walk the aligned layout: each conv's slot holds the next run of packed values, then zeros.
    let mut next = 1.0f32;
    let mut covered = vec![false; flow.param_len];
    for c in flow.blocks() {
        for i in c.params() {
            assert_eq!((m[i], v[i]), (next, next * next), "index {i}");
            covered[i] = true;
            next += 1.0;
        }
    }
    assert!(m.iter().zip(&covered).all(|(x, c)| *c || *x == 0.0));
    std::fs::remove_dir_all(&dir).ok();
}
