//! The command line: parse, then hand over to one command of `commands/`.

use clap::{Parser, Subcommand};
use gomaflow_wgpu::commands;
use gomaflow_wgpu::tape::Fusion;
use std::path::PathBuf;
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
    Train {
        /// The config file.
        config: PathBuf,
        /// The run directory [default: runs/<config file stem>].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue the run in the run directory from its last checkpoint.
        #[arg(long)]
        resume: bool,
        /// Check the config, build the model and the buffer plan, print them, and exit.
        #[arg(long)]
        dry_run: bool,
        /// Use the adapter whose name contains this (see `devices`); overrides device_id.
        #[arg(long)]
        adapter: Option<String>,
        /// Train this many epochs instead of training.epochs (e.g. to extend a run).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        epochs: Option<u64>,
    },
    /// Run the exact Markov chain a trained flow drives and measure observables with errors.
    Sample {
        /// The run directory of `train`.
        run_dir: PathBuf,
        /// Chain length (proposals), burn-in included.
        #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u64).range(2..=100_000_000))]
        samples: u64,
        /// Steps discarded at the start of the chain.
        #[arg(long, default_value_t = 1000)]
        burn_in: u64,
        /// Seed of the proposals and the accept/reject decisions [default: training.seed].
        #[arg(long)]
        seed: Option<u64>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Write the chain's configurations (after burn-in) as .npy, shape [N, L, ..., L].
        #[arg(long)]
        save_npy: Option<PathBuf>,
        /// Proposals per GPU batch.
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65535))]
        batch: u64,
        /// Use the last checkpoint instead of the best (by acceptance).
        #[arg(long)]
        latest: bool,
        /// Use the adapter whose name contains this (see `devices`).
        #[arg(long)]
        adapter: Option<String>,
    },
    /// HMC on the GPU for a config's action: the baseline every flow result is checked against.
    Hmc {
        config: PathBuf,
        /// Measured trajectories per chain (after burn-in).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(2..=10_000_000))]
        trajectories: u64,
        /// Independent chains run side by side.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65535))]
        chains: u64,
        /// Trajectories discarded first; the step size is tuned in the first half.
        #[arg(long, default_value_t = 200)]
        burn_in: u64,
        /// Leapfrog steps per trajectory.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10000))]
        steps: u64,
        /// Initial leapfrog step size (tuned towards 80% acceptance during burn-in).
        #[arg(long, default_value_t = 0.1)]
        step_size: f64,
        /// Seed [default: training.seed].
        #[arg(long)]
        seed: Option<u64>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Use the adapter whose name contains this (see `devices`).
        #[arg(long)]
        adapter: Option<String>,
    },
    /// Time the training step, every kernel, and sampling for a config (the tutorial if none).
    Bench {
        config: Option<PathBuf>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Use the adapter whose name contains this (see `devices`).
        #[arg(long)]
        adapter: Option<String>,
        /// Training steps timed.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100000))]
        steps: u64,
        /// Override training.batchsize.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65535))]
        batch: Option<u64>,
        /// Each coupling layer as one dispatch each way: auto (on GPUs; on CPU adapters for
        /// batch x volume <= 512), on (wherever it fits), off (one launch per kernel).
        #[arg(long, value_enum, default_value_t = Fusion::Auto)]
        fusion: Fusion,
    },
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
        Command::Train {
            config,
            out,
            resume,
            dry_run,
            adapter,
            epochs,
        } => commands::train::run(commands::train::Args {
            config,
            out,
            resume,
            dry_run,
            adapter,
            epochs,
        }),
        Command::Sample {
            run_dir,
            samples,
            burn_in,
            seed,
            json,
            save_npy,
            batch,
            latest,
            adapter,
        } => commands::sample::run(
            run_dir,
            gomaflow_wgpu::sample::SampleOptions {
                samples: samples as usize,
                burn_in: burn_in as usize,
                seed,
                batch: batch as usize,
                latest,
                save_npy,
            },
            json,
            adapter,
        )
        .map(|()| 0),
        Command::Hmc {
            config,
            trajectories,
            chains,
            burn_in,
            steps,
            step_size,
            seed,
            json,
            adapter,
        } => commands::hmc::run(commands::hmc::Args {
            config,
            trajectories: trajectories as usize,
            chains: chains as usize,
            burn_in: burn_in as usize,
            steps: steps as usize,
            step_size,
            seed,
            json,
            adapter,
        })
        .map(|()| 0),
        Command::Bench {
            config,
            json,
            adapter,
            steps,
            batch,
            fusion,
        } => commands::bench::run(
            config,
            json,
            adapter,
            steps as usize,
            batch.map(|b| b as usize),
            fusion,
        )
        .map(|()| 0),
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
