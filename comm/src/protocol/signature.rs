//! What a worker trains, as facts the coordinator compares at join: [`RunSignature`].
//!
//! A worker started with another model, algorithm or setting than the run's would corrupt
//! it: its payloads decode against other shapes, or apply with another learning rate. So
//! every `Join` carries the worker's signature, an ordered map of facts such as
//! `algorithm = diloco`, `setting.outer_lr = 0.7`, `param.h.0.attn.weight = f32[64, 64]`,
//! and the coordinator refuses one that differs from the run's
//! ([`RefuseReason::SignatureMismatch`](super::RefuseReason::SignatureMismatch)), naming
//! every difference. The protocol gives the facts no meaning: the application decides what
//! they are, and a key's first dot-separated word is only used to word the differences
//! (`setting outer_lr: …`). An empty signature (a test double, a tool) is not checked.
//!
//! Two kinds of join are compared more loosely. Facts of kind [`OPTIONAL_KIND`] describe
//! what a worker reads rather than what it trains (its corpus's fingerprint): a run may
//! leave them unchecked, so they are compared only where both the run's signature and the
//! worker's hold the same key. And a worker that follows the run's settings (it builds its model from the
//! settings the welcome hands it) joins with only such facts, compared on its own keys
//! ([`RunSignature::join_differences`]).
//!
//! A signature is bounded ([`MAX_SIGNATURE_ENTRIES`] facts, [`MAX_SIGNATURE_BYTES`] bytes of
//! keys and values): decoding refuses a larger one, so a `Join` frame stays small, and
//! [`RunSignature::from_facts`] folds the facts that do not fit into one digest fact.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most facts a signature holds.
pub const MAX_SIGNATURE_ENTRIES: usize = 100_000;
/// The most bytes of keys and values a signature holds, all facts together.
pub const MAX_SIGNATURE_BYTES: usize = 1 << 20;
/// Differences listed one per line in a refusal; more are counted in a last line.
pub const MAX_LISTED_DIFFERENCES: usize = 20;
/// The longest difference line a refusal carries, in bytes (a decoded refusal with a longer
/// one is malformed). Keys and values are shortened to fit.
pub const MAX_DIFFERENCE_LINE: usize = 4096;
/// The kind of fact (a key's first word) compared only where both signatures hold the
/// key: what a worker reads, which a run (or a worker) may leave unchecked.
pub const OPTIONAL_KIND: &str = "corpus";
/// The key of the fact that stands for the facts [`RunSignature::from_facts`] could not keep.
pub const OVERFLOW_KEY: &str = "overflow";

/// Characters of a key or value shown in a difference line; the rest is cut (`…`), so three
/// of them and the wording stay well within [`MAX_DIFFERENCE_LINE`].
const SHOWN_CHARS: usize = 200;
/// Bytes kept free for the overflow fact when facts are folded.
const OVERFLOW_RESERVE: usize = 128;

/// What a worker trains, as ordered `key = value` facts (see the [module docs](self)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RunSignature(BTreeMap<String, String>);

impl RunSignature {
    /// The empty signature: not checked by the coordinator.
    pub fn new() -> Self {
        Self::default()
    }

    /// A signature of `facts`. Facts past the limits (in key order) are folded into one
    /// fact, [`OVERFLOW_KEY`] `= N more facts, digest …`: a difference among them is still
    /// found, though not named.
    pub fn from_facts(facts: BTreeMap<String, String>) -> Self {
        let fits = facts.len() <= MAX_SIGNATURE_ENTRIES && byte_len(&facts) <= MAX_SIGNATURE_BYTES;
        if fits {
            return RunSignature(facts);
        }
        let mut kept = BTreeMap::new();
        let mut bytes = 0usize;
        let mut folded = xxhash_rust::xxh3::Xxh3::new();
        let mut rest = 0usize;
        for (key, value) in facts {
            let len = key.len() + value.len();
            let room = rest == 0
                && key != OVERFLOW_KEY
                && kept.len() + 1 < MAX_SIGNATURE_ENTRIES
                && bytes + len + OVERFLOW_RESERVE <= MAX_SIGNATURE_BYTES;
            if room {
                bytes += len;
                kept.insert(key, value);
            } else {
                // Lengths first, so that no two lists of facts digest the same bytes.
                for part in [&key, &value] {
                    folded.update(&(part.len() as u64).to_le_bytes());
                    folded.update(part.as_bytes());
                }
                rest += 1;
            }
        }
        kept.insert(
            OVERFLOW_KEY.to_string(),
            format!("{rest} more facts, digest {:032x}", folded.digest128()),
        );
        RunSignature(kept)
    }

    /// The facts, ascending by key.
    pub fn facts(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// True when it has no facts (and is not checked).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of facts.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Bytes of keys and values, all facts together.
    pub fn byte_len(&self) -> usize {
        byte_len(&self.0)
    }

    /// Whether it is within [`MAX_SIGNATURE_ENTRIES`] and [`MAX_SIGNATURE_BYTES`].
    pub fn within_limits(&self) -> bool {
        self.len() <= MAX_SIGNATURE_ENTRIES && self.byte_len() <= MAX_SIGNATURE_BYTES
    }

    /// How a joining worker's signature (`self`) differs from the `run`'s, as the
    /// coordinator checks a join: a fact of [`OPTIONAL_KIND`] is compared only where both
    /// hold its key, and a worker that `follows` the run's settings only on the keys both
    /// hold. Worded as [`RunSignature::differences`] words them.
    pub fn join_differences(&self, run: &RunSignature, follows: bool) -> Vec<String> {
        let both = |key: &str| self.0.contains_key(key) && run.0.contains_key(key);
        let compared = |key: &str| both(key) || (!follows && kind(key) != OPTIONAL_KIND);
        let part = |of: &RunSignature| {
            RunSignature(
                of.0.iter()
                    .filter(|(k, _)| compared(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )
        };
        part(self).differences(&part(run))
    }

    /// How this worker's signature (`self`) differs from the `run`'s: one line per key that
    /// is missing, extra or different, such as
    /// `setting outer_lr: the run has 0.7, this worker 0.5` or
    /// `param lm_head.bias: the run has f32[256], this worker has none`. Kinds of fact (a
    /// key's first dot-separated word) with fewer differences come first, ascending by key
    /// within a kind: another model differs in every parameter, and the algorithm or a
    /// setting that differs too must not drown among them. At most
    /// [`MAX_LISTED_DIFFERENCES`] lines, then `and N more (N1 param, N2 setting)`. Empty
    /// when they agree.
    pub fn differences(&self, run: &RunSignature) -> Vec<String> {
        let (mut mine, mut theirs) = (self.0.iter().peekable(), run.0.iter().peekable());
        let mut found = Vec::new();
        loop {
            let difference = match (theirs.peek(), mine.peek()) {
                (None, None) => break,
                (Some(&(rk, rv)), Some(&(wk, wv))) if rk == wk => {
                    let _ = (theirs.next(), mine.next());
                    if rv == wv {
                        continue;
                    }
                    (rk, Some(rv), Some(wv))
                }
                (Some(&(rk, rv)), Some(&(wk, _))) if rk < wk => {
                    let _ = theirs.next();
                    (rk, Some(rv), None)
                }
                (Some(&(rk, rv)), None) => {
                    let _ = theirs.next();
                    (rk, Some(rv), None)
                }
                (_, Some(&(wk, wv))) => {
                    let _ = mine.next();
                    (wk, None, Some(wv))
                }
            };
            found.push(difference);
        }
        let mut per_kind: BTreeMap<&str, usize> = BTreeMap::new();
        for (key, _, _) in &found {
            *per_kind.entry(kind(key)).or_default() += 1;
        }
        // Stable: keys stay ascending within a kind.
        found.sort_by_key(|(key, _, _)| (per_kind.get(kind(key)).copied(), kind(key)));
        let mut lines: Vec<String> = found
            .iter()
            .take(MAX_LISTED_DIFFERENCES)
            .map(|(key, run_has, worker_has)| difference_line(key, *run_has, *worker_has))
            .collect();
        let mut unlisted: BTreeMap<&str, usize> = BTreeMap::new();
        for (key, _, _) in found.iter().skip(MAX_LISTED_DIFFERENCES) {
            *unlisted.entry(kind(key)).or_default() += 1;
        }
        if !unlisted.is_empty() {
            let total: usize = unlisted.values().sum();
            let kinds: Vec<String> =
                unlisted.iter().map(|(kind, n)| format!("{n} {}", shown(kind))).collect();
            lines.push(format!("and {total} more ({})", kinds.join(", ")));
        }
        lines
    }
}

impl FromIterator<(String, String)> for RunSignature {
    /// [`RunSignature::from_facts`] of the pairs (a later duplicate key wins).
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self::from_facts(iter.into_iter().collect())
    }
}

/// A key's kind: its first dot-separated word (`param` of `param.h.0.attn.weight`).
fn kind(key: &str) -> &str {
    key.split_once('.').map_or(key, |(kind, _)| kind)
}

fn byte_len(facts: &BTreeMap<String, String>) -> usize {
    facts.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// `param h.0.attn.weight: the run has f32[64, 64], this worker f32[64, 32]`.
fn difference_line(key: &str, run_has: Option<&String>, worker_has: Option<&String>) -> String {
    let label = match key.split_once('.') {
        Some((kind, name)) => format!("{} {}", shown(kind), shown(name)),
        None => shown(key),
    };
    let run = run_has.map_or_else(|| "none".to_string(), |v| shown(v));
    let worker = worker_has.map_or_else(|| "has none".to_string(), |v| shown(v));
    format!("{label}: the run has {run}, this worker {worker}")
}

/// `text`, cut to [`SHOWN_CHARS`] characters (with `…`) and with control characters
/// escaped, so a line stays one bounded line whatever the facts hold.
fn shown(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == SHOWN_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl Serialize for RunSignature {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(&self.0)
    }
}

impl<'de> Deserialize<'de> for RunSignature {
    /// Refuses more than [`MAX_SIGNATURE_ENTRIES`] facts or [`MAX_SIGNATURE_BYTES`] bytes
    /// (counted as they are read, so an oversized one is refused early) and keys that are
    /// not strictly ascending (the encoding is canonical: no duplicates).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(SignatureVisitor)
    }
}

struct SignatureVisitor;

impl<'de> Visitor<'de> for SignatureVisitor {
    type Value = RunSignature;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a run signature: at most {MAX_SIGNATURE_ENTRIES} facts and {MAX_SIGNATURE_BYTES} \
             bytes, keys ascending"
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RunSignature, A::Error> {
        let mut facts = BTreeMap::new();
        let mut bytes = 0usize;
        while let Some((key, value)) = map.next_entry::<String, String>()? {
            bytes = bytes.saturating_add(key.len() + value.len());
            if facts.len() >= MAX_SIGNATURE_ENTRIES || bytes > MAX_SIGNATURE_BYTES {
                return Err(de::Error::custom(format!(
                    "run signature over its limits ({MAX_SIGNATURE_ENTRIES} facts, \
                     {MAX_SIGNATURE_BYTES} bytes)"
                )));
            }
            if facts.last_key_value().is_some_and(|(last, _): (&String, _)| *last >= key) {
                return Err(de::Error::custom(format!(
                    "run signature keys not strictly ascending at {:?}",
                    shown(&key)
                )));
            }
            facts.insert(key, value);
        }
        Ok(RunSignature(facts))
    }
}

/// Decodes the difference lines of a refusal: at most [`MAX_LISTED_DIFFERENCES`] `+ 1`
/// lines of at most [`MAX_DIFFERENCE_LINE`] bytes each, what a coordinator sends.
pub(crate) fn bounded_lines<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    struct Lines;

    impl<'de> Visitor<'de> for Lines {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "at most {} lines of at most {MAX_DIFFERENCE_LINE} bytes",
                MAX_LISTED_DIFFERENCES + 1
            )
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut lines = Vec::new();
            while let Some(line) = seq.next_element::<String>()? {
                if lines.len() > MAX_LISTED_DIFFERENCES || line.len() > MAX_DIFFERENCE_LINE {
                    return Err(de::Error::custom("too many or too long difference lines"));
                }
                lines.push(line);
            }
            Ok(lines)
        }
    }

    deserializer.deserialize_seq(Lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(facts: &[(&str, &str)]) -> RunSignature {
        facts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn differences_name_every_missing_extra_and_different_fact() {
        let run = sig(&[
            ("algorithm", "diloco"),
            ("param.h.0.attn.weight", "f32[64, 64]"),
            ("param.lm_head.bias", "f32[256]"),
            ("setting.outer_lr", "0.7"),
        ]);
        let worker = sig(&[
            ("algorithm", "diloco"),
            ("param.extra", "f32[3]"),
            ("param.h.0.attn.weight", "f32[64, 32]"),
            ("setting.outer_lr", "0.5"),
        ]);
        assert_eq!(
            worker.differences(&run),
            vec![
                "setting outer_lr: the run has 0.7, this worker 0.5",
                "param extra: the run has none, this worker f32[3]",
                "param h.0.attn.weight: the run has f32[64, 64], this worker f32[64, 32]",
                "param lm_head.bias: the run has f32[256], this worker has none",
            ]
        );
        assert!(run.differences(&run).is_empty());
        let algo = sig(&[("algorithm", "demo")]).differences(&sig(&[("algorithm", "diloco")]));
        assert_eq!(algo, vec!["algorithm: the run has diloco, this worker demo"]);
    }

    #[test]
    fn differences_are_capped_and_counted() {
        let run: RunSignature =
            (0..50).map(|i| (format!("param.p{i:02}"), "f32[1]".into())).collect();
        let worker = RunSignature::new();
        let lines = worker.differences(&run);
        assert_eq!(lines.len(), MAX_LISTED_DIFFERENCES + 1);
        assert_eq!(lines[0], "param p00: the run has f32[1], this worker has none");
        assert_eq!(lines[MAX_LISTED_DIFFERENCES], "and 30 more (30 param)");
        // Long values are shortened and control characters escaped: one bounded line.
        let long = sig(&[("setting.x", &format!("{}\n", "a".repeat(5000)))]);
        let line = &long.differences(&sig(&[("setting.x", "1")]))[0];
        assert!(line.len() < MAX_DIFFERENCE_LINE && !line.contains('\n') && line.contains('…'));
    }

    #[test]
    fn a_few_setting_differences_are_listed_before_many_parameter_ones() {
        // Another model and another learning rate: the setting must not drown.
        let params =
            |width: u32| (0..30).map(move |i| (format!("param.p{i:02}"), format!("f32[{width}]")));
        let run: RunSignature =
            params(1).chain([("setting.outer_lr".to_string(), "0.7".to_string())]).collect();
        let worker: RunSignature =
            params(2).chain([("setting.outer_lr".to_string(), "0.5".to_string())]).collect();
        let lines = worker.differences(&run);
        assert_eq!(lines[0], "setting outer_lr: the run has 0.7, this worker 0.5");
        assert_eq!(lines[1], "param p00: the run has f32[1], this worker f32[2]");
        assert_eq!(lines.len(), MAX_LISTED_DIFFERENCES + 1);
        assert_eq!(lines[MAX_LISTED_DIFFERENCES], "and 11 more (11 param)");
    }

    #[test]
    fn round_trips_and_refuses_oversized_or_unordered_encodings() {
        let s = sig(&[("algorithm", "diloco"), ("setting.outer_lr", "0.7")]);
        let bytes = postcard::to_allocvec(&s).unwrap();
        assert_eq!(postcard::from_bytes::<RunSignature>(&bytes).unwrap(), s);

        // Too many bytes: one value past the cap, encoded as a plain map.
        let big: BTreeMap<String, String> =
            [("k".to_string(), "v".repeat(MAX_SIGNATURE_BYTES))].into();
        let bytes = postcard::to_allocvec(&big).unwrap();
        let err = postcard::from_bytes::<RunSignature>(&bytes).unwrap_err();
        assert!(matches!(err, postcard::Error::SerdeDeCustom), "{err:?}");
        // Too many facts.
        let many: BTreeMap<String, String> =
            (0..=MAX_SIGNATURE_ENTRIES).map(|i| (format!("{i:06}"), String::new())).collect();
        let bytes = postcard::to_allocvec(&many).unwrap();
        assert!(postcard::from_bytes::<RunSignature>(&bytes).is_err());
        // Keys out of order or repeated (a hand-made encoding).
        let pairs = vec![("b", "1"), ("a", "2")];
        let bytes = postcard::to_allocvec(&PairsAsMap(&pairs)).unwrap();
        assert!(postcard::from_bytes::<RunSignature>(&bytes).is_err());
        let pairs = vec![("a", "1"), ("a", "2")];
        let bytes = postcard::to_allocvec(&PairsAsMap(&pairs)).unwrap();
        assert!(postcard::from_bytes::<RunSignature>(&bytes).is_err());
    }

    struct PairsAsMap<'a>(&'a [(&'a str, &'a str)]);

    impl Serialize for PairsAsMap<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_map(self.0.iter().copied())
        }
    }

    #[test]
    fn facts_past_the_limits_fold_into_one_digest_fact() {
        let facts = |n: usize, changed: Option<usize>| -> BTreeMap<String, String> {
            (0..n)
                .map(|i| {
                    let value = if Some(i) == changed { "f32[2]" } else { "f32[1]" };
                    (format!("param.{i:06}.{}", "w".repeat(40)), value.to_string())
                })
                .collect()
        };
        let n = 30_000; // about 1.6 MiB of facts
        let a = RunSignature::from_facts(facts(n, None));
        assert!(a.within_limits(), "{} facts, {} bytes", a.len(), a.byte_len());
        assert!(a.facts()[OVERFLOW_KEY].contains("more facts, digest"));
        assert!(postcard::from_bytes::<RunSignature>(&postcard::to_allocvec(&a).unwrap()).is_ok());
        // A change among the folded facts is still a difference.
        let b = RunSignature::from_facts(facts(n, Some(n - 1)));
        let lines = b.differences(&a);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("overflow: the run has "), "{lines:?}");
        // Within the limits nothing is folded.
        let small = RunSignature::from_facts(facts(10, None));
        assert_eq!(small.len(), 10);
        assert!(!small.facts().contains_key(OVERFLOW_KEY));
    }

    #[test]
    fn refusal_lines_are_bounded_when_decoded() {
        #[derive(Debug, Deserialize)]
        struct Lines(#[serde(deserialize_with = "bounded_lines")] Vec<String>);
        let ok = vec!["x".to_string(); MAX_LISTED_DIFFERENCES + 1];
        let bytes = postcard::to_allocvec(&ok).unwrap();
        assert_eq!(postcard::from_bytes::<Lines>(&bytes).unwrap().0, ok);
        let too_many = vec!["x".to_string(); MAX_LISTED_DIFFERENCES + 2];
        assert!(postcard::from_bytes::<Lines>(&postcard::to_allocvec(&too_many).unwrap()).is_err());
        let too_long = vec!["x".repeat(MAX_DIFFERENCE_LINE + 1)];
        assert!(postcard::from_bytes::<Lines>(&postcard::to_allocvec(&too_long).unwrap()).is_err());
    }
}
