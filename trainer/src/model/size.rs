//! Model sizes checked before LibTorch allocates anything.
//!
//! LibTorch's allocator fails a tensor too large for the machine with an exception that tch's
//! layer constructors unwrap (a panic), and a count past `i64::MAX` cannot even be asked
//! for. So every built-in model counts its parameters first, exactly (in `i128`, where no
//! shape this crate builds can overflow unnoticed), and refuses a count beyond `i64` or
//! beyond this machine's memory with a message naming the settings that fix it.

use anyhow::{bail, Result};

/// Bytes per parameter that training holds at the least: the f32 weights, their
/// gradients and the inner AdamW's two moments.
pub const TRAINING_BYTES_PER_PARAMETER: u64 = 16;

/// Bytes per parameter that building a model holds: its f32 weights.
pub const WEIGHT_BYTES_PER_PARAMETER: u64 = 4;

/// An exact parameter count under construction: `None` once it has overflowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(Option<i128>);

impl Count {
    /// No parameters yet.
    pub fn zero() -> Self {
        Self(Some(0))
    }

    /// Adds a tensor of `dims` (each a setting, so possibly absurd).
    pub fn tensor(self, dims: &[i128]) -> Self {
        let numel = dims.iter().try_fold(1i128, |n, &d| n.checked_mul(d));
        Self(self.0.zip(numel).and_then(|(a, b)| a.checked_add(b)))
    }

    /// This count `times` over (a stack of identical layers).
    pub fn times(self, times: i128) -> Self {
        Self(self.0.and_then(|n| n.checked_mul(times)))
    }

    /// Adds another count.
    pub fn plus(self, other: Count) -> Self {
        Self(self.0.zip(other.0).and_then(|(a, b)| a.checked_add(b)))
    }

    /// The count, if it fits the `i64` LibTorch counts elements in.
    pub fn get(self) -> Option<i64> {
        self.0.and_then(|n| i64::try_from(n).ok())
    }
}

/// Checks that `model` (a description for the message, e.g. `mlp (embed 32, hidden 256)
/// over a vocabulary of 50000`) with `count` parameters fits `i64` and, holding
/// `bytes_per_parameter` bytes each (`doing` says for what), this machine's memory.
/// `fix` names the flags or settings that make it smaller. Returns the count.
pub fn check(
    model: &str,
    count: Count,
    bytes_per_parameter: u64,
    doing: &str,
    fix: &str,
) -> Result<i64> {
    let Some(params) = count.get() else {
        bail!(
            "{model} has more parameters than a 64-bit count holds (at most {}); {fix}",
            i64::MAX
        );
    };
    let Some(memory) = memory_bytes() else { return Ok(params) };
    let needed = u128::from(params.unsigned_abs()) * u128::from(bytes_per_parameter);
    if needed > u128::from(memory) {
        bail!(
            "{model} has {params} parameters; {doing} takes at least {bytes_per_parameter} \
             bytes each, {}, more than this machine's {} of memory (room for at most about \
             {} parameters); {fix}",
            human_bytes(needed),
            human_bytes(u128::from(memory)),
            memory / bytes_per_parameter
        );
    }
    Ok(params)
}

/// The memory a process here can use, in bytes: RAM (or the cgroup's limit, if lower)
/// plus swap. `None` where it cannot be read, in which case only the `i64` bound applies.
pub fn memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        kib.checked_mul(1024)
    };
    let ram = field("MemTotal:")?;
    // cgroup v2's limit is `max` when there is none; a container's limit is what counts.
    let limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(ram, |l| l.min(ram));
    Some(limit.saturating_add(field("SwapTotal:").unwrap_or(0)))
}

/// `18.0 TiB`, `23.5 GiB`.
fn human_bytes(bytes: u128) -> String {
    let mut value = bytes as f64;
    for unit in ["B", "KiB", "MiB", "GiB", "TiB", "PiB"] {
        if value < 1024.0 {
            return format!("{value:.1} {unit}");
        }
        value /= 1024.0;
    }
    format!("{value:.1} EiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exactly_and_notices_overflow() {
        let c = Count::zero().tensor(&[3, 4]).tensor(&[5]).times(2);
        assert_eq!(c.get(), Some(34));
        assert_eq!(Count::zero().tensor(&[i128::from(i64::MAX), 2]).get(), None);
        assert_eq!(Count::zero().tensor(&[i128::MAX, 2]).get(), None);
        assert_eq!(Count::zero().tensor(&[1]).times(i128::MAX).plus(Count::zero()).get(), None);
    }

    #[test]
    fn refuses_beyond_i64_and_beyond_memory_naming_the_fix() {
        let e = check("m", Count::zero().tensor(&[i128::MAX]), 4, "x", "lower --w").unwrap_err();
        assert!(e.to_string().contains("64-bit") && e.to_string().contains("lower --w"), "{e}");
        if let Some(memory) = memory_bytes() {
            let too_many = i128::from(memory / 4 + 1);
            let e = check("m", Count::zero().tensor(&[too_many]), 4, "x", "lower --w");
            let e = e.unwrap_err().to_string();
            assert!(e.contains("memory") && e.contains("lower --w"), "{e}");
        }
        assert_eq!(check("m", Count::zero().tensor(&[10]), 16, "x", "f").unwrap(), 10);
    }
}
