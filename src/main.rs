//! The command line: parse, then hand over to one command of `commands/`.

use clap::{Parser, Subcommand};
use gomaflow_wgpu::commands;
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
        Command::Bench {
            config,
            json,
            adapter,
            steps,
            batch,
        } => commands::bench::run(
            config,
            json,
            adapter,
            steps as usize,
            batch.map(|b| b as usize),
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
