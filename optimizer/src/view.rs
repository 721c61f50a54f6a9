//! Borrowing tch tensor memory as slices, so kernels work in place with no copy.
//!
//! [`with_f32`] and [`with_f32_mut`] borrow CPU tensors only. [`with_host_f32`] and
//! [`with_host_f32_mut`] take a tensor on any device: a CPU tensor is borrowed in place, any
//! other is staged through a host copy (and written back by the mutable form). The
//! optimizers use the staging form where the values must reach the host anyway (dense
//! payloads, hashes) or on a path that has no device kernel.

use crate::error::{OptimizerError, Result};
use tch::{Device, Kind, Tensor};

fn check_borrowable(name: &str, t: &Tensor) -> Result<usize> {
    let unsupported =
        |reason: String| OptimizerError::UnsupportedTensor { name: name.to_owned(), reason };
    if t.kind() != Kind::Float {
        return Err(unsupported(format!("dtype {:?}, expected f32", t.kind())));
    }
    if t.device() != Device::Cpu {
        return Err(unsupported(format!("on {:?}; the CPU kernels need CPU memory", t.device())));
    }
    if !t.is_contiguous() {
        return Err(unsupported("not contiguous".to_owned()));
    }
    let numel = t.numel();
    Ok(numel)
}

/// Runs `f` on the elements of a contiguous CPU f32 tensor.
///
/// The closure form keeps the borrow from outliving the tensor handle.
pub fn with_f32<R>(name: &str, t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let numel = check_borrowable(name, t)?;
    if numel == 0 {
        return Ok(f(&[]));
    }
    // SAFETY: checked above that the tensor is a contiguous CPU f32 tensor of `numel`
    // elements, so `data_ptr` points at `numel` initialised, aligned f32 values owned by
    // LibTorch, alive while `t` is borrowed for the duration of `f`.
    let slice = unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, numel) };
    Ok(f(slice))
}

/// Runs `f` on the elements of a contiguous CPU f32 tensor, mutably.
///
/// Takes `&mut Tensor` so the borrow checker rules out a second Rust view of the same
/// handle during `f`. A tensor sharing storage with another handle (a view) is the
/// caller's responsibility, as everywhere in LibTorch.
pub fn with_f32_mut<R>(name: &str, t: &mut Tensor, f: impl FnOnce(&mut [f32]) -> R) -> Result<R> {
    let numel = check_borrowable(name, t)?;
    if numel == 0 {
        return Ok(f(&mut []));
    }
    // SAFETY: as in `with_f32`; exclusivity comes from the `&mut Tensor`.
    let slice = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, numel) };
    Ok(f(slice))
}

/// Runs `f` on the elements of a contiguous f32 tensor on any device: borrowed in place on
/// the CPU, through a host copy elsewhere.
pub fn with_host_f32<R>(name: &str, t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    if t.device() == Device::Cpu {
        return with_f32(name, t, f);
    }
    with_f32(name, &host_copy(name, t)?, f)
}

/// Runs `f` on the elements of a contiguous f32 tensor on any device, mutably: borrowed in
/// place on the CPU; elsewhere `f` runs on a host copy, which is then written back (outside
/// autograd, so this also serves parameters).
pub fn with_host_f32_mut<R>(
    name: &str,
    t: &mut Tensor,
    f: impl FnOnce(&mut [f32]) -> R,
) -> Result<R> {
    if t.device() == Device::Cpu {
        return with_f32_mut(name, t, f);
    }
    staged_mut(name, t, f)
}

/// The staging half of [`with_host_f32_mut`], for any device (a CPU tensor is copied too, so
/// tests on the CPU exercise the path a GPU tensor takes).
pub(crate) fn staged_mut<R>(
    name: &str,
    t: &mut Tensor,
    f: impl FnOnce(&mut [f32]) -> R,
) -> Result<R> {
    let mut host = host_copy(name, t)?;
    let r = with_f32_mut(name, &mut host, f)?;
    tch::no_grad(|| t.f_copy_(&host))?;
    Ok(r)
}

/// A contiguous f32 host copy of `t` (always a new tensor, never an alias).
fn host_copy(name: &str, t: &Tensor) -> Result<Tensor> {
    if t.kind() != Kind::Float {
        return Err(OptimizerError::UnsupportedTensor {
            name: name.to_owned(),
            reason: format!("dtype {:?}, expected f32", t.kind()),
        });
    }
    Ok(t.f_to_device_(Device::Cpu, Kind::Float, false, true)?.f_contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_writes_back_and_reads_a_copy() {
        let mut t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let alias = t.shallow_clone();
        // The staged path (what a GPU tensor takes) changes the tensor only by the copy back.
        let seen = staged_mut("t", &mut t, |s| {
            s[1] = 20.0;
            // Not an alias of the original: the write is not visible there yet.
            alias.double_value(&[1])
        })
        .unwrap();
        assert_eq!(seen, 2.0);
        assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![1.0, 20.0, 3.0]);
        let sum = with_host_f32("t", &t, |s| s.iter().sum::<f32>()).unwrap();
        assert_eq!(sum, 24.0);
        let d = Tensor::from_slice(&[1.0f64]);
        assert!(with_host_f32("d", &d, |_| ()).is_err());
    }

    #[test]
    fn borrows_and_writes_through() {
        let mut t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
        let sum = with_f32("t", &t, |s| s.iter().sum::<f32>()).unwrap();
        assert_eq!(sum, 10.0);
        with_f32_mut("t", &mut t, |s| s[3] = 40.0).unwrap();
        assert_eq!(t.double_value(&[1, 1]), 40.0);
    }

    #[test]
    fn refuses_what_it_cannot_borrow() {
        let d = Tensor::from_slice(&[1.0f64, 2.0]);
        assert!(matches!(with_f32("d", &d, |_| ()), Err(OptimizerError::UnsupportedTensor { .. })));
        let nc = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]).transpose(0, 1);
        let err = with_f32("nc", &nc, |_| ()).unwrap_err().to_string();
        assert!(err.contains("not contiguous"), "{err}");
    }
}
