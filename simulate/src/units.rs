//! Human-friendly quantities in topology files: durations (`"35ms"`), rates (`"1Gbps"`),
//! probabilities (`0.005` or `"0.5%"`) and queue limits (`"256KiB"` or `"50ms"`).
//!
//! Each type parses from a string with a unit; a bare number is accepted only where its
//! unit is unambiguous (probabilities, and `0`). Parse errors say what was expected.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written with a unit: `ns`, `us` (or `µs`), `ms`, `s`, `min`; e.g. `"35ms"`,
/// `"1.5s"`. `"0"` needs no unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Dur(pub Duration);

/// A bit rate written with a unit: `bps`, `kbps`, `Mbps`, `Gbps`, `Tbps` (decimal prefixes,
/// bits per second; `bit/s` spellings also parse), e.g. `"100Mbps"`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Rate(f64);

/// A probability: a number in [0, 1] (`0.005`) or a percentage string (`"0.5%"`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Prob(f64);

/// How much a link's drop-tail queue holds: bytes (`"256KiB"`, `"1MB"`, `"1500B"`, or a
/// bare integer) or queueing delay at the link's current rate (`"50ms"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueLimit {
    /// At most this many bytes waiting (the datagram being serialized included).
    Bytes(u64),
    /// A datagram is dropped if it would wait longer than this before being serialized.
    Time(Duration),
}

impl Dur {
    /// `ms` milliseconds.
    pub fn from_millis_f64(ms: f64) -> Dur {
        Dur(Duration::from_secs_f64(ms / 1000.0))
    }
}

impl Rate {
    /// `bps` bits per second; must be finite and positive.
    pub fn new(bps: f64) -> Result<Rate, String> {
        if !bps.is_finite() {
            return Err(format!("rate must be finite, got {bps}"));
        }
        if bps <= 0.0 {
            return Err(format!("rate must be positive (got {bps} bit/s); omit it for no limit"));
        }
        Ok(Rate(bps))
    }

    /// `mbps` megabits per second (a constant in presets; panics on nothing, clamps nothing).
    pub(crate) const fn mbps(mbps: f64) -> Rate {
        Rate(mbps * 1e6)
    }

    /// Bits per second.
    pub fn bits_per_sec(self) -> f64 {
        self.0
    }
}

impl Prob {
    /// `p` in [0, 1].
    pub fn new(p: f64) -> Result<Prob, String> {
        if !(0.0..=1.0).contains(&p) {
            return Err(format!("probability must be in [0, 1] (or \"0%\"..\"100%\"), got {p}"));
        }
        Ok(Prob(p))
    }

    /// `percent` / 100, for presets.
    pub(crate) const fn percent(percent: f64) -> Prob {
        Prob(percent / 100.0)
    }

    /// The probability, in [0, 1].
    pub fn get(self) -> f64 {
        self.0
    }
}

/// Splits `"12.5ms"` into (12.5, "ms").
fn split_number(s: &str) -> Result<(f64, &str), String> {
    let s = s.trim();
    let end = s
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .map_or(s.len(), |(i, _)| i);
    // An exponent 'e' directly followed by a unit letter is the unit's (none of ours start
    // with 'e'), so no special case is needed.
    let (num, unit) = s.split_at(end);
    let value: f64 = num.parse().map_err(|_| format!("{s:?} does not start with a number"))?;
    Ok((value, unit.trim()))
}

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Dur, String> {
        let (value, unit) = split_number(s)?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "min" => 60.0,
            "" if value == 0.0 => 0.0,
            "" => return Err(format!("duration {s:?} needs a unit (ns, us, ms, s, min)")),
            other => return Err(format!("unknown duration unit {other:?} in {s:?}")),
        };
        let secs = value * scale;
        if !(secs.is_finite() && secs >= 0.0) {
            return Err(format!("duration must not be negative, got {s:?}"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        let (value, unit) = split_number(s)?;
        let scale = match unit.to_ascii_lowercase().as_str() {
            "bps" | "bit/s" | "b/s" => 1.0,
            "kbps" | "kbit/s" | "kb/s" => 1e3,
            "mbps" | "mbit/s" | "mb/s" => 1e6,
            "gbps" | "gbit/s" | "gb/s" => 1e9,
            "tbps" | "tbit/s" | "tb/s" => 1e12,
            "" => return Err(format!("rate {s:?} needs a unit (bps, kbps, Mbps, Gbps)")),
            _ => return Err(format!("unknown rate unit {unit:?} in {s:?}")),
        };
        Rate::new(value * scale).map_err(|e| format!("{e} in {s:?}"))
    }
}

impl FromStr for Prob {
    type Err = String;

    fn from_str(s: &str) -> Result<Prob, String> {
        let (value, unit) = split_number(s)?;
        match unit {
            "%" => Prob::new(value / 100.0),
            "" => Prob::new(value),
            other => Err(format!("unknown probability unit {other:?} in {s:?} (use a % sign)")),
        }
    }
}

impl FromStr for QueueLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<QueueLimit, String> {
        let (value, unit) = split_number(s)?;
        let bytes = |scale: f64| {
            let b = value * scale;
            if b.is_finite() && b >= 1.0 {
                Ok(QueueLimit::Bytes(b.round() as u64))
            } else {
                Err(format!("queue size must be at least one byte, got {s:?}"))
            }
        };
        match unit {
            "" | "B" => bytes(1.0),
            "KB" | "kB" => bytes(1e3),
            "MB" => bytes(1e6),
            "GB" => bytes(1e9),
            "KiB" => bytes(1024.0),
            "MiB" => bytes(1024.0 * 1024.0),
            "GiB" => bytes(1024.0 * 1024.0 * 1024.0),
            _ => match s.parse::<Dur>() {
                Ok(d) if d.0 > Duration::ZERO => Ok(QueueLimit::Time(d.0)),
                _ => Err(format!(
                    "queue {s:?} is neither a size (B, KB, MB, KiB, MiB) nor a positive duration"
                )),
            },
        }
    }
}

/// `v` with at most 4 decimals and no trailing zeros (so float noise does not show).
pub(crate) fn short(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_secs_f64() * 1e3;
        if ms >= 1000.0 {
            write!(f, "{}s", short(ms / 1e3))
        } else {
            write!(f, "{}ms", short(ms))
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            b if b >= 1e9 => write!(f, "{}Gbps", short(b / 1e9)),
            b if b >= 1e6 => write!(f, "{}Mbps", short(b / 1e6)),
            b if b >= 1e3 => write!(f, "{}kbps", short(b / 1e3)),
            b => write!(f, "{}bps", short(b)),
        }
    }
}

impl fmt::Display for Prob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", short(self.0 * 100.0))
    }
}

impl fmt::Display for QueueLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueLimit::Bytes(b) => write!(f, "{b}B"),
            QueueLimit::Time(d) => write!(f, "{}", Dur(*d)),
        }
    }
}

/// A visitor taking strings through `FromStr`, and numbers only where `from_number` allows.
struct Parsed<T> {
    expecting: &'static str,
    from_number: fn(f64) -> Result<T, String>,
}

impl<T: FromStr<Err = String>> Visitor<'_> for Parsed<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        (self.from_number)(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_f64(v as f64)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Parsed {
            expecting: "a duration with a unit, like \"35ms\"",
            from_number: |v| {
                if v == 0.0 {
                    Ok(Dur(Duration::ZERO))
                } else {
                    Err(format!("duration {v} needs a unit: write \"{v}ms\" or \"{v}s\""))
                }
            },
        })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Parsed {
            expecting: "a rate with a unit, like \"1Gbps\"",
            from_number: |v| {
                Rate::new(v)?;
                Err(format!("rate {v} needs a unit: write \"{v}Mbps\" or \"{v}bps\""))
            },
        })
    }
}

impl<'de> Deserialize<'de> for Prob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Parsed {
            expecting: "a probability, like 0.005 or \"0.5%\"",
            from_number: Prob::new,
        })
    }
}

impl<'de> Deserialize<'de> for QueueLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Parsed {
            expecting: "a queue size like \"256KiB\" or a queueing delay like \"50ms\"",
            from_number: |v| {
                if v.fract() == 0.0 && v >= 1.0 {
                    Ok(QueueLimit::Bytes(v as u64))
                } else {
                    Err(format!("queue size {v} must be a whole number of bytes"))
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse() {
        assert_eq!("35ms".parse::<Dur>().unwrap().0, Duration::from_millis(35));
        assert_eq!("1.5s".parse::<Dur>().unwrap().0, Duration::from_millis(1500));
        assert_eq!("250us".parse::<Dur>().unwrap().0, Duration::from_micros(250));
        assert_eq!("0".parse::<Dur>().unwrap().0, Duration::ZERO);
        assert_eq!("1Gbps".parse::<Rate>().unwrap().bits_per_sec(), 1e9);
        assert_eq!("20 Mbit/s".parse::<Rate>().unwrap().bits_per_sec(), 20e6);
        assert_eq!("0.5%".parse::<Prob>().unwrap().get(), 0.005);
        assert_eq!("0.02".parse::<Prob>().unwrap().get(), 0.02);
        assert_eq!(Prob::new(0.03).unwrap().to_string(), "3%");
        assert_eq!(Dur::from_millis_f64(0.25).to_string(), "0.25ms");
        assert_eq!(Rate::new(2.5e9).unwrap().to_string(), "2.5Gbps");
        assert_eq!("64KiB".parse::<QueueLimit>().unwrap(), QueueLimit::Bytes(65536));
        assert_eq!(
            "50ms".parse::<QueueLimit>().unwrap(),
            QueueLimit::Time(Duration::from_millis(50))
        );
    }

    #[test]
    fn bad_units_say_what_is_wrong() {
        let e = "-5Mbps".parse::<Rate>().unwrap_err();
        assert!(e.contains("positive") && e.contains("-5Mbps"), "{e}");
        assert!("5".parse::<Rate>().unwrap_err().contains("unit"));
        assert!("35".parse::<Dur>().unwrap_err().contains("unit"));
        assert!("-3ms".parse::<Dur>().unwrap_err().contains("negative"));
        assert!("3 parsecs".parse::<Dur>().unwrap_err().contains("parsecs"));
        assert!("150%".parse::<Prob>().unwrap_err().contains("[0, 1]"));
        assert!("fast".parse::<Rate>().unwrap_err().contains("number"));
        assert!("0ms".parse::<QueueLimit>().is_err());
    }
}
