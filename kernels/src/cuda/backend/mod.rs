//! One device's loaded kernels and the launches of every primitive.
//!
//! Functions that take raw device pointers (`u64`, as LibTorch's `data_ptr()` gives them)
//! are `unsafe`: the caller promises that each points to at least the stated number of
//! elements on this backend's device and stays allocated until the call returns (calls
//! that return host data synchronize first; the others only enqueue on the stream, and
//! stream order keeps later LibTorch work behind them, see the module doc).
//!
//! This file holds the backend itself (loading, memory, launching); `primitives.rs` holds
//! the launches of every primitive, and `plans.rs` what those launches take: the DCT's
//! geometry and device tables, and the quantizer's and the index packer's sizes.

mod plans;
mod primitives;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PushKernelArg, ValidAsZeroBits,
};

use super::loader::device_count;
use super::source::module_image;
use crate::error::{invalid, KernelError, Result};

pub use plans::DctBases;
pub(crate) use plans::{IndexPlan, QuantPlan};

/// Threads per block; must match `MERIDIAN_THREADS` in prelude.cuh.
pub(crate) const THREADS: u32 = 256;
/// Largest DCT tile a block holds; must match `MERIDIAN_MAX_TILE`.
pub(crate) const MAX_TILE: usize = 4096;
/// Longest line the kernels transform (`MERIDIAN_MAX_LINE` in dct.cuh).
pub(crate) const MAX_LINE: usize = 64;
const NO_ERROR: u32 = u32::MAX;

pub(crate) fn device_err(reason: impl Into<String>) -> KernelError {
    KernelError::Device { reason: reason.into() }
}

fn drv(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> KernelError {
    move |e| device_err(format!("{what}: {e:?}"))
}

/// A buffer in device memory, owned by the backend that allocated it.
#[derive(Debug)]
pub struct DeviceBuffer<T> {
    slice: CudaSlice<T>,
    len: usize,
}

impl<T: DeviceRepr> DeviceBuffer<T> {
    /// Elements in the buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw device address, for kernels and for LibTorch (`Tensor::from_blob`).
    pub fn ptr(&self) -> u64 {
        self.slice.device_ptr(self.slice.stream()).0
    }
}

/// The kernels of one device, compiled and loaded once per process ([`CudaBackend::get`]).
#[derive(Debug)]
pub struct CudaBackend {
    ordinal: usize,
    arch: String,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    f: HashMap<&'static str, CudaFunction>,
}

const KERNELS: &[&str] = &[
    "dct_forward_tiles",
    "dct_inverse_tiles",
    "topk_chunks",
    "quantize_blocks",
    "pack_codes",
    "dequantize",
    "pack_fixed",
    "pack_bitmap",
    "unpack_fixed",
    "scatter_add",
    "mean_finish",
    "subtract_sent",
    "subtract_dense",
    "accumulate",
    "first_non_finite",
    "compress_dct",
    "compress_chunks",
];

/// Most blocks a grid holds along x (`gridDim.x`, 2^31 - 1 on every supported device): a
/// larger grid would fail at launch, so it is refused here with a typed error.
pub(crate) const MAX_GRID_X: usize = i32::MAX as usize;

/// One thread per element of `n`.
fn grid_for(n: usize) -> Result<LaunchConfig> {
    blocks(n.div_ceil(THREADS as usize))
}

/// `n` blocks of [`THREADS`] threads (at least one block).
pub(crate) fn blocks(n: usize) -> Result<LaunchConfig> {
    let n = n.max(1);
    if n > MAX_GRID_X {
        return Err(invalid("len", format!("{n} blocks exceed the {MAX_GRID_X} a grid holds")));
    }
    // Exact: `n` is below 2^31.
    let blocks = n as u32;
    Ok(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 })
}

fn u32_of(what: &'static str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| invalid(what, format!("{n} exceeds the u32 range")))
}

impl CudaBackend {
    /// The backend of device `ordinal`: probes for the driver first (never panics when
    /// none is installed), then compiles (once per architecture) and loads the kernels.
    /// Errors with [`KernelError::Device`] when there is no usable device or NVRTC.
    pub fn get(ordinal: usize) -> Result<Arc<Self>> {
        static BACKENDS: OnceLock<Mutex<HashMap<usize, Arc<CudaBackend>>>> = OnceLock::new();
        let map = BACKENDS.get_or_init(|| Mutex::new(HashMap::new()));
        let mut guard = map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = guard.get(&ordinal) {
            return Ok(b.clone());
        }
        let count = device_count()?;
        if ordinal >= count {
            return Err(device_err(format!("device {ordinal} requested, {count} present")));
        }
        let backend = Arc::new(Self::load(ordinal)?);
        guard.insert(ordinal, backend.clone());
        Ok(backend)
    }

    fn load(ordinal: usize) -> Result<Self> {
        let ctx = CudaContext::new(ordinal).map_err(drv("creating the context"))?;
        // One stream (the legacy default stream) orders everything, so cudarc's per-buffer
        // event tracking would only add work.
        // SAFETY: no buffer is shared between streams: all work goes to `stream`.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx.compute_capability().map_err(drv("compute capability"))?;
        let arch = format!("sm_{major}{minor}");
        let image = module_image(&arch)?;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(image))
            .map_err(drv("loading the module"))?;
        let mut f = HashMap::new();
        for &name in KERNELS {
            f.insert(name, module.load_function(name).map_err(drv("loading a kernel"))?);
        }
        let stream = ctx.default_stream();
        tracing::info!(ordinal, arch = %arch, "CUDA kernels loaded");
        Ok(Self { ordinal, arch, ctx, stream, _module: module, f })
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The architecture the kernels were compiled for (`sm_90`, ...).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    fn func(&self, name: &'static str) -> Result<&CudaFunction> {
        self.f.get(name).ok_or_else(|| device_err(format!("kernel {name} not loaded")))
    }

    /// Waits for everything queued on the backend's stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(drv("synchronize"))
    }

    /// A zeroed device buffer of `len` elements.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        let slice = self.stream.alloc_zeros::<T>(len.max(1)).map_err(drv("alloc"))?;
        Ok(DeviceBuffer { slice, len })
    }

    /// A device copy of `data`.
    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<DeviceBuffer<T>> {
        if data.is_empty() {
            // SAFETY: one element, never read (len 0).
            let slice = unsafe { self.stream.alloc::<T>(1) }.map_err(drv("alloc"))?;
            return Ok(DeviceBuffer { slice, len: 0 });
        }
        let slice = self.stream.clone_htod(data).map_err(drv("upload"))?;
        Ok(DeviceBuffer { slice, len: data.len() })
    }

    /// The buffer's contents on the host (synchronizes).
    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        buf: &DeviceBuffer<T>,
    ) -> Result<Vec<T>> {
        let mut out = vec![T::default(); buf.len];
        // SAFETY: the buffer holds at least `len` elements.
        unsafe { self.read_raw(buf.ptr(), &mut out) }?;
        Ok(out)
    }

    /// Copies `out.len()` elements from device address `src` (synchronizes).
    ///
    /// # Safety
    /// `src` must hold at least `out.len()` elements of `T` on this device.
    pub unsafe fn read_raw<T: DeviceRepr>(&self, src: u64, out: &mut [T]) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(drv("bind"))?;
        // SAFETY: the caller's contract; the stream is synchronized before returning.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(out, src, self.stream.cu_stream()) }
            .map_err(drv("download"))?;
        self.synchronize()
    }

    /// Copies `data` to device address `dst` (stream-ordered; `data` is read before return).
    ///
    /// # Safety
    /// `dst` must have room for `data.len()` elements of `T` on this device.
    pub unsafe fn write_raw<T: DeviceRepr>(&self, dst: u64, data: &[T]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(drv("bind"))?;
        // SAFETY: the caller's contract; synchronizing keeps `data` borrowed long enough.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, data, self.stream.cu_stream()) }
            .map_err(drv("upload"))?;
        self.synchronize()
    }

    /// Sets `bytes` bytes at device address `dst` to `value` (stream-ordered, no wait).
    ///
    /// # Safety
    /// `dst` must have room for `bytes` bytes on this device.
    pub unsafe fn fill_bytes(&self, dst: u64, value: u8, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(drv("bind"))?;
        // SAFETY: the caller's contract.
        unsafe {
            cudarc::driver::result::memset_d8_async(dst, value, bytes, self.stream.cu_stream())
        }
        .map_err(drv("memset"))
    }

    fn error_slot(&self) -> Result<DeviceBuffer<u32>> {
        self.upload(&[NO_ERROR])
    }

    fn read_error(&self, slot: &DeviceBuffer<u32>) -> Result<Option<u32>> {
        let v = self.download(slot)?;
        Ok(v.first().copied().filter(|&e| e != NO_ERROR))
    }

    /// Launches `name` with `cfg`; `args` are pushed in order.
    pub(crate) fn launch(
        &self,
        name: &'static str,
        cfg: LaunchConfig,
        args: &[&dyn Arg],
    ) -> Result<()> {
        let f = self.func(name)?;
        let mut b = self.stream.launch_builder(f);
        for a in args {
            a.push(&mut b);
        }
        // SAFETY: each kernel's arguments are listed by its caller (the primitives beside
        // this file, the compressor) in the order and types of its CUDA signature, with
        // pointers to buffers large enough for the grid it is launched with.
        unsafe { b.launch(cfg) }.map_err(drv(name))?;
        Ok(())
    }
}

/// Something pushed as a kernel argument.
pub(crate) trait Arg {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
}

impl<T: DeviceRepr> Arg for T {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
        b.arg(self);
    }
}
