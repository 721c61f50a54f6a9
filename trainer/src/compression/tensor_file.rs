//! A user's safetensors file as f32 tensors, and tensors written back in their own dtypes.
//!
//! Floating-point tensors (f16, bf16, f32, f64) are converted to contiguous CPU f32, the
//! precision every compressor works in. Integer and bool tensors, and tensors with no
//! elements, are kept aside unchanged with the reason, so a caller can report and copy
//! them. Nothing in the file can make this panic: the header is validated by the
//! `safetensors` crate (offsets, sizes, overflow) before any tensor is built.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use meridian_optimizer::view::with_f32;
use safetensors::tensor::{Dtype, SafeTensors, View};
use tch::{Kind, Tensor};

/// One tensor of a file.
#[derive(Debug)]
pub struct Entry {
    /// Its name in the file.
    pub name: String,
    /// Its dtype in the file.
    pub dtype: Dtype,
    /// Its shape in the file.
    pub shape: Vec<usize>,
    /// Its values, or why they were kept aside.
    pub content: Content,
}

/// What became of a tensor's values.
#[derive(Debug)]
pub enum Content {
    /// Contiguous CPU f32, all finite.
    Float(Tensor),
    /// Not compressible; the raw bytes as stored, and why.
    Skipped {
        /// The bytes as stored in the file.
        raw: Vec<u8>,
        /// Why the tensor is not compressed.
        reason: String,
    },
}

impl Entry {
    /// Elements of the tensor.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes the tensor takes in the file.
    pub fn stored_bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

/// A file's tensors (sorted by name) and its free-form metadata.
#[derive(Debug)]
pub struct TensorFile {
    /// Every tensor of the file.
    pub entries: Vec<Entry>,
    /// The file's `__metadata__` table, carried over to files written from it.
    pub metadata: Option<HashMap<String, String>>,
}

/// Lower-case dtype name as people write it (`f32`, `bf16`, `i64`).
pub fn dtype_name(dtype: Dtype) -> String {
    format!("{dtype:?}").to_lowercase()
}

fn float_kind(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F16 => Some(Kind::Half),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F32 => Some(Kind::Float),
        Dtype::F64 => Some(Kind::Double),
        _ => None,
    }
}

fn dims(shape: &[usize]) -> Result<Vec<i64>> {
    shape.iter().map(|&d| i64::try_from(d).context("dimension out of range")).collect()
}

/// The dtypes [`read`] takes, as safetensors headers spell them.
const READ_DTYPES: &str = "F16, BF16, F32, F64 (compressed) and BOOL, U8, I8, I16, U16, I32, \
                           U32, I64, U64 (copied unchanged)";

/// The first tensor (by name) whose header dtype is none of [`READ_DTYPES`], with that
/// dtype, when the header is readable JSON at all.
fn unknown_dtype(buffer: &[u8]) -> Option<(String, String)> {
    const KNOWN: [&str; 13] =
        ["F16", "BF16", "F32", "F64", "BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64"];
    let len = usize::try_from(u64::from_le_bytes(buffer.get(..8)?.try_into().ok()?)).ok()?;
    let header = buffer.get(8..8usize.checked_add(len)?)?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    let mut unknown: Vec<(String, String)> = header
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .filter_map(|(name, info)| {
            let dtype = info.get("dtype")?.as_str()?;
            (!KNOWN.contains(&dtype)).then(|| (name.clone(), dtype.to_owned()))
        })
        .collect();
    unknown.sort();
    unknown.into_iter().next()
}

/// Reads `path`. Errors name the file; a non-finite value (NaN, ±inf, or an f64 beyond
/// f32's range) is an error naming the tensor, since every algorithm refuses to send one
/// and a measurement without that tensor would understate the update.
pub fn read(path: &Path) -> Result<TensorFile> {
    let buffer = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let invalid = |e: safetensors::SafeTensorError| {
        // The crate's error for a dtype it has no variant for is a bare
        // `InvalidHeaderDeserialization`: name the tensor and the dtype instead.
        if let Some((name, dtype)) = unknown_dtype(&buffer) {
            return anyhow::anyhow!(
                "{}: tensor {name} has dtype {dtype}, which this build does not read; dtypes \
                 read: {READ_DTYPES}. Convert the tensor (e.g. to F32) or drop it",
                path.display()
            );
        }
        anyhow::anyhow!(
            "{} is not a safetensors file this build can read ({e:?}); dtypes read: \
             {READ_DTYPES}",
            path.display()
        )
    };
    let (_, header) = SafeTensors::read_metadata(&buffer).map_err(invalid)?;
    let file = SafeTensors::deserialize(&buffer).map_err(invalid)?;
    let mut views = file.tensors();
    views.sort_by(|a, b| a.0.cmp(&b.0));
    let mut entries = Vec::with_capacity(views.len());
    for (name, view) in views {
        let (dtype, shape) = (view.dtype(), view.shape().to_vec());
        let skip = |reason: String| Content::Skipped { raw: view.data().to_vec(), reason };
        let content = match float_kind(dtype) {
            None => skip("not floating point".to_owned()),
            Some(_) if shape.contains(&0) => skip("no elements".to_owned()),
            Some(kind) => {
                let values = Tensor::f_from_data_size(view.data(), &dims(&shape)?, kind)
                    .and_then(|t| t.f_to_kind(Kind::Float))
                    .and_then(|t| t.f_contiguous())
                    .with_context(|| format!("tensor {name}: cannot convert to f32"))?;
                let bad =
                    with_f32(&name, &values, |x| x.iter().filter(|v| !v.is_finite()).count())?;
                if bad > 0 {
                    bail!(
                        "tensor {name} holds {bad} value(s) that are NaN, infinite or beyond f32's \
                         range; no algorithm sends those. Fix or drop the tensor and run again"
                    );
                }
                Content::Float(values)
            }
        };
        entries.push(Entry { name, dtype, shape, content });
    }
    Ok(TensorFile { entries, metadata: header.metadata().clone() })
}

/// A tensor to write: name, dtype, shape and its bytes in that dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Name in the file.
    pub name: String,
    /// Dtype of `data`.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian elements, `numel · dtype.size()` bytes.
    pub data: Vec<u8>,
}

impl RawTensor {
    /// `values` (row-major f32) converted to `dtype`, a floating-point dtype.
    pub fn from_f32(name: &str, dtype: Dtype, shape: &[usize], values: &[f32]) -> Result<Self> {
        let kind = float_kind(dtype).with_context(|| {
            format!("tensor {name}: {} is not floating point", dtype_name(dtype))
        })?;
        let t = Tensor::f_from_slice(values)?.f_reshape(dims(shape)?)?.f_to_kind(kind)?;
        let t = t.f_contiguous()?;
        let mut data = vec![0u8; values.len() * dtype.size()];
        t.f_copy_data_u8(&mut data, values.len())?;
        Ok(Self { name: name.to_owned(), dtype, shape: shape.to_vec(), data })
    }
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// `tensors` as the bytes of a safetensors file.
pub fn encode(
    tensors: &[RawTensor],
    metadata: &Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    safetensors::tensor::serialize(tensors.iter().map(|t| (&t.name, t)), metadata)
        .map_err(|e| anyhow::anyhow!("cannot encode safetensors: {e:?}"))
}

/// Writes `tensors` as a safetensors file at `path`, replacing it atomically; refused if
/// `path` exists and is not a regular file (see [`crate::atomic_write::check_target`]).
pub fn write(
    path: &Path,
    tensors: &[RawTensor],
    metadata: &Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes = encode(tensors, metadata).with_context(|| format!("writing {}", path.display()))?;
    crate::atomic_write::write(path, &bytes)
}
