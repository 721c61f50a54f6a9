//! The CUDA C sources and their compilation with NVRTC.
//!
//! Every kernel source is compiled behind `prelude.cuh` (shared device helpers). The
//! process-wide module is all sources in one program, compiled once per architecture and
//! cached ([`module_image`]).

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::sync::{Mutex, OnceLock};

use cudarc::nvrtc::{result as nvrtc, sys};

use super::loader::ensure_nvrtc;
use crate::error::{KernelError, Result};

/// Device helpers compiled in front of every source: `prelude.cuh` (types, block-wide
/// selection, bit packing) and `dct.cuh` (the DCT's per-line and per-tile arithmetic).
pub const PRELUDE: &str =
    concat!(include_str!("../../cuda/prelude.cuh"), "\n", include_str!("../../cuda/dct.cuh"));

/// `dct.cuh` alone: it also compiles as host C++ (see the tests).
pub const DCT_HEADER: &str = include_str!("../../cuda/dct.cuh");

/// Each kernel source, by file name.
pub const SOURCES: &[(&str, &str)] = &[
    ("dct.cu", include_str!("../../cuda/dct.cu")),
    ("topk.cu", include_str!("../../cuda/topk.cu")),
    ("quant.cu", include_str!("../../cuda/quant.cu")),
    ("pack.cu", include_str!("../../cuda/pack.cu")),
    ("aggregate.cu", include_str!("../../cuda/aggregate.cu")),
    ("feedback.cu", include_str!("../../cuda/feedback.cu")),
    ("compress.cu", include_str!("../../cuda/compress.cu")),
];

/// Options every program is compiled with. `--fmad=false` forbids contracting a multiply
/// and an add into one FMA, which would change rounding (see the module doc); precise
/// division and square root are NVRTC's defaults and are spelled out so that they stay.
pub const OPTIONS: &[&str] =
    &["--fmad=false", "--prec-div=true", "--prec-sqrt=true", "--ftz=false", "--std=c++17"];

/// What NVRTC produced for one program.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The loadable image (CUBIN for `sm_XX`, PTX text for `compute_XX`).
    pub image: Vec<u8>,
    /// NVRTC's log; empty when the source compiled without a diagnostic.
    pub log: String,
}

fn device_err(reason: impl Into<String>) -> KernelError {
    KernelError::Device { reason: reason.into() }
}

/// Compiles `source` (the prelude is prepended) for `arch` (`sm_80`, `compute_90`, ...).
/// A compile error is an error carrying NVRTC's log; warnings come back in the log.
pub fn compile(name: &str, source: &str, arch: &str) -> Result<Compiled> {
    ensure_nvrtc()?;
    let text = format!("{PRELUDE}\n{source}");
    let src = CString::new(text).map_err(|_| device_err(format!("{name}: NUL in source")))?;
    let cname = CString::new(name).map_err(|_| device_err("NUL in program name"))?;
    let prog = nvrtc::create_program(&src, Some(&cname))
        .map_err(|e| device_err(format!("{name}: nvrtcCreateProgram: {e:?}")))?;
    let mut options: Vec<String> = OPTIONS.iter().map(|s| (*s).to_string()).collect();
    options.push(format!("--gpu-architecture={arch}"));
    // SAFETY: `prog` was created above and is destroyed once, below.
    let compiled = unsafe { nvrtc::compile_program(prog, &options) };
    // SAFETY: as above.
    let log = unsafe { nvrtc::get_program_log(prog) }.map(c_chars_to_string).unwrap_or_default();
    let image = match compiled {
        Err(e) => Err(device_err(format!("{name} for {arch} failed to compile ({e:?}):\n{log}"))),
        // SAFETY: as above; the program compiled.
        Ok(()) => unsafe { image_of(prog, arch.starts_with("sm_")) }
            .map_err(|e| device_err(format!("{name}: reading the compiled image: {e}"))),
    };
    // SAFETY: as above.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    Ok(Compiled { image: image?, log: log.trim().to_string() })
}

/// The CUBIN (real architectures) or PTX (virtual ones) of a compiled program.
unsafe fn image_of(prog: sys::nvrtcProgram, cubin: bool) -> std::result::Result<Vec<u8>, String> {
    if !cubin {
        // SAFETY: the caller's contract.
        let ptx = unsafe { nvrtc::get_ptx(prog) }.map_err(|e| format!("{e:?}"))?;
        let mut bytes: Vec<u8> = ptx.into_iter().map(|c| c as u8).collect();
        if bytes.last() != Some(&0) {
            bytes.push(0);
        }
        return Ok(bytes);
    }
    let mut size = 0usize;
    // SAFETY: the caller's contract; `size` is a valid out-pointer.
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }.result().map_err(|e| format!("{e:?}"))?;
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` holds the `size` bytes NVRTC reported.
    unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast::<c_char>()) }
        .result()
        .map_err(|e| format!("{e:?}"))?;
    Ok(buf)
}

fn c_chars_to_string(v: Vec<c_char>) -> String {
    let bytes: Vec<u8> = v.into_iter().take_while(|&c| c != 0).map(|c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// All sources as one program: what a device loads.
pub fn module_source() -> String {
    SOURCES.iter().map(|(_, s)| *s).collect::<Vec<_>>().join("\n")
}

/// The module image for `arch`, compiled on first use and cached for the process. A
/// diagnostic in NVRTC's log is logged once (the compile tests keep the sources free of
/// them).
pub fn module_image(arch: &str) -> Result<Vec<u8>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Vec<u8>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut guard = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(image) = guard.get(arch) {
        return Ok(image.clone());
    }
    let compiled = compile("meridian_kernels.cu", &module_source(), arch)?;
    if !compiled.log.is_empty() {
        tracing::warn!(arch, log = %compiled.log, "NVRTC diagnostics for the CUDA kernels");
    }
    guard.insert(arch.to_string(), compiled.image.clone());
    Ok(compiled.image)
}
