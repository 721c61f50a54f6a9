//! One device's loaded kernels and the launches of every primitive.
//!
//! Functions that take raw device pointers (`u64`, as LibTorch's `data_ptr()` gives them)
//! are `unsafe`: the caller promises that each points to at least the stated number of
//! elements on this backend's device and stays allocated until the call returns (calls
//! that return host data synchronize first; the others only enqueue on the stream, and
//! stream order keeps later LibTorch work behind them, see the module doc).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PushKernelArg, ValidAsZeroBits,
};

use super::loader::device_count;
use super::source::module_image;
use crate::aggregate::{Contribution, MeanOver};
use crate::chunks::ChunkSpec;
use crate::dct::DctPlan;
use crate::error::{invalid, KernelError, Result};
use crate::quant::{Bits, QuantConfig, Quantized, Rounding, Scheme, SchemeTag};
use crate::sparse::Sparse;

/// Threads per block; must match `MERIDIAN_THREADS` in prelude.cuh.
pub(crate) const THREADS: u32 = 256;
/// Largest DCT tile a block holds; must match `MERIDIAN_MAX_TILE`.
pub(crate) const MAX_TILE: usize = 4096;
const NO_ERROR: u32 = u32::MAX;

pub(crate) fn device_err(reason: impl Into<String>) -> KernelError {
    KernelError::Device { reason: reason.into() }
}

fn drv(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> KernelError {
    move |e| device_err(format!("{what}: {e:?}"))
}

/// The geometry of a chunked DCT as the kernels take it (`TileGeometry` in dct.cuh).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TileGeometry {
    rows: u32,
    cols: u32,
    rc: u32,
    cc: u32,
    tiles_per_row: u32,
    line: u32,
}

// SAFETY: a plain `#[repr(C)]` struct of u32s, laid out as the C struct it mirrors.
unsafe impl DeviceRepr for TileGeometry {}

/// Longest line the kernels transform (`MERIDIAN_MAX_LINE` in dct.cuh).
pub(crate) const MAX_LINE: usize = 64;

impl TileGeometry {
    /// The geometry of `plan`, or an error when a chunk exceeds what the kernels hold.
    pub(crate) fn of(plan: &DctPlan) -> Result<Self> {
        let (r, c) = (plan.rows(), plan.cols());
        if r.chunk > MAX_LINE || c.chunk > MAX_LINE || plan.tile_len() > MAX_TILE {
            return Err(device_err(format!(
                "DCT chunks of {} x {} exceed the {MAX_LINE} points per line the kernels hold",
                r.chunk, c.chunk
            )));
        }
        let u = |v: usize| u32::try_from(v).map_err(|_| invalid("shape", "exceeds u32"));
        Ok(Self {
            rows: u(r.len)?,
            cols: u(c.len)?,
            rc: u(r.chunk)?,
            cc: u(c.chunk)?,
            tiles_per_row: u(c.padded / c.chunk)?,
            // As `DctPlan::line`: a plan with one row (or one column) is a line plan.
            line: if r.len == 1 {
                1
            } else if c.len == 1 {
                2
            } else {
                0
            },
        })
    }
}

/// One dimension's transform as the kernels take it (`DimDev` in dct.cuh): device
/// addresses of its tables and basis.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DimDev {
    gather: u64,
    tab: u64,
    c: u64,
    n: u32,
    fast: u32,
}

// SAFETY: `#[repr(C)]`, three 8-byte addresses then two u32s, as the C struct (which holds
// three pointers then two u32s) on a 64-bit device.
unsafe impl DeviceRepr for DimDev {}

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
        // SAFETY: each kernel's arguments are listed by its caller in this module in the
        // order and types of its CUDA signature, with pointers to buffers large enough for
        // the grid it is launched with.
        unsafe { b.launch(cfg) }.map_err(drv(name))?;
        Ok(())
    }

    /// Chunked DCT of `plan` from `x` (`plan.input_len()` floats) into `coeffs`
    /// (`plan.coeff_len()` floats), tile-major as [`DctPlan::forward`].
    ///
    /// # Safety
    /// `x` and `coeffs` must be device addresses of that many floats.
    pub unsafe fn dct_forward(&self, bases: &DctBases, x: u64, coeffs: u64) -> Result<()> {
        let (g, (rd, cd)) = (bases.geometry, bases.dims());
        self.launch("dct_forward_tiles", blocks(bases.tiles)?, &[&x, &g, &rd, &cd, &coeffs])
    }

    /// Inverse of [`CudaBackend::dct_forward`]: `coeffs` back to `out` (`input_len` floats).
    ///
    /// # Safety
    /// As [`CudaBackend::dct_forward`].
    pub unsafe fn dct_inverse(&self, bases: &DctBases, coeffs: u64, out: u64) -> Result<()> {
        let (g, (rd, cd)) = (bases.geometry, bases.dims());
        self.launch("dct_inverse_tiles", blocks(bases.tiles)?, &[&coeffs, &g, &rd, &cd, &out])
    }

    /// [`crate::topk::topk_per_chunk`] of the `spec.len` floats at `x`, into `out` (host).
    /// Same output, same errors (the first non-finite position).
    ///
    /// # Safety
    /// `x` must be a device address of `spec.len` floats.
    pub unsafe fn topk_per_chunk(&self, x: u64, spec: &ChunkSpec, out: &mut Sparse) -> Result<()> {
        out.clear();
        let spec = ChunkSpec::new(spec.len, spec.chunk_len, spec.k)?;
        let total = spec.total_k();
        let idx = self.zeros::<u32>(total)?;
        let val = self.zeros::<f32>(total)?;
        let bad = self.error_slot()?;
        let last = spec.chunk_range(spec.num_chunks() - 1).len();
        let (len, chunk, k) =
            (u32_of("len", spec.len)?, u32_of("chunk_len", spec.chunk_len)?, spec.k as u32);
        let k_last = spec.k_for(last) as u32;
        self.launch(
            "topk_chunks",
            blocks(spec.num_chunks())?,
            &[&x, &len, &chunk, &k, &k_last, &idx.ptr(), &val.ptr(), &bad.ptr()],
        )?;
        if let Some(i) = self.read_error(&bad)? {
            let mut v = [0f32];
            // SAFETY: `i` is a position below `spec.len`, reported by the kernel.
            unsafe { self.read_raw(x + 4 * u64::from(i), &mut v) }?;
            return Err(KernelError::NonFinite { what: "x", index: i as usize, value: v[0] });
        }
        out.indices = self.download(&idx)?;
        out.values = self.download(&val)?;
        Ok(())
    }

    /// Quantizes `n` floats at `values` under `cfg` ([`crate::quant::quantize`]'s bytes),
    /// leaving each value's reconstruction in `deq` (`n` floats) on the device.
    ///
    /// # Safety
    /// `values` and `deq` must be device addresses of `n` floats; `values` all finite.
    pub unsafe fn quantize(
        &self,
        values: u64,
        n: usize,
        cfg: &QuantConfig,
        deq: u64,
    ) -> Result<Quantized> {
        let plan = QuantPlan::new(cfg, n)?;
        let codes = self.zeros::<u8>(n)?;
        let params = self.zeros::<f32>(plan.params)?;
        let packed = self.zeros::<u8>(plan.packed)?;
        // SAFETY: the caller's contract; the scratch buffers are sized by `plan`.
        unsafe { self.quantize_into(&plan, values, codes.ptr(), params.ptr(), packed.ptr(), deq) }?;
        plan.finish(self.download(&packed)?, self.download(&params)?)
    }

    /// Enqueues quantization (see [`QuantPlan`]).
    pub(crate) unsafe fn quantize_into(
        &self,
        plan: &QuantPlan,
        values: u64,
        codes: u64,
        params: u64,
        packed: u64,
        deq: u64,
    ) -> Result<()> {
        if plan.n == 0 {
            return Ok(());
        }
        let n = plan.n as u32;
        self.launch(
            "quantize_blocks",
            blocks(plan.n.div_ceil(plan.block))?,
            &[
                &values,
                &n,
                &(plan.block as u32),
                &plan.bits.count(),
                &plan.scheme,
                &plan.clip,
                &plan.stochastic,
                &plan.seed,
                &params,
                &codes,
                &deq,
            ],
        )?;
        self.launch(
            "pack_codes",
            grid_for(plan.packed)?,
            &[&codes, &n, &plan.bits.count(), &packed],
        )
    }

    /// [`crate::aggregate::scatter_mean`] into the `len` floats at `out`: the same bits
    /// (contributions added in ascending worker id, one launch each, then one division).
    ///
    /// # Safety
    /// `out` must be a device address of `len` floats.
    pub unsafe fn scatter_mean(
        &self,
        contribs: &[Contribution<'_>],
        mode: MeanOver,
        out: u64,
        len: usize,
    ) -> Result<()> {
        let len32 = u32_of("len", len)?;
        let workers = match mode {
            MeanOver::Contributors => 0,
            MeanOver::AllWorkers(n) => {
                if n == 0 || (n as usize) < contribs.len() {
                    return Err(invalid(
                        "mode",
                        format!("AllWorkers({n}) for {} contributions", contribs.len()),
                    ));
                }
                n
            }
        };
        let mut order: Vec<&Contribution<'_>> = contribs.iter().collect();
        order.sort_unstable_by_key(|c| c.worker);
        if let Some(w) = order.windows(2).find(|w| w[0].worker == w[1].worker) {
            return Err(KernelError::DuplicateContributor { id: w[0].worker });
        }
        for c in &order {
            c.sparse.validate(len)?;
        }
        let counts = match mode {
            MeanOver::Contributors => Some(self.zeros::<u32>(len)?),
            MeanOver::AllWorkers(_) => None,
        };
        let counts_ptr = counts.as_ref().map_or(0u64, DeviceBuffer::ptr);
        self.ctx.bind_to_thread().map_err(drv("bind"))?;
        // SAFETY: the caller's contract; +0.0 is all-zero bits.
        unsafe {
            cudarc::driver::result::memset_d8_async(out, 0, len * 4, self.stream.cu_stream())
        }
        .map_err(drv("memset"))?;
        for c in order {
            let idx = self.upload(&c.sparse.indices)?;
            let val = self.upload(&c.sparse.values)?;
            let count = c.sparse.len() as u32;
            self.launch(
                "scatter_add",
                grid_for(c.sparse.len())?,
                &[&idx.ptr(), &val.ptr(), &count, &out, &counts_ptr],
            )?;
        }
        let bad = self.error_slot()?;
        self.launch(
            "mean_finish",
            grid_for(len)?,
            &[&out, &counts_ptr, &workers, &len32, &bad.ptr()],
        )?;
        if let Some(i) = self.read_error(&bad)? {
            let mut v = [0f32];
            // SAFETY: `i < len`.
            unsafe { self.read_raw(out + 4 * u64::from(i), &mut v) }?;
            return Err(KernelError::NonFinite {
                what: "aggregated sum",
                index: i as usize,
                value: v[0],
            });
        }
        Ok(())
    }

    /// First non-finite of the `n` floats at `x`, as [`crate::error::check_finite`].
    ///
    /// # Safety
    /// `x` must be a device address of `n` floats.
    pub unsafe fn check_finite(&self, what: &'static str, x: u64, n: usize) -> Result<()> {
        let bad = self.error_slot()?;
        self.launch("first_non_finite", grid_for(n)?, &[&x, &u32_of("len", n)?, &bad.ptr()])?;
        if let Some(i) = self.read_error(&bad)? {
            let mut v = [0f32];
            // SAFETY: `i < n`.
            unsafe { self.read_raw(x + 4 * u64::from(i), &mut v) }?;
            return Err(KernelError::NonFinite { what, index: i as usize, value: v[0] });
        }
        Ok(())
    }

    /// [`crate::feedback::subtract_sent`] on the `len` floats at `buffer`.
    ///
    /// # Safety
    /// `buffer` must be a device address of `len` floats.
    pub unsafe fn subtract_sent(&self, buffer: u64, len: usize, sent: &Sparse) -> Result<()> {
        sent.validate(len)?;
        let idx = self.upload(&sent.indices)?;
        let val = self.upload(&sent.values)?;
        // SAFETY: the caller's contract; the selection was validated against `len`.
        unsafe { self.subtract_sent_device(buffer, idx.ptr(), val.ptr(), sent.len()) }
    }

    /// `buffer[idx[i]] -= val[i]` for a selection already on the device and validated.
    pub(crate) unsafe fn subtract_sent_device(
        &self,
        buffer: u64,
        idx: u64,
        val: u64,
        count: usize,
    ) -> Result<()> {
        let count32 = u32_of("count", count)?;
        self.launch("subtract_sent", grid_for(count)?, &[&buffer, &idx, &val, &count32])
    }

    /// `out[idx[i]] += val[i]` for a selection already on the device with distinct indices.
    pub(crate) unsafe fn scatter_add_device(
        &self,
        out: u64,
        idx: u64,
        val: u64,
        count: usize,
    ) -> Result<()> {
        let count32 = u32_of("count", count)?;
        self.launch("scatter_add", grid_for(count)?, &[&idx, &val, &count32, &out, &0u64])
    }

    /// [`crate::feedback::subtract_dense`]: checks `reconstructed` first, changes nothing on
    /// error.
    ///
    /// # Safety
    /// Both must be device addresses of `len` floats.
    pub unsafe fn subtract_dense(&self, buffer: u64, reconstructed: u64, len: usize) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { self.check_finite("reconstructed", reconstructed, len) }?;
        self.launch(
            "subtract_dense",
            grid_for(len)?,
            &[&buffer, &reconstructed, &u32_of("len", len)?],
        )
    }

    /// [`crate::feedback::accumulate`]: `error ← decay·error + update`, one fused
    /// multiply-add per element as on the CPU.
    ///
    /// # Safety
    /// Both must be device addresses of `len` floats.
    pub unsafe fn accumulate(&self, error: u64, decay: f32, update: u64, len: usize) -> Result<()> {
        if !decay.is_finite() {
            return Err(invalid("decay", format!("{decay} is not finite")));
        }
        // SAFETY: the caller's contract.
        unsafe { self.check_finite("update", update, len) }?;
        self.launch("accumulate", grid_for(len)?, &[&error, &decay, &update, &u32_of("len", len)?])
    }

    /// [`crate::pack::encode_chunked`] of `spec.total_k()` indices at `idx` (device), appended
    /// to `buf`: the same bytes. The indices must be what a per-chunk top-k produced.
    ///
    /// # Safety
    /// `idx` must be a device address of `spec.total_k()` u32.
    pub unsafe fn encode_chunked(
        &self,
        idx: u64,
        spec: &ChunkSpec,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let plan = IndexPlan::new(spec)?;
        let words = self.zeros::<u32>(plan.words())?;
        // SAFETY: the caller's contract.
        unsafe { self.pack_indices(&plan, idx, words.ptr()) }?;
        plan.append(&self.download(&words)?, buf);
        Ok(())
    }

    pub(crate) unsafe fn pack_indices(&self, plan: &IndexPlan, idx: u64, words: u64) -> Result<()> {
        let total = plan.total_k as u32;
        if plan.fixed {
            self.launch(
                "pack_fixed",
                grid_for(plan.total_k)?,
                &[&idx, &total, &plan.k, &plan.chunk_len, &plan.width, &words],
            )
        } else {
            self.launch("pack_bitmap", grid_for(plan.total_k)?, &[&idx, &total, &words])
        }
    }

    /// [`crate::pack::decode_chunked`] on the device for the fixed form (the bitmap form,
    /// chosen only for dense selections, is decoded by the CPU decoder): the same indices
    /// and the same rejections.
    pub fn decode_chunked(&self, bytes: &[u8], spec: &ChunkSpec) -> Result<(Vec<u32>, usize)> {
        let plan = IndexPlan::new(spec)?;
        if !plan.fixed || bytes.first() != Some(&crate::pack::TAG_FIXED) {
            return crate::pack::decode_chunked(bytes, spec);
        }
        let body = bytes
            .get(1..1 + plan.payload)
            .ok_or_else(|| crate::error::malformed("chunked index encoding", "truncated"))?;
        let used_bits = plan.total_k as u64 * u64::from(plan.width);
        if used_bits % 8 != 0 {
            let last = body.last().copied().unwrap_or(0);
            if last >> (used_bits % 8) != 0 {
                return Err(crate::error::malformed("chunked index encoding", "non-zero padding"));
            }
        }
        let dev = self.upload(body)?;
        let idx = self.zeros::<u32>(plan.total_k)?;
        let bad = self.error_slot()?;
        let (total, len) = (plan.total_k as u32, spec.len as u32);
        self.launch(
            "unpack_fixed",
            grid_for(plan.total_k)?,
            &[
                &dev.ptr(),
                &(body.len() as u64),
                &total,
                &plan.k,
                &plan.chunk_len,
                &len,
                &plan.width,
                &idx.ptr(),
                &bad.ptr(),
            ],
        )?;
        if let Some(e) = self.read_error(&bad)? {
            return Err(crate::error::malformed(
                "chunked index encoding",
                format!("entry {e}: offset not below its chunk's length or not increasing"),
            ));
        }
        Ok((self.download(&idx)?, 1 + plan.payload))
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

/// One dimension's tables on the device.
#[derive(Debug)]
struct DimTables {
    gather: DeviceBuffer<u32>,
    tab: DeviceBuffer<f32>,
    c: DeviceBuffer<f32>,
    n: u32,
    fast: bool,
}

impl DimTables {
    fn new(backend: &CudaBackend, n: usize) -> Result<Self> {
        let (gather, tab, fast) = match crate::dct::fast_tables(n) {
            Some((g, t)) => (g, t, true),
            None => (Vec::new(), Vec::new(), false),
        };
        Ok(Self {
            gather: backend.upload(&gather)?,
            tab: backend.upload(&tab)?,
            c: backend.upload(&crate::dct::basis(n))?,
            n: u32_of("chunk", n)?,
            fast,
        })
    }

    fn dev(&self) -> DimDev {
        DimDev {
            gather: self.gather.ptr(),
            tab: self.tab.ptr(),
            c: self.c.ptr(),
            n: self.n,
            fast: u32::from(self.fast),
        }
    }
}

/// A DCT plan's tables on the device: for each dimension the fast path's permutation and
/// constants or the dense basis, the same `f32` values the CPU computes with.
#[derive(Debug)]
pub struct DctBases {
    pub(crate) geometry: TileGeometry,
    pub(crate) tiles: usize,
    rows: DimTables,
    cols: DimTables,
}

impl DctBases {
    /// Uploads `plan`'s tables. Errors when a chunk exceeds 64 points.
    pub fn new(backend: &CudaBackend, plan: &DctPlan) -> Result<Self> {
        let geometry = TileGeometry::of(plan)?;
        Ok(Self {
            geometry,
            tiles: plan.num_tiles(),
            rows: DimTables::new(backend, plan.rows().chunk)?,
            cols: DimTables::new(backend, plan.cols().chunk)?,
        })
    }

    /// The row and column dimensions as kernel arguments.
    pub(crate) fn dims(&self) -> (DimDev, DimDev) {
        (self.rows.dev(), self.cols.dev())
    }
}

/// What quantizing `n` values under a configuration takes and produces.
#[derive(Debug, Clone)]
pub(crate) struct QuantPlan {
    pub(crate) n: usize,
    pub(crate) block: usize,
    pub(crate) bits: Bits,
    pub(crate) scheme: u32,
    pub(crate) clip: f32,
    pub(crate) stochastic: u32,
    pub(crate) seed: u64,
    /// Parameters in all.
    pub(crate) params: usize,
    /// Bytes of packed codes.
    pub(crate) packed: usize,
}

impl QuantPlan {
    pub(crate) fn new(cfg: &QuantConfig, n: usize) -> Result<Self> {
        cfg.validate()?;
        u32_of("values", n)?;
        // One CUDA block per quantization block.
        blocks(n.div_ceil(cfg.block))?;
        let (scheme, clip, per_block) = match cfg.scheme {
            Scheme::Absmax => (0, 0.0, 1),
            Scheme::Codebook { clip_sigmas } => (1, clip_sigmas, 1usize << cfg.bits.count()),
        };
        let (stochastic, seed) = match cfg.rounding {
            Rounding::Nearest => (0, 0),
            Rounding::Stochastic { seed } => (1, seed),
        };
        let per_byte = 8 / cfg.bits.count() as usize;
        Ok(Self {
            n,
            block: cfg.block,
            bits: cfg.bits,
            scheme,
            clip,
            stochastic,
            seed,
            params: n.div_ceil(cfg.block) * per_block,
            packed: n.div_ceil(per_byte),
        })
    }

    pub(crate) fn finish(&self, codes: Vec<u8>, params: Vec<f32>) -> Result<Quantized> {
        let q = Quantized {
            bits: self.bits,
            scheme: if self.scheme == 0 { SchemeTag::Absmax } else { SchemeTag::Codebook },
            len: self.n,
            block: self.block,
            codes,
            params,
        };
        q.validate()?;
        Ok(q)
    }
}

/// The chunked index encoding's form for a spec, as [`crate::pack`] chooses it.
#[derive(Debug, Clone)]
pub(crate) struct IndexPlan {
    pub(crate) fixed: bool,
    pub(crate) width: u32,
    pub(crate) total_k: usize,
    pub(crate) payload: usize,
    pub(crate) k: u32,
    pub(crate) chunk_len: u32,
}

impl IndexPlan {
    pub(crate) fn new(spec: &ChunkSpec) -> Result<Self> {
        let p = crate::pack::chunked_plan(spec)?;
        Ok(Self {
            fixed: p.fixed,
            width: p.width,
            total_k: p.total_k,
            payload: p.payload,
            k: u32_of("k", spec.k)?,
            chunk_len: u32_of("chunk_len", spec.chunk_len)?,
        })
    }

    /// u32 words the packed stream occupies.
    pub(crate) fn words(&self) -> usize {
        self.payload.div_ceil(4)
    }

    /// Appends the tag and the stream's first `payload` bytes.
    pub(crate) fn append(&self, words: &[u32], buf: &mut Vec<u8>) {
        buf.push(if self.fixed { crate::pack::TAG_FIXED } else { crate::pack::TAG_BITMAP });
        let start = buf.len();
        for w in words {
            buf.extend_from_slice(&w.to_le_bytes());
        }
        buf.truncate(start + self.payload);
    }
}
