//! `meridian compress --input FILE.safetensors`: how much would my model's updates shrink?
//!
//! Reads any safetensors file (gradients, pseudo-gradients, weights), runs each selected
//! algorithm's encoder and decoder on every tensor, and prints per tensor and in total the
//! bytes before and after, the ratio, and the relative error ‖x − decoded‖ / ‖x‖ of what
//! a receiver reconstructs. `--out` writes the decoded tensors (same names, shapes and
//! dtypes as the input) for comparison with other implementations: to a regular file,
//! replaced atomically (a symlink, device or other special file is refused), or with
//! `--out -` to standard output, the report then going to standard error.
//!
//! Definitions:
//! - *bytes* are the tensor's bytes as stored in the input (elements × dtype size), so a
//!   bf16 file sent as `diloco-f32` shows a ratio of 0.5.
//! - *sent* is the exact length of the algorithm's encoding of the tensor (for the kernel
//!   pipelines including their header and packed indices), without the payload framing
//!   common to all algorithms (see [`crate::compression::codec`]).
//! - the error is measured in f32 against the tensor converted to f32, the precision the
//!   algorithms work in; the total error is that of all compressed tensors as one vector.
//!
//! Shapes: every tensor is compressed with its own shape, as training would send it. The
//! DCT pipelines transform 0-d and 1-d tensors as vectors and ≥3-d tensors as a matrix of
//! [first dimension, product of the rest]; SparseLoCo chunks the flat values.
//!
//! Integer, bool and empty tensors are listed as skipped and copied unchanged to `--out`.
//! A NaN or infinite value is an error naming the tensor (see [`crate::compression::tensor_file::read`]).

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use meridian_optimizer::view::with_f32;

use crate::compression::codec::Codec;
use crate::compression::tensor_file::{self, dtype_name, Content, RawTensor, TensorFile};
use crate::compression::values::ValueStats;

/// One tensor's result under one algorithm.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorReport {
    /// Name in the file.
    pub name: String,
    /// Dtype in the file, lower case.
    pub dtype: String,
    /// Shape in the file.
    pub shape: Vec<usize>,
    /// Bytes as stored in the file.
    pub bytes: usize,
    /// Exact bytes of the algorithm's encoding.
    pub sent: usize,
    /// ‖x − decoded‖².
    pub err2: f64,
    /// ‖x‖².
    pub norm2: f64,
    /// A pipeline's kept values and its quantizer's level occupancy; `None` for a dense
    /// transport.
    pub values: Option<ValueStats>,
}

/// ‖x − decoded‖ / ‖x‖, with 0/0 = 0 (a zero tensor decoded to zero).
pub fn rel_error(err2: f64, norm2: f64) -> f64 {
    if err2 == 0.0 {
        0.0
    } else {
        (err2 / norm2).sqrt()
    }
}

/// Where `--out` sends the decoded tensors.
#[derive(Debug, Clone, Copy)]
enum Destination<'a> {
    /// A file, replaced atomically (never a symlink, device or other special file).
    File(&'a Path),
    /// Standard output (`--out -`); the report then goes to standard error.
    Stdout,
}

impl<'a> Destination<'a> {
    fn parse(out: &'a Path) -> Self {
        if out == Path::new("-") {
            Destination::Stdout
        } else {
            Destination::File(out)
        }
    }
}

/// Runs `meridian compress --input`: every algorithm of `algos` on every tensor of `input`,
/// and with `out` (only for one algorithm) the decoded tensors written there; `-` writes
/// them to standard output, and the report to standard error so that the two do not mix.
pub fn run(input: &Path, algos: &[String], out: Option<&Path>) -> Result<()> {
    let codecs = parse_codecs(algos)?;
    let dest = out.map(Destination::parse);
    if dest.is_some() && codecs.len() != 1 {
        bail!("--out writes one algorithm's decoded tensors; give exactly one --algo");
    }
    match dest {
        Some(Destination::File(out)) => {
            refuse_overwriting_input(input, out)?;
            // Before the work, not only at the write: a refused target should cost nothing.
            crate::atomic_write::check_target(out).context("--out")?;
        }
        Some(Destination::Stdout) if std::io::stdout().is_terminal() => bail!(
            "--out - writes the decoded safetensors (binary) to standard output, which is a \
             terminal: redirect it to a file or a pipe, or give --out a file name"
        ),
        _ => {}
    }
    let file = tensor_file::read(input)?;
    report(&input.display().to_string(), &file, &codecs, dest)
}

/// The same report on tensors made in memory (`meridian compress --synthetic`), which
/// `label` names in the report.
pub fn run_in_memory(label: &str, file: &TensorFile, algos: &[String]) -> Result<()> {
    report(label, file, &parse_codecs(algos)?, None)
}

fn parse_codecs(algos: &[String]) -> Result<Vec<(String, Codec)>> {
    if algos.is_empty() {
        bail!("--algo names no algorithm");
    }
    algos.iter().map(|a| Ok((a.clone(), Codec::parse(a)?))).collect()
}

/// Every codec on every tensor of `file` (called `label`), printed, with the decoded
/// tensors written to `dest`.
fn report(
    label: &str,
    file: &TensorFile,
    codecs: &[(String, Codec)],
    dest: Option<Destination<'_>>,
) -> Result<()> {
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let w: &mut dyn Write = match dest {
        Some(Destination::Stdout) => &mut stderr,
        _ => &mut stdout,
    };
    print_inventory(w, label, file)?;
    let mut totals = Vec::new();
    // One algorithm that cannot take this input (values too large for the DCT, say) should
    // not hide what the others make of it: report it, go on, and fail at the end.
    let mut failed = Vec::new();
    for (name, codec) in codecs {
        let result =
            compress_all(file, codec, dest.is_some()).with_context(|| format!("{name} on {label}"));
        let (reports, decoded) = match result {
            Ok(done) => done,
            Err(e) if codecs.len() > 1 => {
                writeln!(w, "\n{name}: failed: {e:#}")?;
                failed.push(name.as_str());
                continue;
            }
            Err(e) => return Err(e),
        };
        print_table(w, name, codec, &reports)?;
        totals.push((name.as_str(), total(&reports)));
        match dest {
            Some(Destination::File(out)) => {
                tensor_file::write(out, &decoded, &file.metadata)?;
                writeln!(
                    w,
                    "\nwrote {name}'s decoded tensors to {} (skipped tensors copied unchanged)",
                    out.display()
                )?;
            }
            Some(Destination::Stdout) => {
                let bytes = tensor_file::encode(&decoded, &file.metadata)
                    .context("encoding the decoded tensors for standard output")?;
                let mut out = std::io::stdout().lock();
                out.write_all(&bytes)
                    .and_then(|()| out.flush())
                    .context("--out -: cannot write the decoded tensors to standard output")?;
                writeln!(
                    w,
                    "\nwrote {name}'s decoded tensors to standard output ({} bytes; skipped \
                     tensors copied unchanged)",
                    bytes.len()
                )?;
            }
            None => {}
        }
    }
    if totals.len() > 1 {
        print_summary(w, &totals)?;
    }
    writeln!(
        w,
        "\nbytes: as stored in the input; sent: exact encoded length; \
         rel.error = ‖x − decoded‖ / ‖x‖ for one exchange; kept values: the same over the \
         entries top-k kept, and how many of them each quantizer level took"
    )?;
    if !failed.is_empty() {
        bail!(
            "{} of {} algorithms could not compress {}: {} (see each one's reason above)",
            failed.len(),
            codecs.len(),
            label,
            failed.join(", ")
        );
    }
    Ok(())
}

/// `out` must not be the input (or a link to it): writing it would destroy what was read.
fn refuse_overwriting_input(input: &Path, out: &Path) -> Result<()> {
    let same = match (input.canonicalize(), out.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same || input == out {
        bail!("--out {} is the input file; choose another path", out.display());
    }
    Ok(())
}

fn print_inventory(w: &mut dyn Write, label: &str, file: &TensorFile) -> std::io::Result<()> {
    let float = file.entries.iter().filter(|e| matches!(e.content, Content::Float(_)));
    let (count, numel, bytes) = float.fold((0usize, 0usize, 0usize), |(c, n, b), e| {
        (c + 1, n + e.numel(), b + e.stored_bytes())
    });
    writeln!(
        w,
        "{label}: {} tensors; {count} compressed ({numel} values, {bytes} bytes as stored)",
        file.entries.len()
    )?;
    for e in &file.entries {
        if let Content::Skipped { reason, .. } = &e.content {
            writeln!(w, "  skipped {} ({} {:?}): {reason}", e.name, dtype_name(e.dtype), e.shape)?;
        }
    }
    Ok(())
}

/// Reports for every compressed tensor and, when `keep` is set, every tensor of the file
/// as it would be written to `--out`.
fn compress_all(
    file: &TensorFile,
    codec: &Codec,
    keep: bool,
) -> Result<(Vec<TensorReport>, Vec<RawTensor>)> {
    let mut reports = Vec::new();
    let mut decoded = Vec::new();
    for e in &file.entries {
        let values = match &e.content {
            Content::Float(values) => values,
            Content::Skipped { raw, .. } => {
                if keep {
                    decoded.push(RawTensor {
                        name: e.name.clone(),
                        dtype: e.dtype,
                        shape: e.shape.clone(),
                        data: raw.clone(),
                    });
                }
                continue;
            }
        };
        let (rt, err2, norm2) = with_f32(&e.name, values, |x| {
            let rt = codec.round_trip(&e.shape, x)?;
            let (mut err2, mut norm2) = (0f64, 0f64);
            for (a, b) in x.iter().zip(&rt.decoded) {
                err2 += (f64::from(*a) - f64::from(*b)).powi(2);
                norm2 += f64::from(*a).powi(2);
            }
            anyhow::Ok((rt, err2, norm2))
        })?
        .with_context(|| format!("tensor {} {:?}", e.name, e.shape))?;
        if keep {
            decoded.push(RawTensor::from_f32(&e.name, e.dtype, &e.shape, &rt.decoded)?);
        }
        reports.push(TensorReport {
            name: e.name.clone(),
            dtype: dtype_name(e.dtype),
            shape: e.shape.clone(),
            bytes: e.stored_bytes(),
            sent: rt.bytes,
            err2,
            norm2,
            values: rt.values.clone(),
        });
    }
    Ok((reports, decoded))
}

/// The sum over tensors, as one report named `TOTAL`.
fn total(reports: &[TensorReport]) -> TensorReport {
    reports.iter().fold(
        TensorReport {
            name: "TOTAL".to_owned(),
            dtype: String::new(),
            shape: Vec::new(),
            bytes: 0,
            sent: 0,
            err2: 0.0,
            norm2: 0.0,
            values: None,
        },
        |mut t, r| {
            t.bytes += r.bytes;
            t.sent += r.sent;
            t.err2 += r.err2;
            t.norm2 += r.norm2;
            if let Some(v) = &r.values {
                t.values.get_or_insert_with(ValueStats::default).add(v);
            }
            t
        },
    )
}

fn ratio(r: &TensorReport) -> String {
    if r.sent == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}x", r.bytes as f64 / r.sent as f64)
    }
}

/// Four decimals, or three significant digits for errors below 0.001 (bf16, int8).
fn fmt_error(e: f64) -> String {
    if e != 0.0 && e < 1e-3 {
        format!("{e:.2e}")
    } else {
        format!("{e:.4}")
    }
}

fn print_table(
    w: &mut dyn Write,
    algo: &str,
    codec: &Codec,
    reports: &[TensorReport],
) -> std::io::Result<()> {
    let name_w = reports.iter().map(|r| r.name.len()).max().unwrap_or(0).max(6);
    let shape_w = reports.iter().map(|r| format!("{:?}", r.shape).len()).max().unwrap_or(0).max(5);
    writeln!(w, "\n{algo}: {}", codec.describe())?;
    writeln!(
        w,
        "{:<name_w$}  {:<5} {:<shape_w$} {:>12} {:>12} {:>9} {:>10}",
        "tensor", "dtype", "shape", "bytes", "sent", "ratio", "rel.error"
    )?;
    let row = |w: &mut dyn Write, r: &TensorReport, shape: String| {
        writeln!(
            w,
            "{:<name_w$}  {:<5} {:<shape_w$} {:>12} {:>12} {:>9} {:>10}",
            r.name,
            r.dtype,
            shape,
            r.bytes,
            r.sent,
            ratio(r),
            fmt_error(rel_error(r.err2, r.norm2))
        )
    };
    for r in reports {
        row(w, r, format!("{:?}", r.shape))?;
    }
    let total = total(reports);
    row(w, &total, String::new())?;
    match &total.values {
        Some(v) => writeln!(w, "  {}", v.describe()),
        None => Ok(()),
    }
}

fn print_summary(w: &mut dyn Write, totals: &[(&str, TensorReport)]) -> std::io::Result<()> {
    writeln!(w, "\nall tensors:")?;
    writeln!(
        w,
        "{:<22} {:>12} {:>12} {:>9} {:>10}",
        "algorithm", "bytes", "sent", "ratio", "rel.error"
    )?;
    for (name, t) in totals {
        writeln!(
            w,
            "{:<22} {:>12} {:>12} {:>9} {:>10}",
            name,
            t.bytes,
            t.sent,
            ratio(t),
            fmt_error(rel_error(t.err2, t.norm2))
        )?;
    }
    Ok(())
}
