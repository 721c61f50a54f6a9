//! Replacing a file so that a reader sees the old contents or the new, never a torn file:
//! write a temporary sibling, flush it to disk, rename it over the target. An interrupted
//! or failed write leaves the target as it was.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

/// Tells apart temporaries of one process (tests write in parallel threads).
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary path next to `path` (so the rename stays on one file system). It ends
/// with `path`'s extension, for writers that choose the format from it.
fn temp_sibling(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} does not name a file", path.display()))?
        .to_string_lossy();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!(".{name}.{}-{n}.tmp{ext}", std::process::id())))
}

/// Replaces `path` with what `fill` writes to the temporary path it is given.
pub fn replace_with(path: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let temp = temp_sibling(path)?;
    let result = fill(&temp)
        .and_then(|()| {
            File::open(&temp)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot flush {}", temp.display()))
        })
        .and_then(|()| {
            std::fs::rename(&temp, path)
                .with_context(|| format!("cannot move the new file to {}", path.display()))
        });
    if result.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Replaces `path` with `bytes`.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_with(path, |temp| {
        std::fs::write(temp, bytes).with_context(|| format!("cannot write {}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temporary_behind() {
        let dir = std::env::temp_dir().join(format!("meridian-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.bin");
        write(&path, b"first").unwrap();
        write(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let failed = replace_with(&path, |temp| {
            std::fs::write(temp, b"torn")?;
            anyhow::bail!("disk full")
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
