//! Storage buffers: allocation checked against the adapter's limits, upload, and readback.
//! Readback is for tests, evaluation and checkpoints, never for the training step itself.

use super::Gpu;
use anyhow::{Result, anyhow, bail};

pub use wgpu::BufferUsages as Usage;

/// The storage type of a buffer of activations: f32, or f16 where the adapter has SHADER_F16
/// (`[device] precision`). Sums, weights and everything else stay f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Precision {
    #[default]
    F32,
    /// IEEE half precision: 11-bit significand, range 6e-8 (subnormal) to 65504.
    F16,
}

impl Precision {
    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }

    /// What a tuning key adds for this storage type: nothing for f32 (the default), so that
    /// keys measured before f16 existed stay valid.
    pub fn key_suffix(self) -> &'static str {
        match self {
            Precision::F32 => "",
            Precision::F16 => ", f16 storage",
        }
    }

    /// The config and command-line spelling, which is also the WGSL type.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            _ => Err(format!(
                "{s:?} is not a precision; accepted: \"f32\", \"f16\""
            )),
        }
    }
}

/// A storage buffer with the label that error messages use to name it.
#[derive(Clone, Debug)]
pub struct GpuBuffer {
    pub buffer: wgpu::Buffer,
    pub label: String,
    /// Size in bytes.
    pub size: u64,
    pub usage: Usage,
    /// A byte range (offset, size) to bind instead of the whole buffer (see `range`).
    pub range: Option<(u64, u64)>,
    /// The type of its elements where it holds activations (f16 ones are 2 bytes); 4-byte
    /// words otherwise.
    pub precision: Precision,
}

impl GpuBuffer {
    /// The same buffer, bound as the byte range [offset, offset + size) of this view: `size`
    /// and `len` are then the range's, and reads and writes start at its offset.
    pub fn range(&self, offset: u64, size: u64) -> GpuBuffer {
        GpuBuffer {
            range: Some((self.offset() + offset, size)),
            size,
            ..self.clone()
        }
    }

    /// Byte offset of this view in the underlying buffer.
    pub fn offset(&self) -> u64 {
        self.range.map_or(0, |(o, _)| o)
    }

    /// What a bind-group entry binds: the range if one is set.
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        match self.range {
            None => self.buffer.as_entire_binding(),
            Some((offset, size)) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.buffer,
                offset,
                size: std::num::NonZeroU64::new(size),
            }),
        }
    }

    /// A launcher's check that this buffer holds at least `n` elements.
    pub fn need(&self, n: usize) -> Result<()> {
        if self.len() < n {
            bail!(
                "buffer {} has {} elements, needs {n}",
                self.label,
                self.len()
            );
        }
        Ok(())
    }

    /// Number of elements (4-byte words, or f16 values).
    pub fn len(&self) -> usize {
        (self.size / self.precision.bytes()) as usize
    }
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

/// What the limits check names when a buffer is too large: the knob a user turns to shrink it.
pub const SIZE_HINT: &str =
    "lower training.batchsize (or --batch), physical.L, or model.hidden_sizes";

impl Gpu {
    /// A zero-filled f32/u32 storage buffer of `len` elements, copyable both ways.
    /// Fails with a message naming the adapter limit when it is too large to bind.
    pub fn storage(&self, label: &str, len: usize) -> Result<GpuBuffer> {
        self.buffer(label, len, Usage::empty())
    }

    /// Like `storage`, with more usages (e.g. UNIFORM for parameters read through uniform
    /// bindings of their slices).
    pub fn buffer(&self, label: &str, len: usize, extra: Usage) -> Result<GpuBuffer> {
        let size = (len.max(1) * 4) as u64;
        let bind_max = self.limits.max_storage_buffer_binding_size;
        if size > bind_max || size > self.limits.max_buffer_size {
            bail!(
                "buffer {label:?} needs {} MiB, over this adapter's \
                 max_storage_buffer_binding_size = {} MiB ({}); {SIZE_HINT}",
                size >> 20,
                bind_max.min(self.limits.max_buffer_size) >> 20,
                self.info.name
            );
        }
        let usage = Usage::STORAGE | Usage::COPY_SRC | Usage::COPY_DST | extra;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        });
        Ok(GpuBuffer {
            buffer,
            label: label.to_string(),
            size,
            usage,
            range: None,
            precision: Precision::F32,
        })
    }

    /// A zero-filled buffer of `len` activations stored as `precision` (f16: two per 4-byte
    /// word, the size rounded up to whole words).
    pub fn activations(&self, label: &str, len: usize, precision: Precision) -> Result<GpuBuffer> {
        let words = (len as u64 * precision.bytes()).div_ceil(4) as usize;
        let mut b = self.storage(label, words)?;
        b.precision = precision;
        Ok(b)
    }

    /// A buffer of activations stored as `precision` holding `data` (f16: each value rounded
    /// to the nearest f16).
    pub fn upload_activations(
        &self,
        label: &str,
        data: &[f32],
        precision: Precision,
    ) -> Result<GpuBuffer> {
        let b = self.activations(label, data.len(), precision)?;
        match precision {
            Precision::F32 => self.write(&b, data),
            Precision::F16 => {
                let mut bits: Vec<u16> = (data.iter())
                    .map(|&x| half::f16::from_f32(x).to_bits())
                    .collect();
                bits.resize(b.size as usize / 2, 0);
                self.write(&b, &bits)
            }
        }
        Ok(b)
    }

    /// A storage buffer holding `data`.
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> Result<GpuBuffer> {
        self.upload_with(label, data, Usage::empty())
    }

    /// The flat parameters of a model: storage, and uniform so that each layer's slice can be
    /// bound as a uniform block (see conv.wgsl).
    pub fn upload_params(&self, data: &[f32]) -> Result<GpuBuffer> {
        self.upload_with("parameters", data, Usage::UNIFORM)
    }

    pub fn upload_with<T: bytemuck::Pod>(
        &self,
        label: &str,
        data: &[T],
        extra: Usage,
    ) -> Result<GpuBuffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let b = self.buffer(label, bytes.len().div_ceil(4), extra)?;
        if !bytes.is_empty() {
            self.queue.write_buffer(&b.buffer, 0, bytes);
        }
        Ok(b)
    }

    /// Overwrite the start of `buf` with `data` (staged into the next submit).
    pub fn write<T: bytemuck::Pod>(&self, buf: &GpuBuffer, data: &[T]) {
        self.queue
            .write_buffer(&buf.buffer, buf.offset(), bytemuck::cast_slice(data));
    }

    /// Copy a buffer back to the host and wait for it. Not for hot loops.
    pub fn read<T: bytemuck::Pod>(&self, buf: &GpuBuffer) -> Result<Vec<T>> {
        self.read_range(buf, 0, buf.size)
    }

    /// Copy `size` bytes from `offset` of `buf` (of the view, for a range) back to the host.
    pub fn read_range<T: bytemuck::Pod>(
        &self,
        buf: &GpuBuffer,
        offset: u64,
        size: u64,
    ) -> Result<Vec<T>> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: Usage::MAP_READ | Usage::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        if offset + size > buf.size {
            bail!(
                "reading {size} bytes at {offset} of buffer {}, which has {}",
                buf.label,
                buf.size
            );
        }
        enc.copy_buffer_to_buffer(&buf.buffer, buf.offset() + offset, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        map_and_copy(self, &staging)
    }
}

/// Map a MAP_READ buffer, wait for it, and copy it out.
pub fn map_and_copy<T: bytemuck::Pod>(gpu: &Gpu, staging: &wgpu::Buffer) -> Result<Vec<T>> {
    let slice = staging.slice(..);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    gpu.wait()?;
    rx.recv()
        .map_err(|_| anyhow!("the GPU never answered a readback"))?
        .map_err(|e| anyhow!("reading a buffer back from the GPU failed: {e}"))?;
    let out = {
        let view = slice
            .get_mapped_range()
            .map_err(|e| anyhow!("mapping a readback buffer failed: {e:?}"))?;
        bytemuck::cast_slice::<u8, T>(&view).to_vec()
    };
    staging.unmap();
    Ok(out)
}
