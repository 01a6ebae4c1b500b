//! Files that must survive a kill: everything is written to a temporary name in the same
//! directory, flushed, and renamed over the target, so a reader sees the old file or the new
//! one, never half of one.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary name `write_atomic` uses for `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Create `dir` (and parents), failing with a message that names it.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the run directory {}", dir.display()))?;
    // Probe that it is writable now rather than after an hour of training.
    write_atomic(&dir.join(".write-test"), b"ok")
        .with_context(|| format!("the run directory {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(dir.join(".write-test"));
    Ok(())
}

/// The header of a NumPy .npy file (format 1.0): `descr` is the Python literal of the dtype
/// (`'<f4'`, or a list of fields for a structured dtype), `shape` = [rows, dims...].
pub fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': {shape_s}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' must be a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out
}

/// The float type of an array written by `NpyWriter::create`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FloatType {
    #[default]
    F32,
    /// IEEE half precision (NumPy's float16): 11-bit significand, relative rounding error at
    /// most 2^-11, largest finite value 65504.
    F16,
}

/// Streams rows into a NumPy .npy file of a known shape, under a temporary name until
/// `finish` renames it into place.
pub struct NpyWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    rows_left: usize,
    row_bytes: usize,
    /// `write_row` rounds its f32 values to f16.
    half: bool,
}

impl NpyWriter {
    /// A float array: `shape` = [rows, dims...]; each `write_row` takes the product of dims
    /// f32 values, stored as `ty`.
    pub fn create(path: &Path, shape: &[usize], ty: FloatType) -> Result<NpyWriter> {
        let n = shape[1..].iter().product::<usize>();
        let mut w = match ty {
            FloatType::F32 => Self::create_typed(path, "'<f4'", shape, 4 * n)?,
            FloatType::F16 => Self::create_typed(path, "'<f2'", shape, 2 * n)?,
        };
        w.half = ty == FloatType::F16;
        Ok(w)
    }

    /// Rows of `row_bytes` bytes each, of the dtype `descr` (see `npy_header`).
    pub fn create_typed(
        path: &Path,
        descr: &str,
        shape: &[usize],
        row_bytes: usize,
    ) -> Result<NpyWriter> {
        let tmp = temp_path(path);
        let f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = std::io::BufWriter::new(f);
        out.write_all(&npy_header(descr, shape))?;
        Ok(NpyWriter {
            path: path.to_path_buf(),
            tmp,
            out,
            rows_left: shape[0],
            row_bytes,
            half: false,
        })
    }

    pub fn write_row(&mut self, row: &[f32]) -> Result<()> {
        if self.half {
            let h: Vec<u8> = row
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect();
            self.write_bytes(&h)
        } else {
            self.write_bytes(bytemuck::cast_slice(row))
        }
    }

    /// One row as raw little-endian bytes.
    pub fn write_bytes(&mut self, row: &[u8]) -> Result<()> {
        anyhow::ensure!(
            row.len() == self.row_bytes && self.rows_left > 0,
            "npy row of the wrong size"
        );
        self.out.write_all(row)?;
        self.rows_left -= 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        anyhow::ensure!(self.rows_left == 0, "npy file short of rows");
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}
