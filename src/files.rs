//! Whole files and whole folders that appear at their final path only once complete, shared by
//! `cli/` and `train/` so that a failure never leaves a half-written output.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The mode new files get before the umask, as `open(2)` callers such as `cp` and Python use:
/// `0666 & !umask`, 0644 under the usual umask 022.
#[cfg(unix)]
const FILE_MODE: u32 = 0o666;
/// The mode new folders get before the umask: `0777 & !umask`, 0755 under umask 022.
#[cfg(unix)]
const DIR_MODE: u32 = 0o777;

/// A temporary file in `dir` to be renamed into place, created with the mode an ordinary new file
/// gets (`0666` under the umask) rather than tempfile's private 0600.
pub fn temp_file_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let mut b = tempfile::Builder::new();
    b.prefix(".sparsec-tmp-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(FILE_MODE));
    }
    b.tempfile_in(dir)
}

/// Writes a file through a temporary file in the same folder, renamed over `path` when complete;
/// the file gets the mode of an ordinary new file (0644 under umask 022).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = temp_file_in(dir).with_context(|| format!("cannot write '{}'", path.display()))?;
    tmp.write_all(bytes).with_context(|| format!("cannot write '{}'", path.display()))?;
    tmp.persist(path).with_context(|| format!("cannot write '{}'", path.display()))?;
    Ok(())
}

/// A temporary folder beside `out` (same filesystem) to stage an output folder in, with the mode
/// of an ordinary new folder (0755 under umask 022), as it becomes `out` itself.
pub fn staging_dir(out: &Path, prefix: &str) -> Result<tempfile::TempDir> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("cannot create '{}'", parent.display()))?;
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(DIR_MODE));
    }
    b.tempdir_in(&parent).with_context(|| format!("cannot create a temporary folder in '{}'", parent.display()))
}

/// Moves the complete folder `staged` (made by [`staging_dir`]) to `out`; an existing `out` is
/// replaced only once the new one can take its place, and restored if that fails.
pub fn swap_into_place(staged: tempfile::TempDir, out: &Path) -> Result<()> {
    let staged = staged.keep();
    let parent = staged.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    if out.exists() {
        let old = parent.join(format!(
            ".sparsec-old-{}-{}",
            out.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default(),
            std::process::id()
        ));
        std::fs::rename(out, &old).with_context(|| format!("cannot replace '{}'", out.display()))?;
        if let Err(e) = std::fs::rename(&staged, out) {
            let _ = std::fs::rename(&old, out);
            let _ = std::fs::remove_dir_all(&staged);
            return Err(e).with_context(|| format!("cannot write '{}'", out.display()));
        }
        std::fs::remove_dir_all(&old).ok();
    } else if let Err(e) = std::fs::rename(&staged, out) {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(e).with_context(|| format!("cannot write '{}'", out.display()));
    }
    Ok(())
}
