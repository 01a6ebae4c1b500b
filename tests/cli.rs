//! The binary as a user runs it: every shipped config passes `--dry-run`; each class of bad
//! input ends in one clear message (naming the file, the field and what is accepted) and a
//! non-zero exit, never a panic; faults (divergence, Ctrl-C, kill -9) lose nothing.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gomaflow-wgpu"));
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A failure with a message containing every one of `want`, and no panic.
fn fails_cleanly(o: &Output, want: &[&str]) {
    let t = text(o);
    assert!(!o.status.success(), "succeeded: {t}");
    assert!(
        !t.contains("panicked") && !t.contains("backtrace") && !t.contains("internal error"),
        "{t}"
    );
    for w in want {
        assert!(t.contains(w), "message lacks {w:?}:\n{t}");
    }
}

fn small(dir: &Path, name: &str, epochs: u64, extra: &str) -> PathBuf {
    let p = dir.join(name);
    let mut c = config(2, 4, -4.0, 8.0, 2, "[4]", epochs, 20);
    if !extra.is_empty() {
        c = c.replace("lr_scheduler = \"\"", extra);
    }
    std::fs::write(&p, c).unwrap();
    p
}

#[test]
fn devices_lists_an_adapter() {
    let o = run(&["devices"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("[0]") && t.contains("backend") && t.contains("max storage binding"),
        "{t}"
    );
}

#[test]
fn every_shipped_config_dry_runs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut paths = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            paths.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            paths.push(p);
        }
    }
    for p in paths {
        let o = run(&["train", p.to_str().unwrap(), "--dry-run"]);
        assert!(o.status.success(), "{}: {}", p.display(), text(&o));
        assert!(text(&o).contains("parameters"));
        // A combinational variant says so, with its parameter count (DESIGN's table).
        let name = p.file_stem().unwrap().to_str().unwrap();
        if name.ends_with("_3C1") {
            let t = text(&o);
            assert!(
                t.contains("combinational convolutions 3C1") && t.contains("13536"),
                "{t}"
            );
        }
    }
}

#[test]
fn bad_config_files() {
    let dir = tmpdir("cli-config");
    let cases: &[(&str, &[&str])] = &[
        ("[physical\nL = 8\n", &["malformed TOML"]),
        (
            "[physical]\nL = 8\nNd = 2\nM2 = -4.0\nlam = 8.0\nlattice = 3\n",
            &["[physical].lattice", "unknown field", "expected one of `L`"],
        ),
        (
            "[physical]\nL = \"eight\"\nNd = 2\nM2 = -4.0\nlam = 8.0\n",
            &["[physical].L", "even integer"],
        ),
        (
            "[physical]\nL = 7\nNd = 2\nM2 = -4.0\nlam = 8.0\n",
            &["[physical].L", "even"],
        ),
        (
            "[physical]\nL = 8\nNd = 5\nM2 = -4.0\nlam = 8.0\n",
            &["[physical].Nd", "1, 2, 3 or 4"],
        ),
        (
            "[physical]\nL = 8\nNd = 2\nM2 = -4.0\nlam = 8.0\n[model]\nkernel_size = 2\n",
            &["[model].kernel_size", "odd"],
        ),
        (
            "[physical]\nL = 8\nNd = 2\nM2 = -4.0\nlam = 8.0\n[training]\nbatchsize = -1\n",
            &["[training].batchsize"],
        ),
        (
            "[physical]\nL = 8\nNd = 2\nM2 = -4.0\nlam = 8.0\n[training]\nprior = \"Normal{Float32}(0.f0\"\n",
            &["[training].prior", "not understood"],
        ),
    ];
    for (i, (content, want)) in cases.iter().enumerate() {
        let p = dir.join(format!("bad{i}.toml"));
        std::fs::write(&p, content).unwrap();
        let o = run(&["train", p.to_str().unwrap(), "--dry-run"]);
        let mut w = want.to_vec();
        let name = format!("bad{i}.toml");
        w.push(&name);
        fails_cleanly(&o, &w);
    }
    fails_cleanly(
        &run(&["train", "/no/such/config.toml"]),
        &["cannot read config file", "/no/such/config.toml"],
    );
}

#[test]
fn bad_flags() {
    fails_cleanly(&run(&["sample", "/tmp", "--samples", "0"]), &["--samples"]);
    fails_cleanly(&run(&["train", "x.toml", "--epochs", "0"]), &["--epochs"]);
    fails_cleanly(&run(&["hmc", "x.toml", "--chains", "0"]), &["--chains"]);
    fails_cleanly(
        &run(&["sample", "/tmp", "--npy-dtype", "f16"]),
        &["--save-npy"],
    );
    fails_cleanly(
        &run(&[
            "sample",
            "/tmp",
            "--save-npy",
            "x.npy",
            "--npy-dtype",
            "f64",
        ]),
        &["--npy-dtype", "f32", "f16"],
    );
    for bad in ["4/4", "1", "a/b", "0/0"] {
        fails_cleanly(
            &run(&["sample", "/tmp", "--shard", bad]),
            &["--shard", "expected I/N with 0 <= I < N"],
        );
    }
    fails_cleanly(
        &run(&["train", "x.toml", "--no-such-flag"]),
        &["--no-such-flag"],
    );
    fails_cleanly(
        &run(&["train", "x.toml", "--precision", "f64"]),
        &["--precision", "f32", "f16"],
    );
}

/// `--precision f16` is recorded in the run directory, and `--resume` without the flag
/// continues in it (the dry run names it).
#[test]
fn precision_is_recorded_and_resumed() {
    let dir = tmpdir("cli-precision");
    let c = small(&dir, "p.toml", 1, "");
    let out = dir.join("run");
    let (c, o) = (c.to_str().unwrap(), out.to_str().unwrap());
    let first = run(&["train", c, "--out", o, "--precision", "f16"]);
    assert!(first.status.success(), "{}", text(&first));
    let recorded = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(recorded.contains("precision = \"f16\""), "{recorded}");
    let resumed = run(&["train", c, "--out", o, "--resume", "--epochs", "2"]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    let recorded = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(recorded.contains("precision = \"f16\""), "{recorded}");
    let dry = text(&run(&["train", c, "--dry-run", "--precision", "f16"]));
    assert!(
        dry.contains("precision   activations and their gradients f16"),
        "{dry}"
    );
}

#[test]
fn too_large_for_the_adapter() {
    let dir = tmpdir("cli-large");
    let p = dir.join("big.toml");
    std::fs::write(&p, config(3, 128, -4.0, 8.0, 2, "[8]", 1, 1)).unwrap();
    fails_cleanly(
        &run(&["train", p.to_str().unwrap(), "--dry-run"]),
        &[
            "max_storage_buffer_binding_size",
            "training.batchsize",
            "physical.L",
        ],
    );
    std::fs::write(&p, config(4, 256, -4.0, 8.0, 2, "[8]", 1, 1)).unwrap();
    fails_cleanly(
        &run(&["train", p.to_str().unwrap(), "--dry-run"]),
        &["[physical].L", "sites"],
    );
}

#[test]
fn unwritable_output_and_missing_runs() {
    let dir = tmpdir("cli-out");
    let cfg = small(&dir, "c.toml", 1, "");
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = file.join("run");
    fails_cleanly(
        &run(&[
            "train",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]),
        &["cannot create the run directory"],
    );
    fails_cleanly(
        &run(&["sample", "/no/such/run"]),
        &["run directory /no/such/run does not exist"],
    );
    fails_cleanly(&run(&["sample", dir.to_str().unwrap()]), &["config.toml"]);
    fails_cleanly(&run(&["merge", dir.to_str().unwrap()]), &["config.toml"]);
    fails_cleanly(
        &run(&[
            "train",
            cfg.to_str().unwrap(),
            "--out",
            dir.join("fresh").to_str().unwrap(),
            "--resume",
        ]),
        &["--resume", "no checkpoint.safetensors"],
    );
}

#[test]
fn bad_checkpoints() {
    let dir = tmpdir("cli-ckpt");
    let cfg = small(&dir, "c.toml", 1, "");
    let rdir = dir.join("run");
    let o = run(&[
        "train",
        cfg.to_str().unwrap(),
        "--out",
        rdir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let ck = rdir.join("checkpoint.safetensors");
    let good = std::fs::read(&ck).unwrap();
    let r = rdir.to_str().unwrap();
    let sample = |extra: &[&str]| {
        let mut a = vec!["sample", r, "--samples", "2000", "--latest"];
        a.extend(extra);
        run(&a)
    };
    assert!(sample(&[]).status.success());
    // Corrupt: garbage bytes.
    std::fs::write(&ck, b"not a checkpoint at all").unwrap();
    fails_cleanly(
        &sample(&[]),
        &["checkpoint.safetensors", "corrupt or truncated"],
    );
    // Truncated: half the file.
    std::fs::write(&ck, &good[..good.len() / 2]).unwrap();
    fails_cleanly(
        &sample(&[]),
        &["checkpoint.safetensors", "corrupt or truncated"],
    );
    // Foreign: a valid safetensors file that is not ours.
    let foreign = safetensors::serialize(
        [(
            "weights",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0u8; 4])
                .unwrap(),
        )],
        None,
    )
    .unwrap();
    std::fs::write(&ck, foreign).unwrap();
    fails_cleanly(&sample(&[]), &["not a gomaflow-wgpu checkpoint"]);
    // Shapes that do not match the config: the run's config asks for another network.
    std::fs::write(&ck, &good).unwrap();
    let conf = rdir.join("config.toml");
    let c = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, c.replace("hidden_sizes = [4]", "hidden_sizes = [6]")).unwrap();
    fails_cleanly(
        &sample(&[]),
        &[
            "checkpoint.safetensors",
            "different model",
            "hidden_sizes=[6]",
        ],
    );
    std::fs::write(&conf, &c).unwrap();
    // A checkpoint with non-finite weights.
    let mut nan = good.clone();
    let n = nan.len();
    nan[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&ck, &nan).unwrap();
    let o = sample(&[]);
    assert!(
        !o.status.success() || text(&o).contains("acceptance"),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("panicked"));
}

/// A non-finite loss stops training with the step named; the last good checkpoint stays.
#[test]
fn divergence_stops_with_the_step_named() {
    let dir = tmpdir("cli-nan");
    // Epoch 1 trains normally; from epoch 2 the rate is 1e4 and, without the final tanh to bound
    // s, exp(s) overflows: the loss becomes inf or NaN.
    let cfg = small(
        &dir,
        "c.toml",
        3,
        "lr_scheduler = \"Step(0.001f0, 1e7, [1])\"",
    );
    let text0 = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text0.replace("use_final_tanh = true", "use_final_tanh = false"),
    )
    .unwrap();
    let rdir = dir.join("run");
    let o = run(&[
        "train",
        cfg.to_str().unwrap(),
        "--out",
        rdir.to_str().unwrap(),
    ]);
    fails_cleanly(
        &o,
        &[
            "training diverged",
            "at step",
            "epoch 2",
            "checkpoint.safetensors",
        ],
    );
    // The epoch-1 checkpoint is intact and usable.
    let o = run(&[
        "sample",
        rdir.to_str().unwrap(),
        "--samples",
        "2000",
        "--latest",
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

fn params_of(run_dir: &Path) -> Vec<u8> {
    // The weights (the tensor data; the metadata holds the wall time, which differs).
    let b = std::fs::read(run_dir.join("checkpoint.safetensors")).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    b[8 + n..].to_vec()
}

fn wait_for(path: &Path, child: &mut std::process::Child) {
    let start = std::time::Instant::now();
    while !path.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "training ended before {}",
            path.display()
        );
        assert!(
            start.elapsed().as_secs() < 300,
            "timed out waiting for {}",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Ctrl-C saves and exits 130; kill -9 loses at most the current epoch; either way `--resume`
/// ends with the same bits as an uninterrupted run.
#[test]
fn interrupts_lose_nothing() {
    let dir = tmpdir("cli-kill");
    let cfg = small(&dir, "c.toml", 6, "");
    let c = cfg.to_str().unwrap();
    let straight = dir.join("straight");
    assert!(
        run(&["train", c, "--out", straight.to_str().unwrap()])
            .status
            .success()
    );

    // SIGINT once the first checkpoint is written (mid-run).
    let sig = dir.join("sigint");
    let mut child = bin()
        .args(["train", c, "--out", sig.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&sig.join("checkpoint.safetensors"), &mut child);
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    if o.status.code() == Some(130) {
        assert!(
            t.contains("interrupted at step") && t.contains("--resume"),
            "{t}"
        );
    } else {
        assert!(o.status.success(), "{t}"); // it finished before the signal arrived
    }
    assert!(
        run(&["train", c, "--out", sig.to_str().unwrap(), "--resume"])
            .status
            .success()
    );
    assert_eq!(params_of(&straight), params_of(&sig));

    // SIGKILL: nothing can be saved; the last epoch checkpoint is whole, the resume completes.
    let k9 = dir.join("kill9");
    let mut child = bin()
        .args(["train", c, "--out", k9.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&k9.join("checkpoint.safetensors"), &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    let o = run(&["train", c, "--out", k9.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(params_of(&straight), params_of(&k9));
    // No temporary files are left behind.
    for e in std::fs::read_dir(&k9).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(!name.contains(".tmp"), "{name}");
    }
}

/// `bench --json` reports what the README promises: a positive step time, every kernel of the
/// step timed, the dispatch count, proposals per second, the planned memory, the adapter.
#[test]
fn bench_reports_the_step_and_its_kernels() {
    let dir = tmpdir("cli-bench");
    let cfg = small(&dir, "b.toml", 1, "");
    let o = run(&["bench", cfg.to_str().unwrap(), "--json", "--steps", "3"]);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    let step = j["train_step_s"].as_f64().unwrap();
    assert!(step > 0.0 && step < 10.0, "train_step_s {step}");
    assert!(j["sample_per_s"].as_f64().unwrap() > 0.0);
    assert!(j["memory_bytes"].as_u64().unwrap() > 0);
    assert!(!j["adapter"].as_str().unwrap().is_empty());
    // 2 layers of [4]: prior, action, loss, Adam and per layer 2 convolutions with their
    // backward kernels, and the couplings.
    let dispatches = j["dispatches_per_step"].as_u64().unwrap();
    let kernels = j["kernels"].as_array().unwrap();
    let calls: u64 = kernels.iter().map(|k| k["calls"].as_u64().unwrap()).sum();
    assert_eq!(calls, dispatches, "every dispatch of the step is timed");
    for k in kernels {
        assert!(k["median_s"].as_f64().unwrap() > 0.0, "{k}");
    }
    assert!(
        kernels
            .iter()
            .any(|k| k["name"].as_str().unwrap().starts_with("conv.forward"))
    );
}

/// `bench --step-only` times the training step and nothing else: no kernel table, no sampling
/// rate (null in the JSON), the planned memory still counted.
#[test]
fn bench_step_only_times_the_step_alone() {
    let dir = tmpdir("cli-bench-step");
    let cfg = small(&dir, "b.toml", 1, "");
    let o = run(&[
        "bench",
        cfg.to_str().unwrap(),
        "--json",
        "--steps",
        "2",
        "--step-only",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert!(j["train_step_s"].as_f64().unwrap() > 0.0);
    assert!(j["sample_per_s"].is_null(), "{}", j["sample_per_s"]);
    assert!(j["kernels"].as_array().unwrap().is_empty());
    assert!(j["memory_bytes"].as_u64().unwrap() > 0);
    let o = run(&[
        "bench",
        cfg.to_str().unwrap(),
        "--steps",
        "2",
        "--step-only",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("training step") && !out.contains("proposals/s"),
        "{out}"
    );
}
