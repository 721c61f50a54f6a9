//! The launches of every primitive: each checks its arguments as the CPU function does,
//! then enqueues its kernels, and reads back what the caller gets on the host. Kept apart
//! from the backend's loading and memory handling, which every launch shares.

use super::{
    blocks, drv, grid_for, u32_of, CudaBackend, DctBases, DeviceBuffer, IndexPlan, QuantPlan,
};
use crate::aggregate::{Contribution, MeanOver};
use crate::chunks::ChunkSpec;
use crate::error::{invalid, KernelError, Result};
use crate::quant::{QuantConfig, Quantized};
use crate::sparse::Sparse;

impl CudaBackend {
    /// Chunked DCT of `plan` from `x` (`plan.input_len()` floats) into `coeffs`
    /// (`plan.coeff_len()` floats), tile-major as
    /// [`DctPlan::forward`](crate::dct::DctPlan::forward).
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
        if plan.rice {
            let mut indices = vec![0u32; plan.total_k];
            // SAFETY: the caller's contract: `idx` holds `total_k` u32.
            unsafe { self.read_raw(idx, &mut indices) }?;
            return crate::pack::encode_chunked(&indices, spec, buf);
        }
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
        if !plan.fixed || plan.rice || bytes.first() != Some(&crate::pack::TAG_FIXED) {
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
