//! The outer algorithms by name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An outer algorithm. The wire tag of each is fixed forever (payloads carry it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Algorithm {
    /// Data-parallel: every step, the mean of raw gradients.
    Ddp,
    /// DiLoCo: H inner steps, then Nesterov on the mean pseudo-gradient.
    Diloco,
    /// DeMo / DisTrO: decoupled momentum, DCT top-k, sign step, every step.
    Demo,
    /// SparseLoCo: H inner steps, error feedback, top-k + 2-bit values.
    Sparseloco,
    /// Streaming DiLoCo: fragments synced on a staggered, overlapped schedule.
    Streaming,
}

impl Algorithm {
    /// Every algorithm, in wire-tag order.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Ddp,
        Algorithm::Diloco,
        Algorithm::Demo,
        Algorithm::Sparseloco,
        Algorithm::Streaming,
    ];

    /// The name used on the command line and in config files.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ddp => "ddp",
            Algorithm::Diloco => "diloco",
            Algorithm::Demo => "demo",
            Algorithm::Sparseloco => "sparseloco",
            Algorithm::Streaming => "streaming",
        }
    }

    /// The byte that identifies the algorithm in a payload.
    pub fn tag(self) -> u8 {
        match self {
            Algorithm::Ddp => 0,
            Algorithm::Diloco => 1,
            Algorithm::Demo => 2,
            Algorithm::Sparseloco => 3,
            Algorithm::Streaming => 4,
        }
    }

    /// The algorithm with wire tag `tag`, if any.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.tag() == tag)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|a| a.name()).collect();
            format!("unknown algorithm {s:?}; choose one of {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>().unwrap(), a);
            assert_eq!(Algorithm::from_tag(a.tag()), Some(a));
        }
        assert_eq!(Algorithm::from_tag(200), None);
        assert!("adam".parse::<Algorithm>().unwrap_err().contains("sparseloco"));
    }
}
