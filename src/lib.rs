//! gomaflow-wgpu: normalizing flows for lattice phi^4 theory, with every number computed by
//! hand-written WGSL compute shaders through wgpu.
//!
//! Data flows one way: config -> model and buffer plan -> tape -> steps -> run directory ->
//! sample -> observables. The kernels of `kernels/` (launcher and f64 reference side by side)
//! run the shaders of `shaders/` on the device of `gpu/`.

pub mod bench;
pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod files;
pub mod flow;
pub mod gpu;
pub mod kernels;
pub mod lattice;
pub mod mcmc;
pub mod observables;
pub mod plots;
pub mod proposals;
pub mod rng;
pub mod sample;
pub mod shards;
pub mod tape;
pub mod train;
pub mod tune;
