//! Why a member's payload was left out of a round: the typed reasons that
//! [`crate::outer::ApplyReport::rejected`] carries.
//!
//! A rejection is not an error: the round goes on without that member, the same on every
//! replica. Run summaries and logs print the reasons, so each variant's `Display` is the
//! sentence users see; tests and drivers that need to tell reasons apart match on the
//! variant instead of on that text.

use thiserror::Error;

use crate::algorithm::Algorithm;
use crate::payload::Encoding;

/// Why one member's payload was not applied.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The member delivered more than one payload for the round (all copies are rejected,
    /// so the outcome does not depend on arrival order).
    #[error("more than one payload from this member")]
    Duplicate,
    /// The payload was produced by another algorithm.
    #[error("{sent} payload offered to {applying}")]
    WrongAlgorithm {
        /// The algorithm the payload says produced it.
        sent: Algorithm,
        /// The algorithm applying the round.
        applying: Algorithm,
    },
    /// The payload belongs to another round.
    #[error("payload for round {sent}, applying round {applying}")]
    WrongRound {
        /// The round the payload says it belongs to.
        sent: u64,
        /// The round being applied.
        applying: u64,
    },
    /// The payload carries another number of segments than the round expects.
    #[error("{got} segments, expected {expected}")]
    SegmentCount {
        /// Segments in the payload.
        got: usize,
        /// Segments the round expects.
        expected: usize,
    },
    /// A segment is for another tensor than the one expected at its position.
    #[error("segment {segment} is for tensor {tensor}, expected tensor {expected}")]
    SegmentTensor {
        /// The segment's position in the payload.
        segment: usize,
        /// The tensor it names.
        tensor: u32,
        /// The tensor expected there.
        expected: usize,
    },
    /// A segment's encoding is not one the algorithm reads.
    #[error("tensor {tensor}: {encoding:?} segment, expected one of {allowed:?}")]
    SegmentEncoding {
        /// The tensor.
        tensor: usize,
        /// The segment's encoding.
        encoding: Encoding,
        /// The encodings the algorithm reads.
        allowed: Vec<Encoding>,
    },
    /// A segment names a tensor the model does not have.
    #[error("tensor {tensor} is not in the model")]
    NotInModel {
        /// The tensor index.
        tensor: usize,
    },
    /// A segment's shape is not the model's.
    #[error("tensor {tensor} has shape {shape:?}, the model's is {model:?}")]
    SegmentShape {
        /// The tensor.
        tensor: usize,
        /// The shape the segment declares.
        shape: Vec<u32>,
        /// The model's shape of that tensor.
        model: Vec<usize>,
    },
    /// A segment's body does not decode (truncated, malformed encoding, out-of-range
    /// indices, non-finite values).
    #[error("tensor {tensor}: {reason}")]
    Tensor {
        /// The tensor.
        tensor: usize,
        /// What the decoder said.
        reason: String,
    },
    /// A decoded value is too large for the sum of the round's members to stay finite.
    #[error("tensor {tensor}: value {value} is out of range")]
    OutOfRange {
        /// The tensor.
        tensor: usize,
        /// The value.
        value: f32,
    },
    /// The payload does not carry the fragment due now (Streaming DiLoCo).
    #[error("fragment {fragment} due now: {reason}")]
    Fragment {
        /// The fragment due at this step.
        fragment: usize,
        /// What is wrong with the payload.
        reason: Box<Rejection>,
    },
    /// A value exceeds the bound under which no sum over the round's members overflows.
    #[error("value {value:e} exceeds the bound {limit:e}")]
    ExceedsBound {
        /// The value.
        value: f32,
        /// The bound, `f32::MAX / (2n)` for `n` members.
        limit: f32,
    },
    /// Under `reject_outliers`, the update's norm is too far above the round's median.
    #[error(
        "update norm {norm:.3e} exceeds {outlier_factor} × the round's median norm {median:.3e}"
    )]
    NormOutlier {
        /// The member's update norm.
        norm: f64,
        /// The configured `outlier_factor`.
        outlier_factor: f64,
        /// The round's median norm.
        median: f64,
    },
    /// Under `reject_outliers`, the update points against the other members' sum.
    #[error(
        "update has cosine {cosine:.3} with the other members' sum, below min_cosine {min_cosine}"
    )]
    Direction {
        /// Cosine similarity with the sum of the other members' updates.
        cosine: f64,
        /// The configured `min_cosine`.
        min_cosine: f64,
    },
    /// A ring aggregate did not decode; every member it sums is rejected.
    #[error("{0}")]
    Aggregate(String),
    /// The payload's bytes did not decode (the in-process drivers report these).
    #[error("{0}")]
    Malformed(String),
}

impl Rejection {
    /// Tensor `tensor`'s segment did not decode, as `reason` says.
    pub fn tensor(tensor: usize, reason: impl std::fmt::Display) -> Self {
        Rejection::Tensor { tensor, reason: reason.to_string() }
    }
}

/// Rejected payloads: the member and why.
pub type Rejections = Vec<(u32, Rejection)>;

/// Sorts rejections by member, then by the reason's text, so that every replica reports
/// the same list whatever order the payloads arrived in. (The text, not the variant, breaks
/// ties: that is the order reports have always had.)
pub fn sort(rejected: &mut Rejections) {
    rejected.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.to_string().cmp(&b.1.to_string())));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_as_it_always_has() {
        // The sentences run summaries and logs have always printed.
        let cases: Vec<(Rejection, &str)> = vec![
            (Rejection::Duplicate, "more than one payload from this member"),
            (
                Rejection::WrongAlgorithm { sent: Algorithm::Demo, applying: Algorithm::Diloco },
                "demo payload offered to diloco",
            ),
            (
                Rejection::WrongRound { sent: 4, applying: 5 },
                "payload for round 4, applying round 5",
            ),
            (Rejection::SegmentCount { got: 1, expected: 2 }, "1 segments, expected 2"),
            (
                Rejection::SegmentTensor { segment: 0, tensor: 3, expected: 1 },
                "segment 0 is for tensor 3, expected tensor 1",
            ),
            (
                Rejection::SegmentEncoding {
                    tensor: 2,
                    encoding: Encoding::Compressed,
                    allowed: vec![Encoding::F32, Encoding::Bf16],
                },
                "tensor 2: Compressed segment, expected one of [F32, Bf16]",
            ),
            (Rejection::NotInModel { tensor: 9 }, "tensor 9 is not in the model"),
            (
                Rejection::SegmentShape { tensor: 0, shape: vec![2, 4], model: vec![8] },
                "tensor 0 has shape [2, 4], the model's is [8]",
            ),
            (Rejection::Tensor { tensor: 1, reason: "truncated".into() }, "tensor 1: truncated"),
            (
                Rejection::OutOfRange { tensor: 3, value: 1.5e38 },
                "tensor 3: value 150000000000000000000000000000000000000 is out of range",
            ),
            (
                Rejection::Fragment {
                    fragment: 1,
                    reason: Box::new(Rejection::SegmentCount { got: 0, expected: 2 }),
                },
                "fragment 1 due now: 0 segments, expected 2",
            ),
            (
                Rejection::ExceedsBound { value: 1.0e38, limit: 4.25e37 },
                "value 1e38 exceeds the bound 4.25e37",
            ),
            (
                Rejection::NormOutlier { norm: 671.04, outlier_factor: 3.0, median: 6.4536 },
                "update norm 6.710e2 exceeds 3 × the round's median norm 6.454e0",
            ),
            (
                Rejection::Direction { cosine: -0.7051, min_cosine: 0.0 },
                "update has cosine -0.705 with the other members' sum, below min_cosine 0",
            ),
            (Rejection::Aggregate("truncated ring aggregate".into()), "truncated ring aggregate"),
            (Rejection::Malformed("bad magic".into()), "bad magic"),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text, "{reason:?}");
        }
    }

    #[test]
    fn ties_between_reasons_of_one_member_sort_by_their_text() {
        let mut r: Rejections = vec![
            (2, Rejection::Malformed("b".into())),
            (1, Rejection::Duplicate),
            (2, Rejection::Aggregate("a".into())),
        ];
        sort(&mut r);
        let texts: Vec<String> = r.iter().map(|(m, e)| format!("{m} {e}")).collect();
        assert_eq!(texts, ["1 more than one payload from this member", "2 a", "2 b"]);
    }
}
