//! The integration tests as one binary (one link, one device for all): a module per kernel
//! family or part of the program, named as the source it tests (`conv` tests
//! `src/kernels/conv.rs` against its reference, `tape` the tape, ...), plus `cli` for the
//! binary as a user runs it. `common` holds the shared device and comparison helpers.

mod common;

mod action;
mod adam;
mod cli;
mod combi;
mod config;
mod conv;
mod coupling;
mod coupling_layer;
mod fuzz;
mod lattice;
mod mcmc;
mod prior;
mod reduce;
mod sample;
mod shaders;
mod shards;
mod spline;
mod tape;
mod train;
mod tune;
mod z2;
