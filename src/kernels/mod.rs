//! One module per kernel family: the Rust launcher of `shaders/<name>.wgsl` and, beside it, the
//! f64 CPU reference that is its specification (`reference` submodules). Launchers build their
//! dispatches once; recording them is all a training step does.

pub mod action;
pub mod adam;
pub mod combi;
pub mod conv;
pub mod coupling;
pub mod coupling_layer;
pub mod hmc;
pub mod prior;
pub mod reduce;
pub mod spline;
pub mod tiling;
pub mod z2;

use crate::flow::Taps;
use crate::gpu::{Gpu, GpuBuffer};
use crate::lattice::Lattice;
use anyhow::Result;

/// An activation, as the shaders number them (`ACT_*` in common.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    None = 0,
    Leaky = 1,
    Tanh = 2,
}

/// LeakyReLU's negative slope (PyTorch's and Flux's default).
pub const LEAKY_SLOPE: f64 = 0.01;

impl Act {
    pub fn code(self) -> u32 {
        self as u32
    }

    pub fn apply(self, x: f64) -> f64 {
        match self {
            Act::None => x,
            Act::Leaky => {
                if x > 0.0 {
                    x
                } else {
                    LEAKY_SLOPE * x
                }
            }
            Act::Tanh => x.tanh(),
        }
    }

    /// The derivative at the input whose output is `y`.
    pub fn grad_from_output(self, y: f64) -> f64 {
        match self {
            Act::None => 1.0,
            Act::Leaky => {
                if y > 0.0 {
                    1.0
                } else {
                    LEAKY_SLOPE
                }
            }
            Act::Tanh => 1.0 - y * y,
        }
    }
}

/// The lattice's lookup tables on the GPU, shared by every kernel of a model.
pub struct LatticeBuffers {
    pub lattice: Lattice,
    /// `Taps::table` of each tap set the model's convolutions use: [volume * taps].
    pub tables: Vec<(Taps, GpuBuffer)>,
    /// `Taps::row_table` of each tap set, where L is a multiple of 4 (else empty):
    /// [volume / 4 * taps].
    pub row_tables: Vec<(Taps, GpuBuffer)>,
    /// `parity_table()`: [volume].
    pub parity: GpuBuffer,
    /// `hop_table()`: [volume * 2 Nd].
    pub hop: GpuBuffer,
}

impl LatticeBuffers {
    pub fn new(gpu: &Gpu, lattice: Lattice, taps: &[Taps]) -> Result<Self> {
        Ok(LatticeBuffers {
            lattice,
            tables: taps
                .iter()
                .map(|t| {
                    Ok((
                        t.clone(),
                        gpu.upload("neighbour table", &t.table(&lattice))?,
                    ))
                })
                .collect::<Result<_>>()?,
            row_tables: if lattice.l.is_multiple_of(4) {
                taps.iter()
                    .map(|t| Ok((t.clone(), gpu.upload("row table", &t.row_table(&lattice))?)))
                    .collect::<Result<_>>()?
            } else {
                vec![]
            },
            parity: gpu.upload("parity table", &lattice.parity_table())?,
            hop: gpu.upload("hop table", &lattice.hop_table())?,
        })
    }

    /// The neighbour table of `taps`.
    pub fn table(&self, taps: &Taps) -> Result<&GpuBuffer> {
        self.tables
            .iter()
            .find(|(t, _)| t == taps)
            .map(|(_, b)| b)
            .ok_or_else(|| anyhow::anyhow!("no neighbour table was built for {taps:?}"))
    }

    /// The row table of `taps` (4 sites per thread; L a multiple of 4).
    pub fn row_table(&self, taps: &Taps) -> Result<&GpuBuffer> {
        self.row_tables
            .iter()
            .find(|(t, _)| t == taps)
            .map(|(_, b)| b)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no row table was built for {taps:?} (L = {} is not a multiple of 4)",
                    self.lattice.l
                )
            })
    }
}

/// The uniform block of the kernels that work on a batch of checkerboard-masked fields
/// (`coupling.wgsl`, `z2.wgsl`: `struct Params { batch, volume, parity }`).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MaskedParams {
    pub batch: u32,
    pub volume: u32,
    pub parity: u32,
    pub _pad: u32,
}

impl MaskedParams {
    pub fn new(batch: usize, volume: usize, parity: u32) -> Self {
        MaskedParams {
            batch: batch as u32,
            volume: volume as u32,
            parity,
            _pad: 0,
        }
    }
}

/// The workgroup size of the per-sample reduction kernels: the smallest power of two covering
/// the lattice, at most 256 (so a 4x4 lattice does not idle 240 lanes of 256).
pub fn reduction_workgroup(volume: usize) -> u32 {
    volume.next_power_of_two().clamp(32, 256) as u32
}
