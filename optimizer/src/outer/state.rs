//! An outer optimizer's checkpointable state ([`OptimizerState`]): named tensors tagged
//! with their algorithm, saved as safetensors to a file or to bytes (what a worker sends a
//! peer that is catching up), and read back with every tensor checked before anything is
//! replaced.

use std::collections::BTreeMap;
use std::path::Path;

use tch::Tensor;

use crate::algorithm::Algorithm;
use crate::error::{OptimizerError, Result};
use crate::params::ParamSet;

/// Named tensors plus the algorithm they belong to: everything an outer optimizer needs to
/// resume. Stored as safetensors; scalars are 0-d f64 tensors.
#[derive(Debug)]
pub struct OptimizerState {
    /// The algorithm that wrote it.
    pub algorithm: Algorithm,
    /// State tensors by name.
    pub tensors: BTreeMap<String, Tensor>,
}

const ALGORITHM_KEY: &str = "__algorithm";

impl OptimizerState {
    /// An empty state for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        Self { algorithm, tensors: BTreeMap::new() }
    }

    /// Adds a detached copy of `t` under `name`, on `t`'s device (a GPU optimizer's state
    /// reaches the host only when it is written or sent: [`OptimizerState::to_bytes`]).
    pub fn put(&mut self, name: impl Into<String>, t: &Tensor) {
        self.tensors.insert(name.into(), t.detach().copy());
    }

    /// Adds `t` itself under `name`, not a copy: for state encoded at once, while nothing
    /// changes `t`.
    pub fn share(&mut self, name: impl Into<String>, t: &Tensor) {
        self.tensors.insert(name.into(), t.detach());
    }

    /// [`OptimizerState::share`] of one tensor per parameter, under the names
    /// [`OptimizerState::put_per_tensor`] uses.
    pub fn share_per_tensor(&mut self, key: &str, tensors: &[Tensor]) {
        for (i, t) in tensors.iter().enumerate() {
            self.share(format!("{key}.{i}"), t);
        }
    }

    /// Adds a scalar under `name`.
    pub fn put_scalar(&mut self, name: impl Into<String>, v: f64) {
        self.tensors.insert(name.into(), Tensor::from(v));
    }

    /// The tensor stored under `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| OptimizerError::State(format!("missing {name}")))
    }

    /// The scalar stored under `name`.
    pub fn get_scalar(&self, name: &str) -> Result<f64> {
        Ok(self.get(name)?.f_double_value(&[])?)
    }

    /// Saves one tensor per parameter as `{key}.0` … `{key}.{n−1}` (read back with
    /// [`OptimizerState::per_tensor`]).
    pub fn put_per_tensor(&mut self, key: &str, tensors: &[Tensor]) {
        for (i, t) in tensors.iter().enumerate() {
            self.put(format!("{key}.{i}"), t);
        }
    }

    /// The per-tensor state saved as `{key}.0` … `{key}.{n−1}` for the model's `n`
    /// parameters: contiguous copies on the parameters' device, each checked for the
    /// parameter's shape and for finite values, so a corrupt checkpoint is refused before
    /// anything is replaced.
    pub fn per_tensor(&self, key: &str, params: &ParamSet) -> Result<Vec<Tensor>> {
        let tensors: Vec<Tensor> = (0..params.len())
            .map(|i| self.get(&format!("{key}.{i}")).map(|t| t.contiguous().copy()))
            .collect::<Result<_>>()?;
        params.check_matches(&tensors).map_err(|e| OptimizerError::State(format!("{key}: {e}")))?;
        for (i, t) in tensors.iter().enumerate() {
            crate::view::with_host_f32(&params.names()[i], t, |v| {
                meridian_kernels::error::check_finite("optimizer state", v)
            })?
            .map_err(|e| OptimizerError::State(format!("{key}.{i}: {e}")))?;
        }
        tensors.into_iter().map(|t| Ok(t.f_to_device(params.device())?)).collect()
    }

    /// Checks the state was written by `algorithm`.
    pub fn expect_algorithm(&self, algorithm: Algorithm) -> Result<()> {
        if self.algorithm == algorithm {
            Ok(())
        } else {
            Err(OptimizerError::State(format!(
                "written by {}, cannot resume {algorithm}",
                self.algorithm
            )))
        }
    }

    /// The state as safetensors bytes (what a worker sends a peer that is catching up).
    /// Tensors must be f32, f64 or u8, on any device (each is copied to the host once).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let tag = Tensor::from(f64::from(self.algorithm.tag()));
        for (name, t) in
            self.tensors.iter().chain(std::iter::once((&ALGORITHM_KEY.to_string(), &tag)))
        {
            let t = t.contiguous();
            let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            let (dtype, bytes) = match t.kind() {
                tch::Kind::Float => {
                    let v = Vec::<f32>::try_from(t.flatten(0, -1))?;
                    (safetensors::Dtype::F32, bytemuck::cast_slice(&v).to_vec())
                }
                tch::Kind::Double => {
                    let v = Vec::<f64>::try_from(t.flatten(0, -1))?;
                    (safetensors::Dtype::F64, bytemuck::cast_slice(&v).to_vec())
                }
                // Opaque bytes: a wrapped script's own optimizer state, serialized by it.
                tch::Kind::Uint8 => {
                    (safetensors::Dtype::U8, Vec::<u8>::try_from(t.flatten(0, -1))?)
                }
                other => {
                    return Err(OptimizerError::State(format!(
                        "{name}: {other:?} is not f32, f64 or u8"
                    )))
                }
            };
            owned.push((name.clone(), dtype, shape, bytes));
        }
        let views = owned
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| OptimizerError::State(format!("{name}: {e:?}")))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::tensor::serialize(views, &None)
            .map_err(|e| OptimizerError::State(format!("serializing: {e:?}")))
    }

    /// Reads bytes written by [`OptimizerState::to_bytes`]; anything else is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| OptimizerError::State(format!("not a state: {e:?}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let dims: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let data = view.data();
            let t = match view.dtype() {
                // Copy out through `from_le_bytes`: the bytes need not be aligned.
                safetensors::Dtype::F32 => Tensor::from_slice(
                    &data
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect::<Vec<_>>(),
                ),
                safetensors::Dtype::F64 => Tensor::from_slice(
                    &data
                        .chunks_exact(8)
                        .map(|c| {
                            f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        })
                        .collect::<Vec<_>>(),
                ),
                safetensors::Dtype::U8 => Tensor::from_slice(data),
                other => {
                    return Err(OptimizerError::State(format!(
                        "{name}: unsupported dtype {other:?}"
                    )))
                }
            };
            tensors.insert(name, t.f_reshape(dims.as_slice())?);
        }
        Self::tagged(tensors, || "state has no algorithm tag".into())
    }

    /// Writes the state as a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> =
            self.tensors.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
        named.push((ALGORITHM_KEY.into(), Tensor::from(f64::from(self.algorithm.tag()))));
        Tensor::write_safetensors(&named, path)?;
        Ok(())
    }

    /// Reads a state written by [`OptimizerState::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let tensors = Tensor::read_safetensors(path)?.into_iter().collect();
        Self::tagged(tensors, || format!("{} has no algorithm tag", path.display()))
    }

    /// The state of stored `tensors`, whose algorithm tag names the algorithm that wrote
    /// them; `missing` says what lacks a tag.
    fn tagged(
        mut tensors: BTreeMap<String, Tensor>,
        missing: impl FnOnce() -> String,
    ) -> Result<Self> {
        let tag = tensors
            .remove(ALGORITHM_KEY)
            .ok_or_else(|| OptimizerError::State(missing()))?
            .f_double_value(&[])?;
        let algorithm = u8::try_from(tag as i64)
            .ok()
            .and_then(Algorithm::from_tag)
            .ok_or_else(|| OptimizerError::State(format!("unknown algorithm tag {tag}")))?;
        Ok(Self { algorithm, tensors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_a_file() {
        let dir = std::env::temp_dir().join(format!("meridian-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.safetensors");
        let mut s = OptimizerState::new(Algorithm::Sparseloco);
        s.put("m.0", &Tensor::from_slice(&[1.0f32, -2.0]));
        s.put_scalar("round", 12.0);
        s.save(&path).unwrap();
        let back = OptimizerState::load(&path).unwrap();
        assert_eq!(back.algorithm, Algorithm::Sparseloco);
        assert_eq!(back.get_scalar("round").unwrap(), 12.0);
        assert_eq!(Vec::<f32>::try_from(back.get("m.0").unwrap()).unwrap(), vec![1.0, -2.0]);
        assert!(back.expect_algorithm(Algorithm::Diloco).is_err());
        // Opaque bytes (a wrapped script's optimizer state) travel through `to_bytes`.
        let mut opaque = OptimizerState::new(Algorithm::Diloco);
        opaque.put("inner/script", &Tensor::from_slice(&[0u8, 7, 255]));
        let read = OptimizerState::from_bytes(&opaque.to_bytes().unwrap()).unwrap();
        assert_eq!(
            Vec::<u8>::try_from(read.get("inner/script").unwrap()).unwrap(),
            vec![0, 7, 255]
        );
        assert!(back.get("missing").is_err());
        let bytes = s.to_bytes().unwrap();
        let again = OptimizerState::from_bytes(&bytes).unwrap();
        assert_eq!(again.algorithm, Algorithm::Sparseloco);
        assert_eq!(again.get_scalar("round").unwrap(), 12.0);
        assert!(again.get("m.0").unwrap().equal(s.get("m.0").unwrap()));
        assert!(OptimizerState::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(OptimizerState::from_bytes(b"garbage").is_err());
        std::fs::write(&path, b"not safetensors").unwrap();
        assert!(OptimizerState::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn state_bytes_never_panic_on_corruption(flips in proptest::collection::vec((0usize..4096, 0u8..8), 1..8), cut in 0usize..4096) {
            let mut s = OptimizerState::new(Algorithm::Diloco);
            s.put("m.0", &Tensor::from_slice(&[1.0f32, -2.0, 3.0]));
            s.put_scalar("round", 3.0);
            let mut bytes = s.to_bytes().unwrap();
            let n = bytes.len();
            for (at, bit) in flips {
                bytes[at % n] ^= 1 << bit;
            }
            let _ = OptimizerState::from_bytes(&bytes);
            let _ = OptimizerState::from_bytes(&bytes[..cut.min(n)]);
        }
    }
}
