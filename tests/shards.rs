//! Sampling across processes (src/shards.rs, `merge`): shards of one flow merged agree with one
//! long chain and with each other, the merge does not depend on the order shards are read in,
//! shard 0 of 1 is the unsharded chain, and every broken shard set is refused with the file
//! named.

use crate::common::*;
use gomaflow_wgpu::commands::merge::{Merged, analyse, merge};
use gomaflow_wgpu::lattice::Lattice;
use gomaflow_wgpu::observables::{Autocorr, Summary, free, gamma_q, ln_gamma, replica_consistency};
use gomaflow_wgpu::sample::{self, SampleOptions};
use gomaflow_wgpu::shards::{self, ShardId};
use std::path::{Path, PathBuf};

#[test]
fn gamma_q_known_values() {
    // Q(1, x) = exp(-x); Q(1/2, x) = erfc(sqrt x); the chi^2 table's 5% points.
    for x in [0.1f64, 1.0, 3.0, 20.0] {
        assert!((gamma_q(1.0, x) - (-x).exp()).abs() < 1e-13, "{x}");
    }
    assert!((gamma_q(0.5, 1.0) - 0.157_299_207_050_285_1).abs() < 1e-12);
    for (dof, chi2) in [
        (1.0, 3.841_458_820_694_124),
        (3.0, 7.814_727_903_251_178),
        (10.0, 18.307_038_053_275_146),
    ] {
        let q = gamma_q(dof / 2.0, chi2 / 2.0);
        assert!((q - 0.05).abs() < 1e-9, "dof {dof}: Q {q}");
    }
    assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
    assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-13);
}

/// Replicas of one distribution pass the check; a shifted one fails it.
#[test]
fn replica_consistency_catches_a_shifted_replica() {
    let mut r = rng(3);
    let mut reps: Vec<Vec<f64>> = (0..8).map(|_| uniform(&mut r, 4000, -1.0, 1.0)).collect();
    let refs: Vec<&[f64]> = reps.iter().map(|x| x.as_slice()).collect();
    let ok = replica_consistency(&refs);
    assert_eq!(ok.dof, 7);
    assert!(ok.q > 0.01, "{ok:?}");
    for x in &mut reps[3] {
        *x += 0.1; // about 10 of its standard errors
    }
    let refs: Vec<&[f64]> = reps.iter().map(|x| x.as_slice()).collect();
    let bad = replica_consistency(&refs);
    assert!(bad.q < 1e-6, "{bad:?}");
}

#[test]
fn shard_ids_parse() {
    assert_eq!("3/8".parse::<ShardId>(), Ok(ShardId { index: 3, count: 8 }));
    for bad in ["8/8", "3", "x/8", "-1/8", "1/0", "1/2/3"] {
        assert!(bad.parse::<ShardId>().is_err(), "{bad}");
    }
    assert_eq!(ShardId { index: 3, count: 8 }.stem(), "3-of-8");
}

/// A flow of the free field (2D, L = 4, m^2 = 1), whose exact values the merge must also meet,
/// trained to ESS ~0.7 (the one `sample`'s free-field test uses): on a flow of an interacting
/// theory trained to ESS 0.2-0.3 (Pareto k 0.55) single 40k chains of different seeds read
/// <phi^2> up to 2.4 sigma apart, too heavy-tailed for a test that must not flake.
fn trained_flow() -> PathBuf {
    let text =
        config(2, 4, 1.0, 0.0, 8, "[8]", 12, 150).replace("base_lr = 0.001", "base_lr = 0.003");
    trained("shards", &text)
}

fn chain(run: &Path, samples: usize, seed: u64, shard: Option<ShardId>) -> sample::SampleRun {
    let opts = SampleOptions {
        samples,
        burn_in: 500,
        seed: Some(seed),
        batch: 1024,
        latest: false,
        save_npy: None,
        npy_dtype: Default::default(),
        shard,
        precision: None,
    };
    sample::run(gpu(), run, &opts, |_| {}).unwrap()
}

/// What `sample --shard` writes beside the rows (as the command does).
fn write_shard_json(run: &Path, id: ShardId, r: &sample::SampleRun) {
    let j = serde_json::json!({
        "format": shards::FORMAT,
        "shard": id.index,
        "shards": id.count,
        "seed": r.seed,
        "samples": r.accepted.len(),
        "burn_in": 500,
        "seconds": r.seconds,
        "config_fingerprint": shards::fingerprint(&run.join("config.toml")).unwrap(),
        "checkpoint": "best.safetensors",
        "checkpoint_fingerprint": shards::fingerprint(&r.checkpoint).unwrap(),
    });
    shards::write_summary(run, id, &j).unwrap();
}

fn sigma_apart(a: (f64, f64), b: (f64, f64)) -> f64 {
    (a.0 - b.0).abs() / a.1.hypot(b.1)
}

fn pair(a: &Autocorr) -> (f64, f64) {
    (a.mean, a.error)
}

fn err_of(r: anyhow::Result<Merged>) -> String {
    match r {
        Ok(_) => panic!("a broken shard set was merged"),
        Err(e) => format!("{e:#}"),
    }
}

/// Copy the run directory's files (not its shards) and the shards `keep` into a fresh one.
fn copy_run(run: &Path, name: &str, keep: &[&str]) -> PathBuf {
    let dst = tmpdir(name);
    for f in ["config.toml", "best.safetensors", "checkpoint.safetensors"] {
        if run.join(f).exists() {
            std::fs::copy(run.join(f), dst.join(f)).unwrap();
        }
    }
    std::fs::create_dir_all(dst.join("shards")).unwrap();
    for stem in keep {
        for ext in ["npy", "json"] {
            let f = format!("{stem}.{ext}");
            std::fs::copy(run.join("shards").join(&f), dst.join("shards").join(&f)).unwrap();
        }
    }
    dst
}

#[test]
fn shards_merge_like_one_chain() {
    let run = trained_flow();
    let lat = Lattice::new(2, 4);
    let n = 4u32;
    let per = 10_000;
    for index in 0..n {
        let id = ShardId { index, count: n };
        let r = chain(&run, per, 5, Some(id));
        write_shard_json(&run, id, &r);
    }
    let m = merge(&run).unwrap();
    assert_eq!(m.shards.len(), 4);
    assert_eq!(m.samples, 4 * (per - 500));
    // One chain as long as the four together, from another seed.
    let long = chain(&run, n as usize * per, 6, None);
    let one = Summary::of(&lat, std::slice::from_ref(&long.primaries));
    eprintln!(
        "CHECK 4 shards merged: acceptance {:.3} (one chain {:.3}), ESS {:.3}, Pareto k {:.2}",
        m.stats.acceptance, long.stats.acceptance, m.stats.ess, m.stats.pareto_k
    );
    let g = free::g(&lat, 1.0);
    for (r, gr) in g.iter().enumerate() {
        let (v, e) = m.summary.g[r];
        eprintln!("      merged G({r}) = {v:.5} ± {e:.5} (exact {gr:.5})");
        assert!((v - gr).abs() < 3.0 * e, "G({r})");
    }
    for (name, a, b) in [
        ("|m|", pair(&m.summary.abs_m), pair(&one.abs_m)),
        ("phi^2", pair(&m.summary.phi2), pair(&one.phi2)),
        ("chi_2", pair(&m.summary.chi2), pair(&one.chi2)),
        ("Ising energy", m.summary.ising_energy, one.ising_energy),
    ] {
        let z = sigma_apart(a, b);
        eprintln!(
            "      {name}: merged {:.5} ± {:.5}, one chain {:.5} ± {:.5}, {z:.2} sigma apart",
            a.0, a.1, b.0, b.1
        );
        assert!(z < 3.0, "{name}");
        // Four replicas of a quarter the length: the same statistical power.
        assert!(
            (a.1 / b.1 - 1.0).abs() < 0.35,
            "{name}: errors {} and {}",
            a.1,
            b.1
        );
    }
    // The error bars are consistent with the spread of the shard means.
    for (name, c) in &m.consistency {
        eprintln!(
            "      shard means of {name}: chi^2 {:.2} / {}, Q {:.3}",
            c.chi2, c.dof, c.q
        );
        assert_eq!(c.dof, 3);
        assert!(c.q > 0.001, "{name}: {c:?}");
    }
    // The order shards are read in does not matter.
    let mut reversed = m.shards.clone();
    reversed.reverse();
    let again = analyse(&lat, reversed);
    assert_eq!(again.summary.phi2, m.summary.phi2);
    assert_eq!(again.summary.ising_energy, m.summary.ising_energy);
    assert_eq!(again.stats.ess, m.stats.ess);
    assert_eq!(again.stats.tau_acc, m.stats.tau_acc);

    broken_sets_are_refused(&run);
}

fn broken_sets_are_refused(run: &Path) {
    let all = ["0-of-4", "1-of-4", "2-of-4", "3-of-4"];
    // A missing shard, and one whose JSON never came (interrupted).
    let d = copy_run(run, "shards-missing", &all[..3]);
    let e = err_of(merge(&d));
    assert!(e.contains("incomplete") && e.contains("3-of-4.json"), "{e}");
    std::fs::copy(run.join("shards/3-of-4.npy"), d.join("shards/3-of-4.npy")).unwrap();
    let e = err_of(merge(&d));
    assert!(
        e.contains("3-of-4.json is missing") && e.contains("interrupted"),
        "{e}"
    );
    // A truncated rows file.
    let d = copy_run(run, "shards-truncated", &all);
    let p = d.join("shards/2-of-4.npy");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let e = err_of(merge(&d));
    assert!(e.contains("2-of-4.npy") && e.contains("truncated"), "{e}");
    // A damaged JSON.
    let d = copy_run(run, "shards-badjson", &all);
    std::fs::write(d.join("shards/1-of-4.json"), "{\"format\": ").unwrap();
    let e = err_of(merge(&d));
    assert!(
        e.contains("1-of-4.json") && e.contains("not valid JSON"),
        "{e}"
    );
    // A copied shard: under its own name (the JSON says so), and relabelled (same chain).
    let d = copy_run(run, "shards-copied", &all[..3]);
    for ext in ["npy", "json"] {
        std::fs::copy(
            d.join(format!("shards/0-of-4.{ext}")),
            d.join(format!("shards/3-of-4.{ext}")),
        )
        .unwrap();
    }
    let e = err_of(merge(&d));
    assert!(
        e.contains("3-of-4.json") && e.contains("says it is shard 0/4"),
        "{e}"
    );
    let j = std::fs::read_to_string(d.join("shards/3-of-4.json")).unwrap();
    std::fs::write(
        d.join("shards/3-of-4.json"),
        j.replace("\"shard\": 0", "\"shard\": 3"),
    )
    .unwrap();
    let e = err_of(merge(&d));
    assert!(
        e.contains("3-of-4.npy") && e.contains("same chain as") && e.contains("0-of-4.npy"),
        "{e}"
    );
    // Another flow, another seed, another config.
    let d = copy_run(run, "shards-flow", &all);
    let p = d.join("shards/2-of-4.json");
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let fp = j["checkpoint_fingerprint"].as_str().unwrap().to_string();
    let j2 = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, j2.replace(&fp, "0123456789abcdef")).unwrap();
    let e = err_of(merge(&d));
    assert!(
        e.contains("2-of-4.json") && e.contains("another flow"),
        "{e}"
    );
    std::fs::write(&p, j2.replace("\"seed\": 5", "\"seed\": 6")).unwrap();
    let e = err_of(merge(&d));
    assert!(e.contains("2-of-4.json") && e.contains("seed 6"), "{e}");
    let f16 = "\"seed\": 5, \"precision\": \"f16\"";
    std::fs::write(&p, j2.replace("\"seed\": 5", f16)).unwrap();
    let e = err_of(merge(&d));
    assert!(
        e.contains("2-of-4.json") && e.contains("f16 activations"),
        "{e}"
    );
    std::fs::write(&p, j2).unwrap();
    let mut c = std::fs::read_to_string(d.join("config.toml")).unwrap();
    c.push_str("\n# edited\n");
    std::fs::write(d.join("config.toml"), c).unwrap();
    let e = err_of(merge(&d));
    assert!(
        e.contains("0-of-4.json") && e.contains("another config"),
        "{e}"
    );
    // Two splits in one directory; a stray temporary file is ignored.
    let d = copy_run(run, "shards-mixed", &all);
    std::fs::write(d.join("shards/0-of-4.npy.tmp123"), "x").unwrap();
    assert!(merge(&d).is_ok());
    std::fs::copy(run.join("shards/0-of-4.json"), d.join("shards/0-of-2.json")).unwrap();
    let e = err_of(merge(&d));
    assert!(e.contains("mixes shards of different splits"), "{e}");
    // No shards at all.
    let d = copy_run(run, "shards-none", &[]);
    let e = err_of(merge(&d));
    assert!(
        e.contains("holds no shards") && e.contains("--shard I/N"),
        "{e}"
    );
}

/// Shard 0 of 1 is the unsharded chain, so merging it reproduces `sample` bit for bit; its rows
/// hold every step's measurements, log w and decision.
#[test]
fn one_shard_is_the_chain() {
    let run = trained("shard-one", &config(2, 4, -1.0, 1.0, 2, "[4]", 1, 20));
    let lat = Lattice::new(2, 4);
    let plain = chain(&run, 5000, 9, None);
    let id = ShardId { index: 0, count: 1 };
    let sharded = chain(&run, 5000, 9, Some(id));
    write_shard_json(&run, id, &sharded);
    let s = Summary::of(&lat, std::slice::from_ref(&plain.primaries));
    let m = merge(&run).unwrap();
    assert_eq!(m.summary.phi2, s.phi2);
    assert_eq!(m.summary.chi2, s.chi2);
    assert_eq!(m.summary.c, s.c);
    assert_eq!(m.stats.acceptance, plain.stats.acceptance);
    assert_eq!(m.stats.ess, plain.stats.ess);
    assert_eq!(m.stats.tau_acc, plain.stats.tau_acc);
    let shard = &m.shards[0];
    assert_eq!(shard.accepted, plain.accepted);
    assert_eq!(&shard.primaries[500..], &plain.primaries[..]);
    // Shards 0 and 1 of 2 draw the unsharded chain's batches 0, 2, ... and 1, 3, ...; their
    // decisions use their own uniforms.
    let b = 1024;
    for index in 0..2 {
        let other = chain(&run, 2 * b, 9, Some(ShardId { index, count: 2 }));
        let i = index as usize;
        assert_eq!(other.logw[..b], plain.logw[i * b..(i + 1) * b]);
        assert_eq!(other.logw[b..], plain.logw[(i + 2) * b..(i + 3) * b]);
    }
    // The rows file as NumPy sees it: the header names the fields.
    let bytes = std::fs::read(&shard.npy).unwrap();
    let hl = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hl]).unwrap();
    assert!(
        header.contains("('phi2', '<f8'), ('G', '<f8', (4,))")
            && header.contains("'shape': (5000,)"),
        "{header}"
    );
}
