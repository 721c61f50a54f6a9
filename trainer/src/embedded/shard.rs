//! A site's outer state split across its ranks: each rank runs the outer algorithm on a
//! contiguous run of the model's tensors (canonical order) and holds the outer state of
//! those alone, so a site of R ranks keeps one copy of it, not R.
//!
//! The run sees one worker with one payload and one state, as if the site were a single
//! process: the leader merges its ranks' payloads (and states) into the whole model's
//! before they leave, and every rank takes its own part of what arrives. This works for
//! the algorithms whose update of a tensor depends on that tensor's values alone (DiLoCo,
//! SparseLoCo, DeMo and Streaming DiLoCo, under the mean aggregation): the part a rank
//! computes is bit for bit the part a single process would. (Streaming DiLoCo's fragments
//! follow the whole model's canonical order, which each rank's part keeps.)

use std::collections::BTreeMap;
use std::ops::Range;

use anyhow::{bail, ensure, Context, Result};
use meridian_optimizer::config::AlgoConfig;
use meridian_optimizer::outer::OptimizerState;
use meridian_optimizer::payload::Payload;

/// Which rank of a site holds which tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardLayout {
    /// The whole model's tensor shapes, canonical order.
    shapes: Vec<Vec<usize>>,
    /// Rank `r` holds tensors `bounds[r]..bounds[r + 1]`.
    bounds: Vec<usize>,
    /// This process's rank in the site.
    rank: usize,
    /// Whether every payload carries every tensor (all but Streaming DiLoCo, whose
    /// payloads carry a fragment).
    whole_payloads: bool,
}

/// Splits `numels` (tensor sizes, canonical order) into `ranks` contiguous runs of nearly
/// equal element counts, each of at least one tensor; `None` when there are fewer tensors
/// than ranks. Rank `r`'s run is `bounds[r]..bounds[r + 1]`.
pub fn balanced_bounds(numels: &[usize], ranks: usize) -> Option<Vec<usize>> {
    if ranks == 0 || numels.len() < ranks {
        return None;
    }
    let total: u128 = numels.iter().map(|&n| n as u128).sum();
    let mut bounds = vec![0];
    let (mut at, mut sum) = (0usize, 0u128);
    for r in 1..ranks {
        // Enough tensors left for the ranks after this one.
        let last = numels.len() - (ranks - r);
        let target = total * r as u128 / ranks as u128;
        // At least one tensor for rank r - 1; then up to the target share.
        sum += numels[at] as u128;
        at += 1;
        while at < last && sum + (numels[at] as u128) / 2 < target {
            sum += numels[at] as u128;
            at += 1;
        }
        bounds.push(at);
    }
    bounds.push(numels.len());
    Some(bounds)
}

/// A per-tensor entry of a state: `param.N` or `outer/KEY.N` (the tensor's index `N`).
fn per_tensor_key(key: &str) -> Option<(&str, usize)> {
    let (prefix, index) = key.rsplit_once('.')?;
    if !(prefix == "param" || prefix.starts_with("outer/")) {
        return None;
    }
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((prefix, index.parse().ok()?))
}

impl ShardLayout {
    /// The layout of a site whose rank `rank` holds `bounds[rank]..bounds[rank + 1]` of a
    /// model of `shapes`.
    pub fn new(shapes: Vec<Vec<usize>>, bounds: Vec<usize>, rank: usize) -> Result<Self> {
        ensure!(bounds.len() >= 2, "a site of no ranks");
        ensure!(rank + 1 < bounds.len(), "rank {rank} of a site of {} ranks", bounds.len() - 1);
        ensure!(bounds[0] == 0, "the first rank's tensors start at {}, not 0", bounds[0]);
        ensure!(
            bounds[bounds.len() - 1] == shapes.len(),
            "the ranks hold {} tensors of a model of {}",
            bounds[bounds.len() - 1],
            shapes.len()
        );
        ensure!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "every rank must hold a tensor: {bounds:?}"
        );
        Ok(Self { shapes, bounds, rank, whole_payloads: true })
    }

    /// For an algorithm whose payloads carry some of the tensors only (Streaming DiLoCo's
    /// fragments): the ranks then take what a payload holds of their part, and a payload
    /// damaged in one part only is caught by [`crate::embedded::site::SiteLink::agree`].
    pub fn with_partial_payloads(mut self) -> Self {
        self.whole_payloads = false;
        self
    }

    /// The tensors this rank holds.
    pub fn range(&self) -> Range<usize> {
        self.bounds[self.rank]..self.bounds[self.rank + 1]
    }

    /// The whole model's tensor shapes, canonical order.
    pub fn shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }

    /// The number of ranks.
    pub fn ranks(&self) -> usize {
        self.bounds.len() - 1
    }

    /// The tensors rank `r` holds.
    fn range_of(&self, r: usize) -> Range<usize> {
        self.bounds[r]..self.bounds[r + 1]
    }

    /// The site's payload: the ranks' payloads (rank order, each over its own tensors)
    /// merged into one over the whole model.
    pub fn merge_payloads(&self, parts: &[Vec<u8>]) -> Result<Vec<u8>> {
        ensure!(
            parts.len() == self.ranks(),
            "{} payloads from {} ranks",
            parts.len(),
            self.ranks()
        );
        let mut merged: Option<Payload> = None;
        for (r, bytes) in parts.iter().enumerate() {
            let range = self.range_of(r);
            let part = Payload::decode(bytes, &self.shapes[range.clone()])
                .with_context(|| format!("rank {r}'s payload"))?;
            let merged =
                merged.get_or_insert_with(|| Payload { segments: Vec::new(), ..part.clone() });
            ensure!(
                (part.algorithm, part.round, part.worker)
                    == (merged.algorithm, merged.round, merged.worker),
                "rank {r}'s payload is {} round {} of member {}, rank 0's {} round {} of {}",
                part.algorithm,
                part.round,
                part.worker,
                merged.algorithm,
                merged.round,
                merged.worker
            );
            for mut s in part.segments {
                s.tensor += range.start as u32;
                merged.segments.push(s);
            }
        }
        Ok(merged.context("no payloads")?.encode())
    }

    /// This rank's part of a member's payload over the whole model. A payload that does
    /// not decode, or does not carry every tensor, becomes an empty one, which every rank
    /// rejects: a single process would reject it whole, and so does the site.
    pub fn localize_payload(&self, bytes: &[u8]) -> Vec<u8> {
        let Ok(mut p) = Payload::decode(bytes, &self.shapes) else { return Vec::new() };
        if self.whole_payloads && p.segments.len() != self.shapes.len() {
            return Vec::new();
        }
        let range = self.range();
        p.segments.retain(|s| range.contains(&(s.tensor as usize)));
        for s in &mut p.segments {
            s.tensor -= range.start as u32;
        }
        p.encode()
    }

    /// The site's state: the ranks' states (rank order) merged into the whole model's.
    /// Per-tensor entries (`param.N`, `outer/KEY.N`) come from the rank holding tensor N;
    /// everything else (counters, the program's optimizer, replicated on every rank) from
    /// rank 0.
    pub fn merge_states(&self, parts: &[Vec<u8>]) -> Result<Vec<u8>> {
        ensure!(parts.len() == self.ranks(), "{} states from {} ranks", parts.len(), self.ranks());
        let mut merged: Option<OptimizerState> = None;
        for (r, bytes) in parts.iter().enumerate() {
            let part =
                OptimizerState::from_bytes(bytes).with_context(|| format!("rank {r}'s state"))?;
            let range = self.range_of(r);
            let merged = merged.get_or_insert_with(|| OptimizerState::new(part.algorithm));
            ensure!(
                part.algorithm == merged.algorithm,
                "rank {r}'s state is {}'s, rank 0's {}'s",
                part.algorithm,
                merged.algorithm
            );
            for (key, t) in part.tensors {
                match per_tensor_key(&key) {
                    Some((prefix, i)) => {
                        ensure!(i < range.len(), "rank {r}'s state has {key}, beyond its tensors");
                        merged.tensors.insert(format!("{prefix}.{}", range.start + i), t);
                    }
                    None if r == 0 => {
                        merged.tensors.insert(key, t);
                    }
                    None => {}
                }
            }
        }
        Ok(merged.context("no states")?.to_bytes()?)
    }

    /// This rank's part of a state over the whole model (a peer's, for catching up).
    pub fn localize_state(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        let whole = OptimizerState::from_bytes(bytes)?;
        let range = self.range();
        let mut tensors = BTreeMap::new();
        for (key, t) in whole.tensors {
            match per_tensor_key(&key) {
                Some((prefix, i)) if range.contains(&i) => {
                    tensors.insert(format!("{prefix}.{}", i - range.start), t);
                }
                Some(_) => {}
                None => {
                    tensors.insert(key, t);
                }
            }
        }
        Ok(OptimizerState { algorithm: whole.algorithm, tensors }.to_bytes()?)
    }
}

/// Refuses what a sharded site cannot run, with the reason, before it joins: a site
/// training a model of `tensors` tensors with `algo`.
pub fn check_shardable(algo: &AlgoConfig, tensors: usize) -> Result<()> {
    let robust = match algo {
        AlgoConfig::Diloco(c) => &c.robust,
        AlgoConfig::Sparseloco(c) => &c.robust,
        AlgoConfig::Demo(c) => &c.robust,
        AlgoConfig::Streaming(c) => {
            // What Streaming DiLoCo checks of the whole model; each rank's part may lack
            // a fragment.
            ensure!(
                c.fragments <= tensors as u64,
                "streaming: {} fragments for a model of {tensors} tensors would leave one empty",
                c.fragments
            );
            &c.robust
        }
        AlgoConfig::Ddp(_) => bail!("ddp keeps no outer state for a site's ranks to split"),
        other => bail!("{} is not known to split across a site's ranks", other.algorithm()),
    };
    if !robust.is_mean() {
        bail!(
            "aggregation {} judges each member's whole update, which no rank of a sharded \
             site holds (use aggregation=mean)",
            robust.aggregation
        );
    }
    Ok(())
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;
