//! The config format (src/config.rs): GomalizingFlow's TOML with its Julia-expression strings,
//! every shipped config, and clear errors that name the file, the key and what is accepted.

use gomaflow_wgpu::config::{Config, PriorKind, Schedule, TABLES, julia};
use std::path::Path;

const TUTORIAL: &str = include_str!("../configs/phi4_2d_L8.toml");

fn parse(text: &str) -> anyhow::Result<Config> {
    Config::parse(text, Path::new("test.toml"))
}

/// The tutorial config with one line replaced (or appended to a table).
fn with(key_line: &str, new: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    for line in TUTORIAL.lines() {
        if !done && line.trim_start().starts_with(key_line) {
            out.push_str(new);
            done = true;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    assert!(done, "no line starting with {key_line}");
    out
}

fn error_of(text: &str) -> String {
    format!("{:#}", parse(text).expect_err("must be rejected"))
}

#[test]
fn julia_numbers() {
    for (s, v) in [
        ("0.f0", 0.0),
        ("1.f0", 1.0),
        ("-4f0", -4.0),
        ("8f0", 8.0),
        ("5.113f0", 5.113),
        ("0.001f0", 0.001),
        ("1e-3", 0.001),
        ("1f-3", 0.001),
        ("-0.53", -0.53),
        ("8", 8.0),
        ("2.", 2.0),
    ] {
        assert_eq!(julia::number(s).unwrap(), v, "{s}");
    }
    for bad in ["", "f0", "1..2", "abc", "1e", "--1"] {
        assert!(julia::number(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn julia_priors_and_schedules() {
    assert_eq!(
        julia::prior("Normal{Float32}(0.f0, 1.f0)").unwrap(),
        PriorKind::Normal {
            mu: 0.0,
            sigma: 1.0
        }
    );
    assert_eq!(
        julia::prior("Potential{Float32}(; m²=-4f0, λ=8f0)").unwrap(),
        PriorKind::Potential {
            m2: -4.0,
            lam: 8.0,
            xmin: -2.0,
            xmax: 2.0
        }
    );
    assert_eq!(
        julia::prior("Potential{Float32}(; m²=-0.53, λ=8.0, xmin=-3, xmax=3)").unwrap(),
        PriorKind::Potential {
            m2: -0.53,
            lam: 8.0,
            xmin: -3.0,
            xmax: 3.0
        }
    );
    for bad in [
        "Normal{Float16}(0, 1)",
        "Normal(0, -1)",
        "Potential(; m²=1)",
        "Uniform(0, 1)",
        "Potential{Float32}(; m²=-4f0, λ=8f0",
        "Normal(0, 1) + 1",
        "Potential(; m²=1, λ=1, k=2)",
    ] {
        assert!(julia::prior(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(julia::schedule("").unwrap(), Schedule::Constant);
    let s = julia::schedule("Step(0.001f0, 0.5f0, [1500, 1500, 1500])").unwrap();
    // Boundaries 1500, 3000, 4500: epochs 1..=1500 at lr0, 1501..=3000 halved, and so on,
    // and no further decay after the last boundary.
    for (epoch, lr) in [
        (1, 1e-3),
        (1500, 1e-3),
        (1501, 5e-4),
        (3000, 5e-4),
        (3001, 2.5e-4),
        (4501, 1.25e-4),
        (9999, 1.25e-4),
    ] {
        assert!(
            (s.lr(0.123, epoch) - lr).abs() < 1e-15,
            "epoch {epoch}: {}",
            s.lr(0.123, epoch)
        );
    }
    assert_eq!(
        julia::schedule("Step(0.001f0, 0.1f0, [200])")
            .unwrap()
            .lr(0.0, 201),
        1e-3 * 0.1
    );
    for bad in [
        "Step(0.001, 0.1)",
        "Exp(0.001, 0.1)",
        "Step(0.001, 0.1, [0])",
        "Step(0.001, 0.1, [1.5])",
    ] {
        assert!(julia::schedule(bad).is_err(), "{bad:?} accepted");
    }
}

/// Every config this project ships parses, and keeps the GomalizingFlow tables.
#[test]
fn shipped_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    // configs/ and its subfolders (configs/combi/).
    let mut paths = vec![];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            paths.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            paths.push(path);
        }
    }
    for path in paths {
        if path.extension().is_some_and(|e| e == "toml") {
            let c = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            assert!(c.physical.l.is_multiple_of(2));
            // The resolved form round-trips.
            let again = Config::parse(&c.to_toml(), &path).unwrap();
            assert_eq!(again.physical, c.physical);
            assert_eq!(again.model, c.model);
            assert_eq!(again.training, c.training);
            n += 1;
        }
    }
    assert!(n >= 20, "only {n} configs in configs/");
}

#[test]
fn tutorial_values() {
    let c = parse(TUTORIAL).unwrap();
    assert_eq!(
        (c.physical.l, c.physical.nd, c.physical.m2, c.physical.lam),
        (8, 2, -4.0, 8.0)
    );
    assert_eq!(
        (
            c.model.n_layers,
            c.model.hidden_sizes.clone(),
            c.model.kernel_size
        ),
        (16, vec![8, 8], 3)
    );
    assert_eq!(
        (
            c.training.batchsize,
            c.training.epochs,
            c.training.iterations
        ),
        (64, 25, 100)
    );
    assert_eq!(c.training.base_lr, 1e-3);
    // Our keys, absent from GomalizingFlow's configs, keep its model.
    assert_eq!(c.model.combi, None);
    assert!(!c.model.z2_equivariant && !c.model.identity_init);
    assert_eq!(c.model.spline_bins, 0);
}

#[test]
fn errors_name_file_key_and_what_is_accepted() {
    let cases: Vec<(String, &[&str])> = vec![
        (
            with("L = ", "L = 7"),
            &["test.toml", "[physical].L", "even"],
        ),
        (
            with("L = ", "L = 0"),
            &["[physical].L", "even integer >= 2"],
        ),
        (with("L = ", "L = \"8\""), &["[physical].L", "integer"]),
        (with("Nd = ", "Nd = 5"), &["[physical].Nd", "1, 2, 3 or 4"]),
        (
            with("kernel_size = ", "kernel_size = 4"),
            &["[model].kernel_size", "odd"],
        ),
        (
            with("batchsize = ", "batchsize = -3"),
            &["[training].batchsize", "1..=65535"],
        ),
        (
            with("base_lr = ", "base_lr = -0.1"),
            &["[training].base_lr", "> 0"],
        ),
        (
            with("epochs = ", "epochs = 0"),
            &["[training].epochs", ">= 1"],
        ),
        (with("lam = ", "lam = -1.0"), &["[physical].lam", ">= 0"]),
        (
            with("prior = ", "prior = \"Cauchy(0, 1)\""),
            &["[training].prior", "Normal{Float32}(0.f0, 1.f0)"],
        ),
        (
            with("lr_scheduler = ", "lr_scheduler = \"Cosine(1)\""),
            &["[training].lr_scheduler", "Step("],
        ),
        (with("opt = ", "opt = \"SGD\""), &["[training].opt", "Adam"]),
        (
            with("use_bn = ", "use_bn = true"),
            &["[model].use_bn", "false"],
        ),
        (
            with("hidden_sizes = ", "hidden_sizes = [8, 0]"),
            &["[model].hidden_sizes", "1..=128"],
        ),
        (with("inC = ", "inC = 2"), &["[model].inC", "must be 1"]),
        // Unknown keys and wrong types are serde's errors, with the file and the key named.
        (
            with("seed = 12345", "seed = 12345\nbatch_size = 64"),
            &[
                "test.toml",
                "[training].batch_size",
                "unknown field",
                "`batchsize`",
            ],
        ),
        (
            format!("{TUTORIAL}\n[extra]\nx = 1\n"),
            &[
                "test.toml",
                "[extra]",
                "unknown field `extra`",
                "`physical`",
            ],
        ),
        (
            with("hidden_sizes = ", "hidden_sizes = [8, \"8\"]"),
            &["test.toml", "[model].hidden_sizes", "1..=128"],
        ),
        (
            with("[model]", "[[model]]"),
            &["test.toml", "model", "expected a table"],
        ),
        (
            "[physical\nL = 8".to_string(),
            &["test.toml", "malformed TOML"],
        ),
        (
            "[physical]\nL = 8\nNd = 2\nM2 = -4.0\n".to_string(),
            &["missing key [physical].lam"],
        ),
        (
            with("[device]", "[device]\ndevice_id = -2"),
            &["[device].device_id", "-1"],
        ),
        (
            with("[device]", "[device]\nprecision = \"f64\""),
            &[
                "test.toml",
                "[device].precision",
                "\"f32\" or \"f16\"",
                "\"f64\"",
            ],
        ),
        // A combinational convolution needs 1 <= r < Nd (the tutorial is 2D).
        (
            with("use_bn = ", "use_bn = false\ncombi_r = 2"),
            &[
                "test.toml",
                "[model].combi_r",
                "1 <= r < Nd",
                "[physical].Nd = 2",
            ],
        ),
        (
            with("use_bn = ", "use_bn = false\ncombi_r = -1"),
            &["[model].combi_r", "0 (the full convolution)"],
        ),
        (
            with(
                "use_bn = ",
                "use_bn = false\ncombi_r = 1\ncombi_activation = \"mean\"",
            ),
            &["[model].combi_activation", "\"branch\"", "\"last\""],
        ),
        (
            with("use_bn = ", "use_bn = false\nspline_bins = 1"),
            &["test.toml", "[model].spline_bins", "2..=32", "got 1"],
        ),
        (
            with(
                "use_bn = ",
                "use_bn = false\nspline_bins = 8\nspline_bound = 0",
            ),
            &["[model].spline_bound", "B > 0", "got 0"],
        ),
        (
            with(
                "use_bn = ",
                "use_bn = false\nspline_bins = 8\nz2_equivariant = true",
            ),
            &["[model].spline_bins", "z2_equivariant = false"],
        ),
    ];
    for (text, want) in cases {
        let e = error_of(&text);
        for w in want {
            assert!(e.contains(w), "error {e:?} lacks {w:?}");
        }
    }
}

/// `TABLES` names exactly the keys the config's tables read: the resolved form writes each of
/// them, and a value of the wrong type for each is refused with the key and what it accepts.
#[test]
fn tables_lists_every_key() {
    // (precision is written where it is not the default f32.)
    let c = parse(&with(
        "[device]",
        "[device]\ndevice_id = 0\nprecision = \"f16\"",
    ))
    .unwrap();
    let written: toml::Table = toml::from_str(&c.to_toml()).unwrap();
    let keys_of = |t: &toml::Table| {
        t.iter()
            .flat_map(|(name, v)| {
                let table = v.as_table().unwrap();
                table.keys().map(move |k| format!("[{name}].{k}"))
            })
            .collect::<std::collections::BTreeSet<_>>()
    };
    let listed = TABLES
        .iter()
        .flat_map(|(name, keys)| keys.iter().map(move |k| format!("[{name}].{k}")))
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(keys_of(&written), listed);
    let date: toml::value::Datetime = "1979-05-27".parse().unwrap();
    for (name, keys) in TABLES {
        for key in *keys {
            let mut doc = written.clone();
            doc[*name]
                .as_table_mut()
                .unwrap()
                .insert(key.to_string(), toml::Value::Datetime(date));
            let text = toml::to_string(&doc).unwrap();
            if (*name, *key) == ("config", "version") {
                // Any value: GomalizingFlow's configs only carry it along.
                assert_eq!(parse(&text).unwrap().version, "1979-05-27");
                continue;
            }
            let e = error_of(&text);
            for w in ["test.toml", &format!("[{name}].{key}"), "accepted: "] {
                assert!(e.contains(w), "error {e:?} lacks {w:?}");
            }
            assert!(!e.contains("unknown"), "{e}");
        }
    }
}
