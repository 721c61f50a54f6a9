//! Files the crate keeps (identities, run credentials, coordinator state), written so that
//! a crash never leaves a half-written one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` through a synced temporary file and a rename, so readers
/// see the old file or the new one, whole. `private` makes the file owner-only (unix).
/// On failure returns the path that failed with the OS error.
pub(crate) fn write_atomically(
    path: &Path,
    contents: &[u8],
    private: bool,
) -> Result<(), (PathBuf, std::io::Error)> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let at = |p: &Path| {
        let p = p.to_owned();
        move |e| (p, e)
    };
    let mut file = options.open(&tmp).map_err(at(&tmp))?;
    file.write_all(contents).map_err(at(&tmp))?;
    file.sync_all().map_err(at(&tmp))?;
    fs::rename(&tmp, path).map_err(at(path))?;
    // Make the rename itself durable (best effort: not every platform can open a folder).
    if let Some(dir) = path.parent() {
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}
