//! The whole compression pipeline on the device: [`CudaCompressor`] is
//! [`crate::pipeline::Compressor`] for a tensor that lives in GPU memory.

use std::sync::Arc;

use cudarc::driver::LaunchConfig;

use super::backend::{
    blocks, device_err, CudaBackend, DctBases, DeviceBuffer, IndexPlan, QuantPlan,
};
use crate::aggregate::{Contribution, MeanOver};
use crate::chunks::ChunkSpec;
use crate::error::{KernelError, Result};
use crate::pipeline::{Compressed, Compressor, CompressorConfig, FORMAT_VERSION, TAG_PER_CHUNK};
use crate::sparse::Sparse;

/// [`Compressor`] on the device: the same configuration, the same byte encoding, the same
/// `sent` selection. The fused kernel reads each tile (or chunk) once, transforms it in
/// shared memory, selects its top k and packs the positions; a second kernel quantizes the
/// kept values. The bytes are identical to the CPU's, the DCT's coefficients included (see
/// the module doc).
///
/// Supports per-chunk selection, with DCT tiles of at most 64 × 64 elements; other
/// configurations are refused with [`KernelError::Device`] so callers use the CPU.
#[derive(Debug)]
pub struct CudaCompressor {
    backend: Arc<CudaBackend>,
    cpu: Compressor,
    spec: ChunkSpec,
    bases: Option<DctBases>,
    index: IndexPlan,
    quant: Option<QuantPlan>,
    /// The fused kernel's grid: one block per tile (DCT) or chunk.
    grid: LaunchConfig,
    idx: DeviceBuffer<u32>,
    val: DeviceBuffer<f32>,
    words: DeviceBuffer<u32>,
    bad: DeviceBuffer<u32>,
    codes: DeviceBuffer<u8>,
    params: DeviceBuffer<f32>,
    packed: DeviceBuffer<u8>,
    deq: DeviceBuffer<f32>,
    /// The input of the last `enqueue`, to report a non-finite value.
    last_input: u64,
}

impl CudaCompressor {
    /// A compressor for tensors of `shape` on `backend`'s device. Validates as
    /// [`Compressor::new`], and refuses what the device path does not implement.
    pub fn new(
        backend: Arc<CudaBackend>,
        config: CompressorConfig,
        shape: &[usize],
    ) -> Result<Self> {
        let cpu = Compressor::new(config, shape)?;
        let spec = *cpu
            .chunk_spec()
            .ok_or_else(|| device_err("global selection has no CUDA kernel; use the CPU"))?;
        let bases = cpu.dct_plan().map(|plan| DctBases::new(&backend, plan)).transpose()?;
        let index = IndexPlan::new(&spec)?;
        let units = bases.as_ref().map_or(spec.num_chunks(), |b| b.tiles);
        // A grid larger than the device takes is refused here, so callers use the CPU.
        let grid = blocks(units).map_err(|e| device_err(format!("fused compress: {e}")))?;
        let total = spec.total_k();
        let quant = config.values.as_ref().map(|q| QuantPlan::new(q, total)).transpose()?;
        let (params, packed) = quant.as_ref().map_or((0, 0), |q| (q.params, q.packed));
        let with_quant = |n: usize| if quant.is_some() { n } else { 0 };
        Ok(Self {
            idx: backend.zeros(total)?,
            val: backend.zeros(total)?,
            words: backend.zeros(index.words())?,
            bad: backend.zeros(1)?,
            codes: backend.zeros(with_quant(total))?,
            params: backend.zeros(params)?,
            packed: backend.zeros(packed)?,
            deq: backend.zeros(with_quant(total))?,
            last_input: 0,
            backend,
            cpu,
            spec,
            bases,
            index,
            quant,
            grid,
        })
    }

    /// Fills every scratch buffer with set bits, so that a test sees any element a launch
    /// failed to write.
    #[cfg(test)]
    pub(crate) fn poison(&self) -> Result<()> {
        let b = &self.backend;
        for (ptr, bytes) in [
            (self.idx.ptr(), 4 * self.idx.len()),
            (self.val.ptr(), 4 * self.val.len()),
            (self.codes.ptr(), self.codes.len()),
            (self.params.ptr(), 4 * self.params.len()),
            (self.packed.ptr(), self.packed.len()),
            (self.deq.ptr(), 4 * self.deq.len()),
        ] {
            // SAFETY: each buffer holds `bytes` bytes.
            unsafe { b.fill_bytes(ptr, 0xff, bytes) }?;
        }
        Ok(())
    }

    /// The CPU compressor of the same configuration (decoding, sizes, inverse transform).
    pub fn cpu(&self) -> &Compressor {
        &self.cpu
    }

    /// The backend the compressor launches on.
    pub fn backend(&self) -> &Arc<CudaBackend> {
        &self.backend
    }

    /// Enqueues the whole compression of the tensor at `x` on the stream and returns
    /// without waiting; [`CudaCompressor::finish`] collects the result. Kept positions,
    /// values, packed indices and quantized codes stay on the device.
    ///
    /// # Safety
    /// `x` must be the device address of `self.cpu().len()` floats (row-major), valid until
    /// the work completes (stream order covers LibTorch work queued after this call).
    pub unsafe fn enqueue(&mut self, x: u64) -> Result<()> {
        self.last_input = x;
        let b = &self.backend;
        // SAFETY: the scratch buffers were sized for this configuration in `new`.
        unsafe {
            b.fill_bytes(self.bad.ptr(), 0xff, 4)?;
            b.fill_bytes(self.words.ptr(), 0, 4 * self.index.words())?;
        }
        let spec = &self.spec;
        let (fixed, width) = (u32::from(self.index.fixed), self.index.width);
        let (idx, val, words, bad) =
            (self.idx.ptr(), self.val.ptr(), self.words.ptr(), self.bad.ptr());
        match &self.bases {
            Some(bases) => {
                let (g, (rd, cd)) = (bases.geometry, bases.dims());
                let k = spec.k as u32;
                b.launch(
                    "compress_dct",
                    self.grid,
                    &[&x, &g, &rd, &cd, &k, &fixed, &width, &idx, &val, &words, &bad],
                )?;
            }
            None => {
                let last = spec.chunk_range(spec.num_chunks() - 1).len();
                let (len, chunk, k) = (spec.len as u32, spec.chunk_len as u32, spec.k as u32);
                let k_last = spec.k_for(last) as u32;
                b.launch(
                    "compress_chunks",
                    self.grid,
                    &[&x, &len, &chunk, &k, &k_last, &fixed, &width, &idx, &val, &words, &bad],
                )?;
            }
        }
        if let Some(q) = &self.quant {
            // SAFETY: all buffers hold `total_k` values or the plan's sizes.
            unsafe {
                b.quantize_into(
                    q,
                    val,
                    self.codes.ptr(),
                    self.params.ptr(),
                    self.packed.ptr(),
                    self.deq.ptr(),
                )
            }?;
        }
        Ok(())
    }

    /// Waits for the work of [`CudaCompressor::enqueue`] and assembles what
    /// [`Compressor::compress`] returns: the same byte layout and the selection a receiver
    /// decodes. Errors as the CPU does on a non-finite input (reported at its position in
    /// the input), and on finite input too large for the DCT in f32.
    pub fn finish(&mut self, out: &mut Compressed) -> Result<()> {
        let b = &self.backend;
        let bad = b.download(&self.bad)?;
        if let Some(&i) = bad.first().filter(|&&e| e != u32::MAX) {
            if let Some(plan) = self.cpu.dct_plan() {
                // `i` is a coefficient, which is not kept: read the input back (this path
                // only) and say what the CPU says, a bad input value or an overflow.
                let mut x = vec![0.0f32; self.cpu.len()];
                // SAFETY: the input holds `len` floats, as the caller vouched in `enqueue`.
                unsafe { b.read_raw(self.last_input, &mut x) }?;
                let found =
                    KernelError::NonFinite { what: "x", index: i as usize, value: f32::NAN };
                return Err(crate::pipeline::non_finite_coefficients(plan, &x, found));
            }
            // Without a transform `i` is a position of the input; its value is read back.
            let mut v = [f32::NAN];
            // SAFETY: `i` is below the input length the caller vouched for in `enqueue`.
            unsafe { b.read_raw(self.last_input + 4 * u64::from(i), &mut v) }?;
            return Err(KernelError::NonFinite { what: "x", index: i as usize, value: v[0] });
        }
        let outputs = DeviceOutputs {
            words: b.download(&self.words)?,
            idx: b.download(&self.idx)?,
            val: if self.quant.is_some() { Vec::new() } else { b.download(&self.val)? },
            packed: if self.quant.is_some() { b.download(&self.packed)? } else { Vec::new() },
            params: if self.quant.is_some() { b.download(&self.params)? } else { Vec::new() },
            deq: if self.quant.is_some() { b.download(&self.deq)? } else { Vec::new() },
        };
        assemble(&self.cpu, &self.index, self.quant.as_ref(), outputs, out)
    }

    /// [`Compressor::compress`] of the tensor at device address `x`.
    ///
    /// # Safety
    /// As [`CudaCompressor::enqueue`].
    pub unsafe fn compress(&mut self, x: u64) -> Result<Compressed> {
        // SAFETY: the caller's contract.
        unsafe { self.enqueue(x) }?;
        let mut out = Compressed::default();
        self.finish(&mut out)?;
        Ok(out)
    }

    /// Device addresses of the last call's kept positions and their sent values (the
    /// dequantized values when quantizing), `self.cpu().kept()` of each: error feedback
    /// can use them without leaving the device.
    pub fn sent_device(&self) -> (u64, u64) {
        let values = if self.quant.is_some() { self.deq.ptr() } else { self.val.ptr() };
        (self.idx.ptr(), values)
    }

    /// Error feedback on the device, as [`Compressor::subtract_sent`]: removes the last
    /// call's sent selection (still on the device) from the tensor at `x`.
    ///
    /// # Safety
    /// `x` as in [`CudaCompressor::enqueue`], after a successful compress.
    pub unsafe fn subtract_last_sent(&self, x: u64) -> Result<()> {
        let (idx, val) = self.sent_device();
        // SAFETY: the caller's contract; the selection came from a top-k over this
        // tensor's transform domain.
        unsafe { self.subtract_selection(x, idx, val, self.spec.total_k()) }
    }

    /// [`Compressor::subtract_sent`] on the tensor at `x`: validates `sent` against the
    /// transform domain first and changes nothing on error.
    ///
    /// # Safety
    /// `x` must be the device address of `self.cpu().len()` floats.
    pub unsafe fn subtract_sent(&self, x: u64, sent: &Sparse) -> Result<()> {
        sent.validate(self.cpu.transform_len())?;
        let b = &self.backend;
        let idx = b.upload(&sent.indices)?;
        let val = b.upload(&sent.values)?;
        // SAFETY: the caller's contract; `sent` was validated.
        unsafe { self.subtract_selection(x, idx.ptr(), val.ptr(), sent.len()) }?;
        // The uploads are freed when this returns; wait until the kernels are done with them.
        b.synchronize()
    }

    /// [`Compressor::aggregate`] into the tensor at `out`: the canonical mean of the members'
    /// transform-domain selections (one scatter launch per member, in ascending id, no float
    /// atomics), mapped back through the inverse DCT when there is one. The same bits as
    /// the CPU; errors as the CPU's (duplicate members, selections out of range, a
    /// non-finite sum), in which case `out` may be partly written.
    ///
    /// # Safety
    /// `out` must be the device address of `self.cpu().len()` floats.
    pub unsafe fn aggregate(
        &self,
        contribs: &[Contribution<'_>],
        mode: MeanOver,
        out: u64,
    ) -> Result<()> {
        let b = &self.backend;
        match &self.bases {
            // SAFETY: the caller's contract.
            None => unsafe { b.scatter_mean(contribs, mode, out, self.cpu.len()) },
            Some(bases) => {
                let coeffs = b.zeros::<f32>(self.cpu.transform_len())?;
                // SAFETY: the coefficient buffer has the plan's transform length and `out`
                // its input length (the caller's contract).
                unsafe {
                    b.scatter_mean(contribs, mode, coeffs.ptr(), self.cpu.transform_len())?;
                    b.dct_inverse(bases, coeffs.ptr(), out)?;
                }
                // The coefficients are freed when this returns.
                b.synchronize()
            }
        }
    }

    /// Without a transform, subtracts at the selected positions; with the DCT, scatters the
    /// selected coefficients into zeros, inverts them and subtracts the result.
    unsafe fn subtract_selection(&self, x: u64, idx: u64, val: u64, count: usize) -> Result<()> {
        let b = &self.backend;
        match &self.bases {
            // SAFETY: the callers' contracts.
            None => unsafe { b.subtract_sent_device(x, idx, val, count) },
            Some(bases) => {
                let coeffs = b.zeros::<f32>(self.cpu.transform_len())?;
                let dense = b.zeros::<f32>(self.cpu.len())?;
                // SAFETY: scatter into zeroed coefficients (+0.0 + v = v), invert, and
                // subtract; every buffer has the plan's sizes.
                unsafe {
                    b.scatter_add_device(coeffs.ptr(), idx, val, count)?;
                    b.dct_inverse(bases, coeffs.ptr(), dense.ptr())?;
                    b.subtract_dense(x, dense.ptr(), self.cpu.len())
                }
            }
        }
    }
}

/// What the compress kernels leave on the device, copied to the host.
#[derive(Debug, Default)]
pub(crate) struct DeviceOutputs {
    /// The packed index stream, as u32 words.
    pub(crate) words: Vec<u32>,
    /// Kept positions.
    pub(crate) idx: Vec<u32>,
    /// Kept values (read when not quantizing).
    pub(crate) val: Vec<f32>,
    /// Packed codes, parameters and reconstructions (when quantizing).
    pub(crate) packed: Vec<u8>,
    pub(crate) params: Vec<f32>,
    pub(crate) deq: Vec<f32>,
}

/// The byte encoding and sent selection of [`Compressor::compress`] from the kernels'
/// outputs: the header, the index encoding, then the quantized or raw values.
pub(crate) fn assemble(
    cpu: &Compressor,
    index: &IndexPlan,
    quant: Option<&QuantPlan>,
    o: DeviceOutputs,
    out: &mut Compressed,
) -> Result<()> {
    out.bytes.clear();
    out.bytes.push(FORMAT_VERSION);
    out.bytes.push(TAG_PER_CHUNK);
    out.bytes.extend_from_slice(&(cpu.len() as u32).to_le_bytes());
    out.bytes.extend_from_slice(&(index.total_k as u32).to_le_bytes());
    index.append_indices(&o.words, &o.idx, &mut out.bytes)?;
    let values = match quant {
        Some(q) => {
            q.finish(o.packed, o.params)?.encode_into(&mut out.bytes);
            o.deq
        }
        None => {
            for x in &o.val {
                out.bytes.extend_from_slice(&x.to_le_bytes());
            }
            o.val
        }
    };
    out.sent = Sparse { indices: o.idx, values };
    Ok(())
}
