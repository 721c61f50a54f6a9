//! Replacing a file so that a reader sees the old contents or the new, never a torn file:
//! write a temporary sibling, flush it to disk, rename it over the target. An interrupted
//! or failed write leaves the target as it was.
//!
//! Only regular files are replaced. A target that exists as anything else (a symlink, a
//! device such as `/dev/null`, a FIFO, a socket, a directory) is refused with an error
//! naming it: the rename would swap the special file itself for a regular one (as root,
//! `/dev/null` would become a file) and silently cut a symlink from where it pointed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};

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

/// What kind of non-regular file `file_type` is, in words, for an error message.
fn kind_name(file_type: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Refuses `path` if it exists and is not a regular file (a symlink counts as not regular,
/// whatever it points to: replacing it would cut the link). A path that does not exist yet
/// is fine. Checked just before the rename: a file swapped in between by another process
/// is beyond what a rename can guard against.
pub fn check_target(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => Ok(()),
        Ok(meta) => bail!(
            "{} is {}, not a regular file: refusing to replace it; name a regular file or a \
             new path",
            path.display(),
            kind_name(meta.file_type())
        ),
        // Not there (or not inspectable): the rename itself reports any real problem.
        Err(_) => Ok(()),
    }
}

/// Replaces `path` with what `fill` writes to the temporary path it is given. Refused,
/// before anything is written, when `path` exists and is not a regular file (see
/// [`check_target`]).
pub fn replace_with(path: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    check_target(path)?;
    let temp = temp_sibling(path)?;
    let result = fill(&temp)
        .and_then(|()| {
            File::open(&temp)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot flush {}", temp.display()))
        })
        // Again just before the rename: `fill` may have taken long enough for the target
        // to change.
        .and_then(|()| check_target(path))
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

    #[test]
    fn special_files_and_symlinks_are_refused_and_left_alone() {
        let dir =
            std::env::temp_dir().join(format!("meridian-atomic-special-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("target.bin");
        std::fs::write(&target, b"kept").unwrap();
        let link = dir.join("link.bin");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let dangling = dir.join("dangling.bin");
        std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
        let socket = dir.join("socket.bin");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let sub = dir.join("sub");
        std::fs::create_dir(&sub).unwrap();
        for (path, kind) in [
            (&link, "a symbolic link"),
            (&dangling, "a symbolic link"),
            (&socket, "a socket"),
            (&sub, "a directory"),
        ] {
            let err = format!("{:#}", write(path, b"new").unwrap_err());
            assert!(err.contains(&path.display().to_string()) && err.contains(kind), "{err}");
        }
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(std::fs::symlink_metadata(&dangling).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"kept");
        // A device is only inspected, never written, here: as root a broken check would
        // otherwise replace the machine's /dev/null.
        let err = check_target(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(err.contains("/dev/null is a character device"), "{err}");
        // Nothing was written: no temporary left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
