//! `cargo bench`: the same measurements as `gomaflow-wgpu bench`, for the tutorial and the
//! shipped 3D and 4D configs (set GOMAFLOW_BENCH_CONFIGS to a comma-separated list to choose).

use gomaflow_wgpu::bench::{self, BenchOptions};
use gomaflow_wgpu::config::Config;
use gomaflow_wgpu::gpu::{AdapterChoice, Gpu};
use std::path::PathBuf;

fn main() {
    // `cargo bench` passes flags such as --bench; nothing here takes any.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let list = std::env::var("GOMAFLOW_BENCH_CONFIGS").unwrap_or_else(|_| {
        "configs/phi4_2d_L8.toml,configs/phi4_3d_L8.toml,configs/phi4_4d_L4.toml".into()
    });
    let gpu = match Gpu::new(&AdapterChoice::new(None, None)) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    for name in list.split(',').filter(|s| !s.is_empty()) {
        let path = root.join(name);
        let cfg = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        };
        match bench::run(&gpu, &cfg, name, &BenchOptions::default()) {
            Ok(r) => {
                bench::print(&r);
                println!();
            }
            Err(e) => {
                eprintln!("error: {name}: {e:#}");
                std::process::exit(1);
            }
        }
    }
}
