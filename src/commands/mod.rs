//! One file per subcommand; `main.rs` parses the command line and hands over to one of these.

pub mod bench;
pub mod devices;
pub mod hmc;
pub mod sample;
pub mod train;
