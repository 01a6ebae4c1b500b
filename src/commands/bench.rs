//! `gomaflow-wgpu bench [CONFIG.toml] [--json]`.

use crate::bench::{self, BenchOptions};
use crate::config::Config;
use crate::gpu::{AdapterChoice, Gpu};
use crate::tape::Fusion;
use anyhow::Result;
use std::path::PathBuf;

/// The tutorial config, built in so that `bench` runs without a file.
pub const TUTORIAL: &str = include_str!("../../configs/phi4_2d_L8.toml");

pub fn run(
    config: Option<PathBuf>,
    json: bool,
    adapter: Option<String>,
    steps: usize,
    batch: Option<usize>,
    fusion: Fusion,
) -> Result<()> {
    let (mut cfg, name) = match &config {
        Some(p) => (Config::load(p)?, p.display().to_string()),
        None => (
            Config::parse(TUTORIAL, &PathBuf::from("configs/phi4_2d_L8.toml"))?,
            "configs/phi4_2d_L8.toml (built in)".to_string(),
        ),
    };
    if let Some(b) = batch {
        cfg.training.batchsize = b;
    }
    let gpu = Gpu::new(&AdapterChoice::new(adapter.as_deref(), cfg.device_id))?;
    let opts = BenchOptions {
        steps,
        fusion,
        ..Default::default()
    };
    let report = bench::run(&gpu, &cfg, &name, &opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        bench::print(&report);
    }
    Ok(())
}
