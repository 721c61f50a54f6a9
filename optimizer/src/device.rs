//! Which kernel backend compresses a tensor: the tensor's device decides.
//!
//! A CPU tensor is compressed by the CPU kernels through [`crate::view`], as always. A CUDA
//! tensor is compressed in place by the CUDA kernels (`meridian_kernels::cuda`), which read
//! and write LibTorch's device memory through its data pointer, on the legacy default
//! stream that LibTorch also uses (see that module's doc for the ordering argument), with
//! no host round trip for the tensor itself; only the compressed bytes and the sent
//! selection come back. When the CUDA backend cannot serve a CUDA tensor (NVRTC missing,
//! a configuration without a CUDA kernel), the tensor is copied to the CPU and compressed
//! there, and one log line says so.

use std::sync::{Arc, Once};

use meridian_kernels::aggregate::{Contribution, MeanOver, ScatterScratch};
use meridian_kernels::cuda::{CudaBackend, CudaCompressor};
use meridian_kernels::pipeline::{Compressed, Compressor, CompressorConfig};
use meridian_kernels::{feedback, Sparse};
use tch::{Device, Kind, Tensor};

use crate::error::{OptimizerError, Result};
use crate::outer::tensor_on;
use crate::view::{with_f32, with_f32_mut, with_host_f32, with_host_f32_mut};

/// The kernels a tensor's compression runs on.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The CPU kernels, on host memory.
    Cpu,
    /// The CUDA kernels of the tensor's device.
    Cuda(Arc<CudaBackend>),
}

static FALLBACK_LOGGED: Once = Once::new();

/// Whether LibTorch can place tensors on a CUDA device here. Use this rather than
/// `tch::Cuda::is_available`, which answers false on a GPU machine until LibTorch's CUDA
/// library is loaded: the linker drops `libtorch_cuda.so` from binaries that name none of
/// its symbols, and its initialisers are what register CUDA with LibTorch. This loads it
/// once per process (from the LibTorch the build linked, else by name), only when asked,
/// so CPU runs do not pay for mapping it.
pub fn cuda_is_available() -> bool {
    load_torch_cuda();
    tch::Cuda::is_available()
}

/// The CUDA devices LibTorch sees (0 without a driver or a CUDA-enabled LibTorch).
pub fn cuda_device_count() -> usize {
    if cuda_is_available() {
        usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
    } else {
        0
    }
}

fn load_torch_cuda() {
    static LOADED: Once = Once::new();
    LOADED.call_once(|| {
        let mut candidates = Vec::new();
        if let Some(dir) = option_env!("MERIDIAN_LIBTORCH_LIB") {
            candidates.push(std::path::Path::new(dir).join("libtorch_cuda.so"));
        }
        candidates.push("libtorch_cuda.so".into());
        for path in candidates {
            use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
            // SAFETY: LibTorch's own CUDA library, built for the LibTorch this process runs;
            // its initialisers register CUDA support with it. The handle is leaked on
            // purpose: the library stays loaded for the process.
            match unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_GLOBAL) } {
                Ok(lib) => {
                    std::mem::forget(lib);
                    return;
                }
                Err(e) => tracing::debug!(path = %path.display(), error = %e, "libtorch_cuda"),
            }
        }
        tracing::debug!("no libtorch_cuda.so: this LibTorch has no CUDA support");
    });
}

/// The backend for `t`: the CPU for a CPU tensor; for a CUDA tensor its device's CUDA
/// backend, or the CPU (logged once per process) when that backend is unavailable.
pub fn backend_for(t: &Tensor) -> Backend {
    backend_on(t.device())
}

/// The backend for tensors on `device` (see [`backend_for`]).
pub fn backend_on(device: Device) -> Backend {
    match device {
        Device::Cuda(ordinal) => match CudaBackend::get(ordinal) {
            Ok(b) => Backend::Cuda(b),
            Err(e) => {
                FALLBACK_LOGGED.call_once(|| {
                    tracing::warn!(error = %e, "CUDA kernels unavailable; compressing on the CPU");
                });
                Backend::Cpu
            }
        },
        _ => Backend::Cpu,
    }
}

/// A tensor's compressor on whichever backend its device selects: the CPU [`Compressor`]
/// always (receivers decode with it), plus a [`CudaCompressor`] built on first use with a
/// CUDA tensor.
#[derive(Debug)]
pub struct TensorCompressor {
    cpu: Compressor,
    shape: Vec<usize>,
    cuda: Option<CudaCompressor>,
    /// Set once the CUDA path refused this configuration, so it is not retried.
    cuda_refused: bool,
}

impl TensorCompressor {
    /// A compressor for tensors of `shape`.
    pub fn new(config: CompressorConfig, shape: &[usize]) -> Result<Self> {
        Ok(Self {
            cpu: Compressor::new(config, shape)?,
            shape: shape.to_vec(),
            cuda: None,
            cuda_refused: false,
        })
    }

    /// The CPU compressor (decoding, sizes, aggregation).
    pub fn cpu(&self) -> &Compressor {
        &self.cpu
    }

    /// The CUDA compressor for `t`, when `t` is a CUDA tensor and its backend serves this
    /// configuration.
    fn cuda_for(&mut self, t: &Tensor) -> Option<&mut CudaCompressor> {
        self.cuda_on(t.device())
    }

    /// The CUDA compressor for tensors on `device`, when it is a CUDA device whose backend
    /// serves this configuration.
    fn cuda_on(&mut self, device: Device) -> Option<&mut CudaCompressor> {
        if self.cuda_refused {
            return None;
        }
        let Backend::Cuda(backend) = backend_on(device) else { return None };
        let stale = self.cuda.as_ref().is_some_and(|c| c.backend().ordinal() != backend.ordinal());
        if self.cuda.is_none() || stale {
            match CudaCompressor::new(backend, *self.cpu.config(), &self.shape) {
                Ok(c) => self.cuda = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "this compressor runs on the CPU");
                    self.cuda_refused = true;
                    return None;
                }
            }
        }
        self.cuda.as_mut()
    }

    /// Compresses `t` (f32, `self.cpu().len()` elements) on the backend its device picks.
    pub fn compress(&mut self, name: &str, t: &Tensor) -> Result<Compressed> {
        if let Some(cuda) = self.cuda_for(t) {
            let t = device_f32(name, t)?;
            // SAFETY: `t` is a contiguous f32 CUDA tensor of the compressor's element count
            // (checked by `device_f32` and `CudaCompressor::new`'s shape), alive until
            // `compress` returns, which waits for the kernels.
            return Ok(unsafe { cuda.compress(t.data_ptr() as u64) }?);
        }
        if t.device() == Device::Cpu {
            return with_f32(name, t, |x| self.cpu.compress(x))?.map_err(Into::into);
        }
        let host = t.f_to_device(Device::Cpu)?;
        with_f32(name, &host, |x| self.cpu.compress(x))?.map_err(Into::into)
    }

    /// Compresses `t` and removes from it what was sent (error feedback: `t` keeps what the
    /// receivers will not see), on `t`'s device. On a GPU the sent selection stays on the
    /// device for the subtraction; the result is [`TensorCompressor::compress`] followed by
    /// [`TensorCompressor::subtract_sent`] with its `sent`.
    pub fn compress_and_subtract(&mut self, name: &str, t: &mut Tensor) -> Result<Compressed> {
        if t.is_contiguous() && t.kind() == Kind::Float {
            if let Some(cuda) = self.cuda_for(t) {
                let x = t.data_ptr() as u64;
                // SAFETY: a contiguous f32 CUDA tensor of the compressor's element count,
                // alive for the calls; `compress` waits for its kernels, and the subtraction
                // uses the selection that call left on the device.
                let out = unsafe { cuda.compress(x) }?;
                unsafe { cuda.subtract_last_sent(x) }?;
                // Its scratch buffers are freed on return.
                cuda.backend().synchronize()?;
                return Ok(out);
            }
        }
        let out = self.compress(name, t)?;
        self.subtract_sent(name, t, &out.sent)?;
        Ok(out)
    }

    /// Error feedback on `t`: removes what `sent` carries, on `t`'s device.
    pub fn subtract_sent(&mut self, name: &str, t: &mut Tensor, sent: &Sparse) -> Result<()> {
        if t.device() == Device::Cpu {
            return with_f32_mut(name, t, |x| self.cpu.subtract_sent(x, sent))?.map_err(Into::into);
        }
        if t.is_contiguous() && t.kind() == Kind::Float {
            if let Some(cuda) = self.cuda_for(t) {
                // SAFETY: a contiguous f32 CUDA tensor of the compressor's element count; the
                // call validates `sent` before touching it and waits for its kernels.
                return Ok(unsafe { cuda.subtract_sent(t.data_ptr() as u64, sent) }?);
            }
        }
        self.subtract_via_host(name, t, sent)
    }

    /// The receivers' aggregate ([`Compressor::aggregate`]: the canonical mean of the
    /// members' selections, back through the inverse transform) as a tensor of the
    /// compressor's shape on `device`: computed there by the CUDA kernels for a CUDA device
    /// (the CPU's bits), on the CPU otherwise (and uploaded once if `device` is not the CPU).
    pub fn aggregate_on(
        &mut self,
        scratch: &mut ScatterScratch,
        contribs: &[Contribution<'_>],
        mode: MeanOver,
        device: Device,
    ) -> Result<Tensor> {
        let shape = self.shape.clone();
        if let Some(cuda) = self.cuda_on(device) {
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            let out = Tensor::f_empty(dims.as_slice(), (Kind::Float, device))?;
            // SAFETY: a fresh contiguous f32 tensor of the compressor's shape on the
            // compressor's device, alive for the call, which waits for its kernels.
            unsafe { cuda.aggregate(contribs, mode, out.data_ptr() as u64) }?;
            return Ok(out);
        }
        let mut host = vec![0.0f32; self.cpu.len()];
        self.cpu.aggregate(scratch, contribs, mode, &mut host)?;
        tensor_on(&host, &shape, device)
    }

    fn subtract_via_host(&mut self, name: &str, t: &mut Tensor, sent: &Sparse) -> Result<()> {
        let mut host = t.f_to_device(Device::Cpu)?;
        with_f32_mut(name, &mut host, |x| self.cpu.subtract_sent(x, sent))??;
        t.f_copy_(&host)?;
        Ok(())
    }
}

/// Fails on the first non-finite element of `t` (f32, any device) with the CPU check's
/// error: on the device for a CUDA tensor, in place for a CPU one, through a host copy
/// otherwise.
pub fn check_finite(name: &str, what: &'static str, t: &Tensor) -> Result<()> {
    if let Backend::Cuda(b) = backend_for(t) {
        let t = device_f32(name, t)?;
        // SAFETY: a contiguous f32 CUDA tensor of `numel` elements, alive for the call,
        // which waits for its kernel.
        return Ok(unsafe { b.check_finite(what, t.data_ptr() as u64, t.numel()) }?);
    }
    with_host_f32(name, t, |x| meridian_kernels::error::check_finite(what, x))?.map_err(Into::into)
}

/// Error feedback's accumulation, `error ← decay·error + update` with one fused
/// multiply-add per element ([`meridian_kernels::feedback::accumulate`]), on `error`'s
/// device: the CUDA kernel for a CUDA tensor, the CPU kernel otherwise. Both tensors must
/// hold the same number of f32 values on one device; nothing changes on error.
pub fn accumulate(name: &str, error: &mut Tensor, decay: f32, update: &Tensor) -> Result<()> {
    if error.numel() != update.numel() || error.device() != update.device() {
        return Err(OptimizerError::UnsupportedTensor {
            name: name.to_owned(),
            reason: format!(
                "update of {} values on {:?} for a buffer of {} on {:?}",
                update.numel(),
                update.device(),
                error.numel(),
                error.device()
            ),
        });
    }
    if error.is_contiguous() && error.kind() == Kind::Float {
        if let Backend::Cuda(b) = backend_for(error) {
            let update = device_f32(name, update)?;
            // SAFETY: both are contiguous f32 CUDA tensors of `numel` elements on one device,
            // alive for the call; the kernel is ordered before any later LibTorch work on
            // the default stream.
            return Ok(unsafe {
                b.accumulate(
                    error.data_ptr() as u64,
                    decay,
                    update.data_ptr() as u64,
                    error.numel(),
                )
            }?);
        }
    }
    with_host_f32(name, update, |u| {
        with_host_f32_mut(name, error, |e| feedback::accumulate(e, decay, u))
    })???;
    Ok(())
}

/// `t` as a contiguous f32 CUDA tensor (a copy only when it is not one already).
fn device_f32(name: &str, t: &Tensor) -> Result<Tensor> {
    if t.kind() != Kind::Float {
        return Err(OptimizerError::UnsupportedTensor {
            name: name.to_owned(),
            reason: format!("dtype {:?}, expected f32", t.kind()),
        });
    }
    Ok(t.contiguous())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_kernels::pipeline::CompressorConfig;

    #[test]
    fn cpu_tensors_use_the_cpu_kernels_with_the_cpu_bytes() {
        let t = Tensor::randn([64, 96], (Kind::Float, Device::Cpu));
        assert!(matches!(backend_for(&t), Backend::Cpu));
        for cfg in [CompressorConfig::sparseloco(), CompressorConfig::demo()] {
            let mut tc = TensorCompressor::new(cfg, &[64, 96]).unwrap();
            let got = tc.compress("t", &t).unwrap();
            // No CUDA compressor was built for a CPU tensor.
            assert!(tc.cuda.is_none() && !tc.cuda_refused);
            let mut plain = Compressor::new(cfg, &[64, 96]).unwrap();
            let want = with_f32("t", &t, |x| plain.compress(x)).unwrap().unwrap();
            assert_eq!(got, want);
            let mut a = t.copy();
            tc.subtract_sent("t", &mut a, &got.sent).unwrap();
            let mut b = t.copy();
            with_f32_mut("t", &mut b, |x| plain.subtract_sent(x, &want.sent)).unwrap().unwrap();
            assert!(a.equal(&b));
        }
    }

    #[test]
    fn accumulate_and_check_finite_match_the_kernels_and_refuse_mismatches() {
        let e0 = Tensor::randn([300], (Kind::Float, Device::Cpu));
        let u = Tensor::randn([300], (Kind::Float, Device::Cpu));
        let mut e = e0.copy();
        accumulate("e", &mut e, 0.95, &u).unwrap();
        let mut want = Vec::<f32>::try_from(&e0).unwrap();
        feedback::accumulate(&mut want, 0.95, &Vec::<f32>::try_from(&u).unwrap()).unwrap();
        assert_eq!(Vec::<f32>::try_from(&e).unwrap(), want);
        // A poisoned update is refused before the buffer changes.
        let bad = u.copy();
        let _ = bad.get(7).fill_(f64::NAN);
        let before = e.copy();
        let err = accumulate("e", &mut e, 0.95, &bad).unwrap_err().to_string();
        assert!(err.contains("index 7"), "{err}");
        assert!(e.equal(&before));
        let err = check_finite("g", "gradient", &bad).unwrap_err().to_string();
        assert!(err.contains("gradient") && err.contains("index 7"), "{err}");
        check_finite("g", "gradient", &u).unwrap();
        let short = Tensor::zeros([299], (Kind::Float, Device::Cpu));
        assert!(accumulate("e", &mut e, 0.95, &short).is_err());
    }

    #[test]
    fn aggregates_on_each_device_give_the_cpu_bits() {
        let mut devices = vec![Device::Cpu];
        if cuda_is_available() {
            devices.push(Device::Cuda(0));
        } else {
            println!("skipped: no CUDA device (the CPU half ran)");
        }
        for cfg in [CompressorConfig::sparseloco(), CompressorConfig::demo()] {
            let shape = [96, 130];
            let mut cpu = Compressor::new(cfg, &shape).unwrap();
            let sent: Vec<Sparse> = (0..3)
                .map(|_| {
                    let x = Tensor::randn([96, 130], (Kind::Float, Device::Cpu));
                    with_f32("x", &x, |x| cpu.compress(x)).unwrap().unwrap().sent
                })
                .collect();
            let contribs: Vec<Contribution<'_>> = [7u32, 2, 4]
                .iter()
                .zip(&sent)
                .map(|(&worker, sparse)| Contribution { worker, sparse })
                .collect();
            let mut want = vec![0.0f32; cpu.len()];
            let mut scratch = ScatterScratch::new();
            cpu.aggregate(&mut scratch, &contribs, MeanOver::Contributors, &mut want).unwrap();
            for &device in &devices {
                let mut tc = TensorCompressor::new(cfg, &shape).unwrap();
                let got = tc
                    .aggregate_on(&mut scratch, &contribs, MeanOver::Contributors, device)
                    .unwrap();
                assert_eq!(got.device(), device);
                assert_eq!(got.size(), [96, 130]);
                let got = Vec::<f32>::try_from(&got.to_device(Device::Cpu).reshape([-1])).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{cfg:?} on {device:?}");
            }
        }
    }

    #[test]
    fn the_cuda_probe_loads_libtorch_cuda_and_never_panics() {
        let available = cuda_is_available();
        assert_eq!(cuda_device_count() > 0, available);
        // The pip LibTorch this project builds against ships CUDA support: once probed, its
        // CUDA library is mapped (so on a GPU machine LibTorch can see the device).
        let lib = std::path::Path::new(env!("MERIDIAN_LIBTORCH_LIB"));
        if lib.join("libtorch_cuda.so").exists() {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            assert!(maps.contains("libtorch_cuda.so"), "libtorch_cuda.so was not loaded");
        }
    }

    #[test]
    fn cuda_tensors_use_the_cuda_kernels_when_a_device_is_present() {
        if !cuda_is_available() {
            println!("skipped: no CUDA device");
            return;
        }
        let t = Tensor::randn([64, 96], (Kind::Float, Device::Cuda(0)));
        assert!(matches!(backend_for(&t), Backend::Cuda(_)));
        let cfg = CompressorConfig::sparseloco();
        let mut tc = TensorCompressor::new(cfg, &[64, 96]).unwrap();
        let got = tc.compress("t", &t).unwrap();
        assert!(tc.cuda.is_some());
        let host = t.to_device(Device::Cpu);
        let mut plain = Compressor::new(cfg, &[64, 96]).unwrap();
        let want = with_f32("t", &host, |x| plain.compress(x)).unwrap().unwrap();
        assert_eq!(got.bytes, want.bytes);
        // Compress with error feedback, on the device and on the host: the same bytes and
        // the same residual bits.
        for cfg in [CompressorConfig::sparseloco(), CompressorConfig::demo()] {
            let mut on_gpu = t.copy();
            let mut tc = TensorCompressor::new(cfg, &[64, 96]).unwrap();
            let got = tc.compress_and_subtract("t", &mut on_gpu).unwrap();
            let mut on_cpu = host.copy();
            let mut plain = TensorCompressor::new(cfg, &[64, 96]).unwrap();
            let want = plain.compress_and_subtract("t", &mut on_cpu).unwrap();
            assert_eq!(got.bytes, want.bytes, "{cfg:?}");
            let residual = on_gpu.to_device(Device::Cpu);
            assert!(residual.equal(&on_cpu), "{cfg:?}: residuals differ");
            assert!(!residual.equal(&host), "{cfg:?}: nothing was subtracted");
        }
    }
}
