//! How well a pipeline's quantizer served the values top-k kept: the relative error of
//! the kept values alone (the whole-tensor error mixes in what top-k dropped) and how many
//! values each of the quantizer's levels took, summed over tensors.
//!
//! A level that takes no value is a wasted code; `meridian compress` prints the
//! occupancy so that a codebook that uses two of its four 2-bit levels shows.

use meridian_kernels::pipeline::Compressor;
use meridian_kernels::quant::bin_occupancy;

/// The kept values' error and the quantizer's level occupancy, for one tensor or summed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValueStats {
    /// Values kept.
    pub kept: usize,
    /// ‖v − v̂‖² over the kept values `v` and what a receiver decodes for them, `v̂`.
    pub err2: f64,
    /// ‖v‖².
    pub norm2: f64,
    /// Values per code (index = code), summed over tensors; empty when values go as f32.
    pub occupancy: Vec<usize>,
}

impl ValueStats {
    /// What `compressor`'s last call kept and quantized, against the values it sent
    /// (`sent`, the decoded values in the order of its selection).
    pub fn of_last_call(compressor: &Compressor, sent: &[f32]) -> Self {
        let kept = compressor.last_selection();
        let (mut err2, mut norm2) = (0f64, 0f64);
        for (&v, &s) in kept.values.iter().zip(sent) {
            err2 += (f64::from(v) - f64::from(s)).powi(2);
            norm2 += f64::from(v).powi(2);
        }
        let occupancy = compressor.last_quantized().map(bin_occupancy).unwrap_or_default();
        Self { kept: kept.len(), err2, norm2, occupancy }
    }

    /// Adds `other`'s counts (occupancies of different widths are added code by code).
    pub fn add(&mut self, other: &ValueStats) {
        self.kept += other.kept;
        self.err2 += other.err2;
        self.norm2 += other.norm2;
        if self.occupancy.len() < other.occupancy.len() {
            self.occupancy.resize(other.occupancy.len(), 0);
        }
        for (a, b) in self.occupancy.iter_mut().zip(&other.occupancy) {
            *a += b;
        }
    }

    /// ‖v − v̂‖ / ‖v‖, 0 when nothing was lost.
    pub fn rel_error(&self) -> f64 {
        if self.err2 == 0.0 {
            0.0
        } else {
            (self.err2 / self.norm2).sqrt()
        }
    }

    /// One line for a report: the kept values' error, then, when quantized, the count and
    /// share of values at each level, e.g. `levels used 4/4: [2025 6160 6229 1970]
    /// (12% 38% 38% 12%)`.
    pub fn describe(&self) -> String {
        let mut line = format!("kept values: {}, rel.error {:.4}", self.kept, self.rel_error());
        if !self.occupancy.is_empty() {
            let used = self.occupancy.iter().filter(|&&n| n > 0).count();
            let total = self.occupancy.iter().sum::<usize>().max(1) as f64;
            let counts: Vec<String> = self.occupancy.iter().map(usize::to_string).collect();
            line.push_str(&format!(
                "; levels used {used}/{}: [{}]",
                self.occupancy.len(),
                counts.join(" ")
            ));
            if self.occupancy.len() <= 16 {
                let shares: Vec<String> = self
                    .occupancy
                    .iter()
                    .map(|&n| format!("{:.0}%", 100.0 * n as f64 / total))
                    .collect();
                line.push_str(&format!(" ({})", shares.join(" ")));
            }
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_kernels::pipeline::CompressorConfig;

    #[test]
    fn stats_measure_the_kept_values_and_count_every_level() {
        let n = 4096 * 4;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 - 499.5) / 500.0).collect();
        let mut c = Compressor::new(CompressorConfig::sparseloco(), &[n]).unwrap();
        let out = c.compress(&x).unwrap();
        let s = ValueStats::of_last_call(&c, &out.sent.values);
        assert_eq!(s.kept, 256);
        assert_eq!(s.occupancy.len(), 4);
        assert_eq!(s.occupancy.iter().sum::<usize>(), 256);
        let kept: f64 = out.sent.indices.iter().map(|&i| f64::from(x[i as usize]).powi(2)).sum();
        assert!((s.norm2 - kept).abs() < 1e-9 * kept);
        assert!(s.rel_error() > 0.0 && s.rel_error() < 0.1, "{}", s.rel_error());

        let mut total = ValueStats::default();
        total.add(&s);
        total.add(&s);
        assert_eq!(total.kept, 512);
        assert_eq!(total.occupancy, s.occupancy.iter().map(|k| 2 * k).collect::<Vec<_>>());
        assert!((total.rel_error() - s.rel_error()).abs() < 1e-12);
        let line = total.describe();
        assert!(line.starts_with("kept values: 512, rel.error "), "{line}");
        assert!(line.contains("levels used 4/4: ["), "{line}");

        let raw = CompressorConfig { values: None, ..CompressorConfig::sparseloco() };
        let mut c = Compressor::new(raw, &[n]).unwrap();
        let out = c.compress(&x).unwrap();
        let s = ValueStats::of_last_call(&c, &out.sent.values);
        assert_eq!((s.rel_error(), s.occupancy.len()), (0.0, 0));
        assert!(!s.describe().contains("levels"));
    }
}
