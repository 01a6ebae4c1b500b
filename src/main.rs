//! The command line: parse, then hand over to one command of `commands/`.

use clap::{Parser, Subcommand};
use gomaflow_wgpu::commands;
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
        Command::Devices => commands::devices::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
