//! Finding NVRTC and probing for a driver without panicking.
//!
//! cudarc loads its libraries by name through the dynamic loader and panics when a name is
//! not found, so nothing here calls into cudarc before checking that the library is there:
//! - NVRTC is looked up in `$MERIDIAN_NVRTC` (a file or folder), `$VIRTUAL_ENV`'s NVIDIA
//!   wheels, and the folder the build script found in the project's `.venv`; the first
//!   match is opened by absolute path with `RTLD_GLOBAL` and kept open, so cudarc's later
//!   open by soname finds the loaded copy. Failing all of these, the loader's own search
//!   (`LD_LIBRARY_PATH`, system folders) is tried.
//! - The driver (`libcuda`) comes with the GPU's kernel module, never with a wheel: it is
//!   probed with cudarc's own presence check, then initialised and asked for a device count.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{KernelError, Result};

/// The folder the build script found (if any).
const BUILD_TIME_DIR: Option<&str> = option_env!("MERIDIAN_NVRTC_DIR");

fn device_err(reason: impl Into<String>) -> KernelError {
    KernelError::Device { reason: reason.into() }
}

/// Library folders to search for NVRTC, most specific first.
fn nvrtc_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(p) = std::env::var_os("MERIDIAN_NVRTC").map(PathBuf::from) {
        dirs.push(if p.is_file() { p.parent().map(Path::to_path_buf).unwrap_or(p) } else { p });
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").map(PathBuf::from) {
        if let Ok(entries) = std::fs::read_dir(venv.join("lib")) {
            let mut pythons: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            pythons.sort();
            for py in pythons {
                for sub in ["cu13", "cuda_nvrtc", "cu12"] {
                    dirs.push(py.join("site-packages/nvidia").join(sub).join("lib"));
                }
            }
        }
    }
    if let Some(d) = BUILD_TIME_DIR {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

/// The NVRTC library file in `dir`, preferring the plain soname over the `.alt` build.
fn nvrtc_in(dir: &Path) -> Option<(PathBuf, Vec<PathBuf>)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    let main = names
        .iter()
        .find(|n| n.starts_with("libnvrtc.so") && !n.contains(".alt"))
        .map(|n| dir.join(n))?;
    // NVRTC opens its builtins library by name at compile time; loading it first makes
    // that lookup succeed without a search path.
    let builtins = names
        .iter()
        .filter(|n| n.starts_with("libnvrtc-builtins.so") && !n.contains(".alt"))
        .map(|n| dir.join(n))
        .collect();
    Some((main, builtins))
}

#[cfg(unix)]
fn open_global(path: &Path) -> bool {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading a shared library runs its initialisers; NVRTC's are those of a plain
    // C library. The handle is leaked on purpose: the library stays for the process.
    match unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) } {
        Ok(lib) => {
            std::mem::forget(lib);
            true
        }
        Err(_) => false,
    }
}

#[cfg(not(unix))]
fn open_global(_path: &Path) -> bool {
    false
}

/// Makes NVRTC loadable (once per process) and reports where it came from.
///
/// Errors with [`KernelError::Device`] naming the folders searched when it is nowhere.
pub fn ensure_nvrtc() -> Result<&'static str> {
    static FOUND: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let dirs = nvrtc_dirs();
        for dir in &dirs {
            if let Some((main, builtins)) = nvrtc_in(dir) {
                for b in &builtins {
                    open_global(b);
                }
                if open_global(&main) {
                    return Ok(main.display().to_string());
                }
            }
        }
        // SAFETY: only tries to open the library by its candidate names.
        if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Ok("the dynamic loader's search path".to_string());
        }
        Err(format!(
            "libnvrtc not found in {dirs:?} nor on the loader's search path; \
             set MERIDIAN_NVRTC to the library or its folder"
        ))
    });
    match found {
        Ok(s) => Ok(s.as_str()),
        Err(e) => Err(device_err(e.clone())),
    }
}

/// Number of CUDA devices, or why there are none usable: no driver library, a driver that
/// fails to initialise, or zero devices. Never panics; the answer is computed once.
pub fn device_count() -> Result<usize> {
    static PROBE: OnceLock<std::result::Result<usize, String>> = OnceLock::new();
    let probe = PROBE.get_or_init(|| {
        // cudarc panics in CudaContext::new when libcuda is missing; check presence first.
        // SAFETY: only tries to open the library by its candidate names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("no CUDA driver (libcuda) on this machine".to_string());
        }
        let count = std::panic::catch_unwind(|| {
            cudarc::driver::result::init()?;
            cudarc::driver::result::device::get_count()
        });
        match count {
            Ok(Ok(n)) if n > 0 => Ok(n as usize),
            Ok(Ok(_)) => Err("the CUDA driver reports no device".to_string()),
            Ok(Err(e)) => Err(format!("the CUDA driver failed to initialise: {e}")),
            Err(_) => Err("the CUDA driver could not be loaded".to_string()),
        }
    });
    match probe {
        Ok(n) => Ok(*n),
        Err(e) => Err(device_err(e.clone())),
    }
}

/// Whether a CUDA device can be used (see [`device_count`]).
pub fn cuda_available() -> bool {
    device_count().is_ok()
}
