//! Durations and counts as people write them on a command line (`250ms`, `1.5s`, `350M`),
//! and durations as people read them.

use std::time::Duration;

/// A duration as people write it.
pub fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.3} us", s * 1e6)
    }
}

/// Parses `250ms`, `1.5s`, `2m`, `90us` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'));
    let (number, unit) = match split {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let value: f64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration like 250ms or 1.5s"))?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" | "" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!("unknown unit {other:?} in {text:?} (use ns, us, ms, s, m or h)"))
        }
    };
    let secs = value * scale;
    if !(secs.is_finite() && secs >= 0.0) || secs > 1e9 {
        return Err(format!("{text:?} is not a usable duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `1e9`, `1.3B`, `350M`, `125k`, `42`.
pub fn parse_count(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, scale) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        Some('m' | 'M') => (&t[..t.len() - 1], 1e6),
        Some('b' | 'B' | 'g' | 'G') => (&t[..t.len() - 1], 1e9),
        Some('t' | 'T') => (&t[..t.len() - 1], 1e12),
        _ => (t, 1.0),
    };
    let v: f64 = number.parse().map_err(|_| format!("{text:?} is not a count like 1e9 or 350M"))?;
    let v = v * scale;
    if !(v.is_finite() && v >= 1.0) {
        return Err(format!("{text:?} must be at least 1"));
    }
    Ok(v)
}

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("90us").unwrap(), Duration::from_micros(90));
        for bad in ["", "fast", "-1s", "1 parsec", "nan", "1e300s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn counts_parse_with_suffixes() {
        assert_eq!(parse_count("1e9").unwrap(), 1e9);
        assert_eq!(parse_count("1.3B").unwrap(), 1.3e9);
        assert_eq!(parse_count("350M").unwrap(), 350e6);
        assert_eq!(parse_count("125k").unwrap(), 125e3);
        for bad in ["", "lots", "-5", "0", "1e400"] {
            assert!(parse_count(bad).is_err(), "{bad:?}");
        }
    }
}
