//! `gomaflow-wgpu bench [CONFIG.toml] [--json]`.

use super::CommonArgs;
use crate::bench::{self, BenchOptions};
use crate::config::Config;
use crate::gpu::{AdapterChoice, Gpu, Precision};
use crate::tape::Fusion;
use crate::tune::TuneMode;
use anyhow::Result;
use std::path::PathBuf;

/// The tutorial config, built in so that `bench` runs without a file.
pub const TUTORIAL: &str = include_str!("../../configs/phi4_2d_L8.toml");

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Training steps timed.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100000))]
    pub steps: u64,
    /// Override training.batchsize.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65535))]
    pub batch: Option<u64>,
    /// Each coupling layer as one dispatch each way: auto (on GPUs; on CPU adapters for
    /// the net's batch x volume <= 512), on (wherever it fits), off (one launch per kernel).
    #[arg(long, value_enum, default_value_t = FusionArg::Auto)]
    pub fusion: FusionArg,
    /// How the convolution kernels' tilings are chosen: off (fixed rules per adapter kind),
    /// auto (measured on this adapter once, then read from the cache), full (measure again).
    #[arg(long, value_enum, default_value_t = TuneMode::Off)]
    pub tune: TuneMode,
    /// Storage of the nets' activations and their gradients [default: the config's [device]
    /// precision, else f32]: f16 halves their memory where the adapter has SHADER_F16 (every
    /// sum, log q, the action, the weights and Adam stay f32).
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Time only the training step: no per-kernel table and no sampling rate (on large
    /// configs on a CPU adapter those take minutes).
    #[arg(long)]
    pub step_only: bool,
}

/// `--fusion`: the command line's spelling of `tape::Fusion` (so that the tape needs no clap);
/// the variants' docs are `--help`'s descriptions of the values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FusionArg {
    /// On GPUs (where launches are what a small step costs; not measured on a GPU). On CPU
    /// adapters where it was measured to pay: the net's batch x volume at most
    /// `SOFTWARE_FUSE_MAX_SITES`.
    Auto,
    /// Wherever the net's shape and the adapter's workgroup memory allow.
    On,
    /// Never.
    Off,
}

impl From<FusionArg> for Fusion {
    fn from(f: FusionArg) -> Fusion {
        match f {
            FusionArg::Auto => Fusion::Auto,
            FusionArg::On => Fusion::On,
            FusionArg::Off => Fusion::Off,
        }
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let (mut cfg, name) = match &args.config {
        Some(p) => (Config::load(p)?, p.display().to_string()),
        None => (
            Config::parse(TUTORIAL, &PathBuf::from("configs/phi4_2d_L8.toml"))?,
            "configs/phi4_2d_L8.toml (built in)".to_string(),
        ),
    };
    if let Some(b) = args.batch {
        cfg.training.batchsize = b as usize;
    }
    let gpu = Gpu::new(&AdapterChoice::new(
        args.common.adapter.as_deref(),
        cfg.device_id,
    ))?;
    super::set_precision(&mut cfg, args.precision, &gpu);
    let opts = BenchOptions {
        steps: args.steps as usize,
        fusion: args.fusion.into(),
        tune: args.tune,
        step_only: args.step_only,
        ..Default::default()
    };
    let report = bench::run(&gpu, &cfg, &name, &opts)?;
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        bench::print(&report);
    }
    Ok(())
}
