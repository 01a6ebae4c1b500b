//! The command line: parse, then hand over to one command of `commands/`.

use clap::{Parser, Subcommand};
use gomaflow_wgpu::commands;
use gomaflow_wgpu::commands::bench::BenchArgs;
use gomaflow_wgpu::commands::hmc::HmcArgs;
use gomaflow_wgpu::commands::merge::MergeArgs;
use gomaflow_wgpu::commands::sample::SampleArgs;
use gomaflow_wgpu::commands::train::TrainArgs;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "gomaflow-wgpu",
    version,
    about = "Normalizing flows for lattice phi^4 theory on any GPU (wgpu + WGSL)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a flow on a config (GomalizingFlow's TOML accepted unchanged).
    Train(TrainArgs),
    /// Run the exact Markov chain a trained flow drives and measure observables with errors.
    Sample(SampleArgs),
    /// Merge the shards of `sample --shard I/N` into one analysis (errors over the replicas).
    Merge(MergeArgs),
    /// HMC on the GPU for a config's action: the baseline every flow result is checked against.
    Hmc(HmcArgs),
    /// Time the training step, every kernel, and sampling for a config (the tutorial if none).
    Bench(BenchArgs),
    /// List every adapter wgpu can use, in `device_id` order, with the limits that matter.
    Devices,
}

fn main() -> ExitCode {
    // A bug must still end in one readable line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error (please report): {info}");
    }));
    // Mesa warns on every start when this is unset; it is harmless for compute.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: single-threaded at this point, before any other thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => commands::train::run(args),
        Command::Sample(args) => commands::sample::run(args).map(|()| 0),
        Command::Merge(args) => commands::merge::run(args).map(|()| 0),
        Command::Hmc(args) => commands::hmc::run(args).map(|()| 0),
        Command::Bench(args) => commands::bench::run(args).map(|()| 0),
        Command::Devices => commands::devices::run().map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
