//! The parameters an outer optimizer works on: named tch tensors in a canonical order.

use tch::{Device, Kind, Tensor};
use xxhash_rust::xxh3::Xxh3;

use crate::error::{OptimizerError, Result};
use crate::view::{with_f32, with_host_f32_mut};

/// A model's trainable parameters, sorted by name so that every worker enumerates them in
/// the same order (payload segments refer to tensors by position in this order).
///
/// The tensors share storage with the model: writing through a `ParamSet` changes the
/// model. All must be contiguous f32 tensors on one device, the CPU or a GPU: the outer
/// optimizers keep their state on that device and pick kernels by it ([`crate::device`]).
#[derive(Debug)]
pub struct ParamSet {
    names: Vec<String>,
    tensors: Vec<Tensor>,
    shapes: Vec<Vec<usize>>,
    device: Device,
}

impl ParamSet {
    /// Builds the set from `(name, tensor)` pairs in any order. Errors on duplicate names,
    /// an empty list, tensors that are not contiguous f32, or tensors on different devices.
    pub fn new(mut params: Vec<(String, Tensor)>) -> Result<Self> {
        if params.is_empty() {
            return Err(OptimizerError::Config("a model needs at least one parameter".into()));
        }
        params.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = params.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(OptimizerError::Config(format!("duplicate parameter name {}", w[0].0)));
        }
        let mut names = Vec::with_capacity(params.len());
        let mut tensors = Vec::with_capacity(params.len());
        let mut shapes = Vec::with_capacity(params.len());
        let device = params[0].1.device();
        for (name, t) in params {
            let unsupported =
                |reason: String| OptimizerError::UnsupportedTensor { name: name.clone(), reason };
            if t.kind() != Kind::Float {
                return Err(unsupported(format!("dtype {:?}, expected f32", t.kind())));
            }
            if !t.is_contiguous() {
                return Err(unsupported("not contiguous".to_owned()));
            }
            if t.device() != device {
                return Err(unsupported(format!(
                    "on {:?} while {} is on {device:?}; a model's parameters share one device",
                    t.device(),
                    names.first().map_or("the first", String::as_str),
                )));
            }
            shapes.push(t.size().iter().map(|&d| d as usize).collect());
            names.push(name);
            tensors.push(t);
        }
        Ok(Self { names, tensors, shapes, device })
    }

    /// The device every parameter lives on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Always false: a set holds at least one tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Tensor names in canonical order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Tensor shapes in canonical order.
    pub fn shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }

    /// The tensors in canonical order (sharing storage with the model).
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    /// Total number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.shapes.iter().map(|s| s.iter().product::<usize>()).sum()
    }

    /// Detached copies of every tensor (a snapshot that later training does not touch).
    pub fn snapshot(&self) -> Vec<Tensor> {
        self.tensors.iter().map(|t| t.detach().copy()).collect()
    }

    /// Overwrites every parameter with `values` (same order and shapes), outside autograd.
    pub fn assign(&self, values: &[Tensor]) -> Result<()> {
        self.check_matches(values)?;
        tch::no_grad(|| {
            for (p, v) in self.tensors.iter().zip(values) {
                p.shallow_clone().f_copy_(v)?;
            }
            Ok(())
        })
    }

    /// Overwrites parameter `i` with `value`, outside autograd.
    pub fn assign_one(&self, i: usize, value: &Tensor) -> Result<()> {
        let p = self
            .tensors
            .get(i)
            .ok_or_else(|| OptimizerError::Config(format!("parameter index {i} out of range")))?;
        tch::no_grad(|| Ok(p.shallow_clone().f_copy_(value)?))
    }

    /// The gradient of each parameter (zeros where none has been computed yet).
    pub fn grads(&self) -> Vec<Tensor> {
        self.tensors
            .iter()
            .map(|t| {
                let g = t.grad();
                if g.defined() {
                    g
                } else {
                    t.zeros_like()
                }
            })
            .collect()
    }

    /// Checks that `values` has one tensor per parameter with the parameter's shape.
    pub fn check_matches(&self, values: &[Tensor]) -> Result<()> {
        if values.len() != self.len() {
            return Err(OptimizerError::Config(format!(
                "{} tensors given for {} parameters",
                values.len(),
                self.len()
            )));
        }
        for ((name, shape), v) in self.names.iter().zip(&self.shapes).zip(values) {
            let got: Vec<usize> = v.size().iter().map(|&d| d as usize).collect();
            if &got != shape || v.kind() != Kind::Float {
                return Err(OptimizerError::Config(format!(
                    "{name}: expected f32 {shape:?}, got {:?} {got:?}",
                    v.kind()
                )));
            }
        }
        Ok(())
    }

    /// A 64-bit hash of names, shapes and the exact bits of every value: equal hashes on
    /// two workers mean bit-identical replicas. Values are digested where they live, so a
    /// GPU model is not copied to the host for it (every exchange is checked this way).
    pub fn hash(&self) -> Result<u64> {
        hash_tensors(&self.names, &self.tensors)
    }
}

/// Hash of named tensors' names, shapes and bits (see [`ParamSet::hash`]).
pub fn hash_tensors(names: &[String], tensors: &[Tensor]) -> Result<u64> {
    Ok(hash_of_records(&hash_records(names, tensors)?))
}

/// What [`hash_tensors`] digests, tensor by tensor: per tensor its name, its dims and the
/// digest of its bits. Records of consecutive runs of tensors concatenate into the
/// records of the whole, so processes that each hold a contiguous part of a model (a
/// site's ranks) agree on the whole model's hash without moving its values.
pub fn hash_records(names: &[String], tensors: &[Tensor]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (name, t) in names.iter().zip(tensors) {
        out.extend_from_slice(name.as_bytes());
        for d in t.size() {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&digest(name, t)?.to_le_bytes());
    }
    Ok(out)
}

/// The hash of [`hash_records`]' output (of one process, or concatenated in order).
pub fn hash_of_records(records: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(records);
    h.digest()
}

/// Elements digested per pass, bounding the int64 temporaries (a few times 8 bytes each).
const DIGEST_CHUNK: i64 = 1 << 22;
// SplitMix64's constants: the golden-ratio increment and the finalizer's two multipliers.
const MIX_INDEX: i64 = 0x9E37_79B9_7F4A_7C15_u64 as i64;
const MIX_1: i64 = 0xBF58_476D_1CE4_E5B9_u64 as i64;
const MIX_2: i64 = 0x94D0_49BB_1331_11EB_u64 as i64;

/// A 64-bit digest of an f32 tensor's bits, computed where the tensor lives, so a GPU model
/// is hashed without copying it to the host. Each element's 32 bits are mixed with its
/// index (xor with the index times an odd constant, then SplitMix64's
/// multiply–xorshift–multiply), and the mixed values are summed modulo 2⁶⁴. For a given
/// index the mix is a bijection, so changing any one element changes the digest; and
/// integer addition commutes, so the order in which LibTorch reduces does not matter and
/// the same bits give the same digest on every device.
///
/// On the CPU it runs as a plain loop ([`digest_host`]); elsewhere as LibTorch integer
/// operations on the device ([`digest_by_ops`]). Both compute the same function.
fn digest(name: &str, t: &Tensor) -> Result<u64> {
    if t.kind() != Kind::Float {
        return Err(OptimizerError::UnsupportedTensor {
            name: name.to_owned(),
            reason: format!("dtype {:?}, expected f32", t.kind()),
        });
    }
    if t.device() == Device::Cpu {
        return with_f32(name, &t.contiguous(), digest_host);
    }
    digest_by_ops(t)
}

/// [`digest`] of f32 tensor `t` as LibTorch operations on its device, in chunks.
fn digest_by_ops(t: &Tensor) -> Result<u64> {
    let flat = t.f_contiguous()?.f_reshape([-1])?;
    let n = flat.numel() as i64;
    let mut total = 0u64;
    let mut start = 0i64;
    while start < n {
        let len = (n - start).min(DIGEST_CHUNK);
        let bits = flat
            .f_narrow(0, start, len)?
            .f_view_dtype(Kind::Int)?
            .f_to_kind(Kind::Int64)?
            .f_bitwise_and(0xFFFF_FFFF_i64)?;
        let index = Tensor::f_arange_start(start, start + len, (Kind::Int64, t.device()))?;
        let m = bits.f_bitwise_xor_tensor(&index.f_mul_scalar(MIX_INDEX)?)?.f_mul_scalar(MIX_1)?;
        // A logical right shift by 31: LibTorch's is arithmetic on int64, so mask the sign.
        let shifted = m.f_bitwise_right_shift_tensor_scalar(31)?.f_bitwise_and((1i64 << 33) - 1)?;
        let m = m.f_bitwise_xor_tensor(&shifted)?.f_mul_scalar(MIX_2)?;
        total = total.wrapping_add(m.f_sum(Kind::Int64)?.f_int64_value(&[])? as u64);
        start += len;
    }
    Ok(total)
}

/// [`digest`] element by element on the host.
fn digest_host(values: &[f32]) -> u64 {
    values.iter().enumerate().fold(0u64, |acc, (i, v)| {
        let m = (u64::from(v.to_bits()) ^ (i as u64).wrapping_mul(MIX_INDEX as u64))
            .wrapping_mul(MIX_1 as u64);
        let m = (m ^ (m >> 31)).wrapping_mul(MIX_2 as u64);
        acc.wrapping_add(m)
    })
}

/// Runs `f` over parameter `t`'s elements, mutably, outside autograd (through a host copy
/// when `t` is not on the CPU).
pub fn with_param_mut<R>(name: &str, t: &Tensor, f: impl FnOnce(&mut [f32]) -> R) -> Result<R> {
    let mut handle = t.shallow_clone();
    with_host_f32_mut(name, &mut handle, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> ParamSet {
        ParamSet::new(vec![
            ("b".into(), Tensor::from_slice(&[1.0f32, 2.0])),
            ("a".into(), Tensor::from_slice(&[3.0f32, 4.0, 5.0, 6.0]).reshape([2, 2])),
        ])
        .unwrap()
    }

    #[test]
    fn canonical_order_and_shapes() {
        let p = set();
        assert_eq!(p.names(), ["a", "b"]);
        assert_eq!(p.shapes(), [vec![2, 2], vec![2]]);
        assert_eq!(p.numel(), 6);
    }

    #[test]
    fn hash_sees_every_bit() {
        let p = set();
        let h = p.hash().unwrap();
        assert_eq!(h, set().hash().unwrap());
        let snap = p.snapshot();
        with_param_mut("a", &p.tensors()[0], |s| s[3] = f32::from_bits(s[3].to_bits() ^ 1))
            .unwrap();
        assert_ne!(p.hash().unwrap(), h);
        p.assign(&snap).unwrap();
        assert_eq!(p.hash().unwrap(), h);
    }

    #[test]
    fn records_of_consecutive_parts_hash_to_the_whole() {
        let p = set();
        let (names, tensors) = (p.names(), p.tensors());
        let head = hash_records(&names[..1], &tensors[..1]).unwrap();
        let tail = hash_records(&names[1..], &tensors[1..]).unwrap();
        assert_eq!(hash_of_records(&[head.clone(), tail.clone()].concat()), p.hash().unwrap());
        // In another order they describe another model.
        assert_ne!(hash_of_records(&[tail, head].concat()), p.hash().unwrap());
    }

    #[test]
    fn the_digest_is_its_host_definition_and_sees_every_element() {
        // Several chunks, a ragged last one; negative values exercise the sign bit.
        let n = (2 * DIGEST_CHUNK + 1000) as usize;
        let t = Tensor::randn([n as i64], (Kind::Float, tch::Device::Cpu));
        let values = Vec::<f32>::try_from(&t).unwrap();
        let d = digest("t", &t).unwrap();
        // The device form (what a GPU runs), here on the CPU, is the host loop's function.
        assert_eq!(digest_by_ops(&t).unwrap(), d);
        assert_eq!(d, digest_host(&values));
        // Flipping any one bit, or swapping two elements, changes it.
        for (at, bit) in [(0usize, 0u32), (n / 2, 31), (n - 1, 17)] {
            let mut v = values.clone();
            v[at] = f32::from_bits(v[at].to_bits() ^ (1 << bit));
            assert_ne!(digest("t", &Tensor::from_slice(&v)).unwrap(), d, "{at} {bit}");
        }
        let mut v = values.clone();
        v.swap(3, 4_000_000);
        assert_ne!(digest("t", &Tensor::from_slice(&v)).unwrap(), d);
        // A 2-D view hashes as its elements in row-major order.
        let m = t.narrow(0, 0, 600).reshape([20, 30]);
        assert_eq!(digest("m", &m).unwrap(), digest_host(&values[..600]));
        assert_eq!(digest_by_ops(&m.transpose(0, 1)).unwrap(), {
            let tr = m.transpose(0, 1).contiguous().reshape([-1]);
            digest_host(&Vec::<f32>::try_from(&tr).unwrap())
        });
    }

    #[test]
    fn bad_sets_and_assignments_are_errors() {
        assert!(ParamSet::new(vec![]).is_err());
        let dup = vec![
            ("a".into(), Tensor::from_slice(&[1.0f32])),
            ("a".into(), Tensor::from_slice(&[1.0f32])),
        ];
        assert!(ParamSet::new(dup).is_err());
        let p = set();
        assert!(p.assign(&[Tensor::from_slice(&[1.0f32])]).is_err());
        let wrong_shape = vec![
            Tensor::zeros([4], (Kind::Float, tch::Device::Cpu)),
            Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
        ];
        assert!(p.assign(&wrong_shape).is_err());
    }
}
