//! One file per subcommand, each with its arguments (a `clap::Args` struct) and its `run`;
//! `main.rs` parses the command line and hands over to one of these.

pub mod bench;
pub mod devices;
pub mod hmc;
pub mod merge;
pub mod sample;
pub mod train;

/// `--precision` over the config's `[device] precision`, then what the adapter allows (f16
/// only with SHADER_F16; a one-line warning otherwise).
pub fn set_precision(
    cfg: &mut crate::config::Config,
    flag: Option<crate::gpu::Precision>,
    gpu: &crate::gpu::Gpu,
) {
    cfg.precision = gpu.precision(flag.unwrap_or(cfg.precision));
}

/// The flags of the commands that report measurements (`sample`, `hmc`, `bench`).
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Use the adapter whose name contains this (see `devices`).
    #[arg(long)]
    pub adapter: Option<String>,
}
