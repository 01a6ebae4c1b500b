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
