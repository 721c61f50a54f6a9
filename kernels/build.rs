//! Finds the NVRTC library that the project's Python environment ships (the CUDA 13 wheels
//! LibTorch depends on) and records its folder, so that the CUDA backend can load it by
//! absolute path without anyone setting `LD_LIBRARY_PATH`. Nothing here is needed to build:
//! when no environment is found, the run-time search falls back to other places.

use std::path::{Path, PathBuf};

fn main() {
    // Not the venv itself: cargo would rescan its whole tree on every build. A venv made
    // after this ran is still found at run time through VIRTUAL_ENV (see cuda::loader).
    println!("cargo:rerun-if-changed=build.rs");
    // Only the project's own venv: reading VIRTUAL_ENV here would rebuild this crate and
    // everything above it whenever a shell with and one without it alternate.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_default();
    if let Some(dir) = nvrtc_dir(&manifest.join("../.venv")) {
        println!("cargo:rustc-env=MERIDIAN_NVRTC_DIR={}", dir.display());
    }
}

/// `<venv>/lib/python3.*/site-packages/nvidia/{cu13,cuda_nvrtc}/lib` holding libnvrtc.
fn nvrtc_dir(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("python")))
        .collect();
    pythons.sort();
    for py in pythons {
        for sub in ["cu13", "cuda_nvrtc", "cu12"] {
            let dir = py.join("site-packages/nvidia").join(sub).join("lib");
            let found = std::fs::read_dir(&dir).ok().is_some_and(|entries| {
                entries.filter_map(|e| e.ok()).any(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with("libnvrtc.so")
                })
            });
            if found {
                return Some(dir.canonicalize().unwrap_or(dir));
            }
        }
    }
    None
}
