//! Token data: a corpus loaded once, a held-out validation split, and one deterministic,
//! disjoint, seeded shard per worker.
//!
//! The corpus is cut into equal blocks (about 200 of them, at most 64 Ki tokens each);
//! every 20th block is held out for validation, so the validation text is spread over the
//! whole corpus rather than being its last chapter. The training blocks are shuffled with
//! the run's seed and dealt to the workers in turn, so shards are disjoint and the same
//! seed gives the same shards. A worker samples training windows uniformly from its own
//! blocks with its own generator; the generator's state and the number of batches drawn
//! are all a checkpoint needs to resume the stream exactly.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use meridian_kernels::rng::SplitMix64;
use tch::Tensor;

/// How a data file stores its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFormat {
    /// Any file read as bytes: byte-level tokens, vocabulary 256.
    Text,
    /// Little-endian u16 token ids.
    U16,
    /// Little-endian u32 token ids.
    U32,
}

impl std::str::FromStr for TokenFormat {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "text" => Ok(Self::Text),
            "u16" => Ok(Self::U16),
            "u32" => Ok(Self::U32),
            _ => bail!("unknown data format {s:?}; choose text, u16 or u32"),
        }
    }
}

impl TokenFormat {
    /// The format a file's extension suggests: `.u16`, `.u32`, anything else text.
    pub fn from_extension(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("u16") => Self::U16,
            Some("u32") => Self::U32,
            _ => Self::Text,
        }
    }
}

/// A whole token stream in memory, shared by every worker.
#[derive(Debug)]
pub struct Corpus {
    tokens: Vec<u32>,
    vocab: u32,
    source: String,
}

/// Every `VAL_EVERY`-th block is held out.
const VAL_EVERY: usize = 20;
/// Target number of blocks, before the size bounds.
const TARGET_BLOCKS: usize = 200;
/// Largest block, in tokens.
const MAX_BLOCK: usize = 1 << 16;

impl Corpus {
    /// Reads `path` in `format`. Binary formats need `vocab` (every id must be below it);
    /// text is byte-level with vocabulary 256 and ignores `vocab`.
    pub fn load(path: &Path, format: TokenFormat, vocab: Option<u32>) -> Result<Self> {
        check_fits(path, format)?;
        let bytes =
            std::fs::read(path).with_context(|| format!("data: cannot read {}", path.display()))?;
        Self::from_bytes(&bytes, format, vocab, &path.display().to_string())
    }

    /// Decodes `bytes` (named `source` in errors) in `format`.
    pub fn from_bytes(
        bytes: &[u8],
        format: TokenFormat,
        vocab: Option<u32>,
        source: &str,
    ) -> Result<Self> {
        if bytes.is_empty() {
            bail!("data: {source} is empty");
        }
        let (tokens, vocab): (Vec<u32>, u32) = match format {
            TokenFormat::Text => (bytes.iter().map(|&b| u32::from(b)).collect(), 256),
            TokenFormat::U16 | TokenFormat::U32 => {
                let width = if format == TokenFormat::U16 { 2 } else { 4 };
                let Some(vocab) = vocab else {
                    bail!("data: {source} holds token ids; say how many with --vocab");
                };
                if bytes.len() % width != 0 {
                    bail!(
                        "data: {source} has {} bytes, not a whole number of {width}-byte tokens",
                        bytes.len()
                    );
                }
                let tokens: Vec<u32> = if width == 2 {
                    bytes
                        .chunks_exact(2)
                        .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
                        .collect()
                } else {
                    bytes
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                };
                (tokens, vocab)
            }
        };
        if vocab < 2 {
            bail!("data: --vocab {vocab} is too small; a language model needs at least 2 tokens");
        }
        if let Some((at, &t)) = tokens.iter().enumerate().find(|(_, &t)| t >= vocab) {
            bail!("data: {source}: token {at} is {t}, not below the vocabulary size {vocab}");
        }
        Ok(Self { tokens, vocab, source: source.to_string() })
    }

    /// Vocabulary size.
    pub fn vocab(&self) -> u32 {
        self.vocab
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether it holds no tokens (never true for a loaded corpus).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Where it came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A 64-bit fingerprint of the tokens (checkpoints record it).
    pub fn fingerprint(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(bytemuck::cast_slice(&self.tokens))
    }
}

/// Refuses, before reading it, a file whose tokens cannot be held in this machine's
/// memory: loading holds the file's bytes and then 4 bytes per token, and an allocation
/// that fails aborts the process rather than returning an error.
fn check_fits(path: &Path, format: TokenFormat) -> Result<()> {
    let (Ok(metadata), Some(memory)) =
        (std::fs::metadata(path), crate::model::size::memory_bytes())
    else {
        // Unreadable files get their error from the read itself.
        return Ok(());
    };
    let bytes = u128::from(metadata.len());
    let width = match format {
        TokenFormat::Text => 1,
        TokenFormat::U16 => 2,
        TokenFormat::U32 => 4,
    };
    let needed = bytes + bytes / width * 4;
    if needed > u128::from(memory) {
        let gib = |b: u128| b as f64 / f64::from(1u32 << 30);
        bail!(
            "data: {} holds {:.1} GiB; loading it takes {:.1} GiB (the file, then 4 bytes per \
             token), more than this machine's {:.1} GiB of memory; give --data a smaller file",
            path.display(),
            gib(bytes),
            gib(needed),
            gib(u128::from(memory))
        );
    }
    Ok(())
}

/// The corpus cut into training and validation blocks for windows of `context` tokens.
#[derive(Debug, Clone)]
pub struct Split {
    corpus: Arc<Corpus>,
    context: usize,
    train: Vec<Range<usize>>,
    val: Vec<Range<usize>>,
}

impl Split {
    /// Cuts `corpus` for windows of `context` tokens (each window reads `context + 1`).
    pub fn new(corpus: Arc<Corpus>, context: usize) -> Result<Self> {
        if context == 0 {
            bail!("data: the context must be at least 1 token");
        }
        let window = context + 1;
        let block = (corpus.len() / TARGET_BLOCKS).clamp(2 * window, MAX_BLOCK.max(2 * window));
        let blocks = corpus.len() / block;
        if blocks < 2 {
            bail!(
                "data: {} has {} tokens; windows of {window} need at least {} (two blocks of \
                 {block}: one to train on, one to validate on)",
                corpus.source(),
                corpus.len(),
                2 * block
            );
        }
        let mut train = Vec::new();
        let mut val = Vec::new();
        for b in 0..blocks {
            // The last block takes the tail, so no token is dropped.
            let end = if b + 1 == blocks { corpus.len() } else { (b + 1) * block };
            // Offset by half a period so a two-block corpus still holds one out.
            if b % VAL_EVERY == VAL_EVERY / 2 || (blocks <= VAL_EVERY / 2 && b + 1 == blocks) {
                val.push(b * block..end);
            } else {
                train.push(b * block..end);
            }
        }
        Ok(Self { corpus, context, train, val })
    }

    /// Tokens per window (the model's context).
    pub fn context(&self) -> usize {
        self.context
    }

    /// Tokens available for training and for validation.
    pub fn sizes(&self) -> (usize, usize) {
        let total = |v: &[Range<usize>]| v.iter().map(|r| r.len()).sum();
        (total(&self.train), total(&self.val))
    }

    /// Worker `worker`'s shard of `workers`: the training blocks shuffled by `seed` and
    /// dealt in turn. Every worker gets at least one block or this is an error.
    pub fn shard(&self, worker: u32, workers: u32, seed: u64, batch: usize) -> Result<Shard> {
        if workers == 0 || worker >= workers {
            bail!("data: worker {worker} of {workers}");
        }
        if batch == 0 {
            bail!("data: the batch must hold at least one window");
        }
        if self.train.len() < workers as usize {
            bail!(
                "data: {} yields {} training blocks, fewer than the {workers} workers; use \
                 more data or fewer workers",
                self.corpus.source(),
                self.train.len()
            );
        }
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        let mut rng = SplitMix64::new(seed ^ 0x5348_4152_4453_0000);
        for j in (1..order.len()).rev() {
            order.swap(j, (rng.next_u64() % (j as u64 + 1)) as usize);
        }
        let blocks: Vec<Range<usize>> = order
            .iter()
            .skip(worker as usize)
            .step_by(workers as usize)
            .map(|&b| self.train[b].clone())
            .collect();
        let stream_seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(worker + 1);
        Ok(Shard::new(self.corpus.clone(), blocks, self.context, batch, stream_seed))
    }

    /// The fixed validation batches: `count` batches of `batch` windows, evenly spaced
    /// over the held-out blocks, identical for every worker and every run.
    pub fn validation(&self, batch: usize, count: usize) -> Vec<(Tensor, Tensor)> {
        let starts = Starts::new(&self.val, self.context);
        let n = (batch * count).max(1) as u64;
        let positions: Vec<usize> =
            (0..n).map(|i| starts.position((i * starts.total) / n)).collect();
        positions
            .chunks(batch.max(1))
            .map(|chunk| windows(&self.corpus.tokens, chunk, self.context))
            .collect()
    }
}

/// The window starts of a set of blocks, numbered consecutively.
#[derive(Debug, Clone)]
struct Starts {
    blocks: Vec<Range<usize>>,
    /// Cumulative counts of starts before each block.
    before: Vec<u64>,
    total: u64,
}

impl Starts {
    fn new(blocks: &[Range<usize>], context: usize) -> Self {
        let mut before = Vec::with_capacity(blocks.len());
        let mut total = 0u64;
        for b in blocks {
            before.push(total);
            // Blocks are at least two windows long (Split::new), so this is positive.
            total += (b.len() - context) as u64;
        }
        Self { blocks: blocks.to_vec(), before, total }
    }

    /// The token offset of start number `i` (< total).
    fn position(&self, i: u64) -> usize {
        let b = self.before.partition_point(|&c| c <= i) - 1;
        self.blocks[b].start + (i - self.before[b]) as usize
    }
}

/// `[batch, context]` inputs and next-token targets for windows starting at `starts`.
fn windows(tokens: &[u32], starts: &[usize], context: usize) -> (Tensor, Tensor) {
    let mut x = Vec::with_capacity(starts.len() * context);
    let mut y = Vec::with_capacity(starts.len() * context);
    for &s in starts {
        x.extend(tokens[s..s + context].iter().map(|&t| i64::from(t)));
        y.extend(tokens[s + 1..s + context + 1].iter().map(|&t| i64::from(t)));
    }
    let shape = [starts.len() as i64, context as i64];
    (Tensor::from_slice(&x).reshape(shape), Tensor::from_slice(&y).reshape(shape))
}

/// Where a shard's stream stands: enough to resume it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardState {
    /// Batches drawn so far.
    pub batches: u64,
    /// The window generator's state.
    pub rng: u64,
}

/// One worker's training data: its blocks and its window stream.
#[derive(Debug)]
pub struct Shard {
    corpus: Arc<Corpus>,
    starts: Starts,
    context: usize,
    batch: usize,
    rng: SplitMix64,
    batches: u64,
}

impl Shard {
    fn new(
        corpus: Arc<Corpus>,
        blocks: Vec<Range<usize>>,
        context: usize,
        batch: usize,
        seed: u64,
    ) -> Self {
        let starts = Starts::new(&blocks, context);
        Self { corpus, starts, context, batch, rng: SplitMix64::new(seed), batches: 0 }
    }

    /// The next batch: `batch` windows drawn uniformly from the shard's blocks.
    pub fn next_batch(&mut self) -> (Tensor, Tensor) {
        let starts: Vec<usize> = (0..self.batch)
            .map(|_| self.starts.position(self.rng.next_u64() % self.starts.total))
            .collect();
        self.batches += 1;
        windows(&self.corpus.tokens, &starts, self.context)
    }

    /// Tokens in this shard's blocks.
    pub fn tokens(&self) -> usize {
        self.starts.blocks.iter().map(|r| r.len()).sum()
    }

    /// The stream's position, for a checkpoint.
    pub fn state(&self) -> ShardState {
        ShardState { batches: self.batches, rng: self.rng.state() }
    }

    /// Resumes the stream at `state`.
    pub fn restore(&mut self, state: ShardState) {
        self.batches = state.batches;
        self.rng = SplitMix64::new(state.rng);
    }

    /// The token offsets this shard may read (tests check disjointness with it).
    pub fn blocks(&self) -> &[Range<usize>] {
        &self.starts.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Arc<Corpus> {
        let bytes: Vec<u8> = (0..n).map(|i| b"abcdefghij klmnop."[i % 18]).collect();
        Arc::new(Corpus::from_bytes(&bytes, TokenFormat::Text, None, "test").unwrap())
    }

    #[test]
    fn shards_are_disjoint_cover_the_training_blocks_and_avoid_validation() {
        let split = Split::new(text(200_000), 32).unwrap();
        let shards: Vec<Shard> = (0..4).map(|w| split.shard(w, 4, 9, 2).unwrap()).collect();
        let mut seen: Vec<Range<usize>> = shards.iter().flat_map(|s| s.blocks().to_vec()).collect();
        seen.sort_by_key(|r| r.start);
        let mut train = split.train.clone();
        train.sort_by_key(|r| r.start);
        assert_eq!(seen, train, "each training block in exactly one shard");
        for v in &split.val {
            assert!(seen.iter().all(|r| r.end <= v.start || r.start >= v.end));
        }
        let (t, v) = split.sizes();
        assert_eq!(t + v, 200_000);
        assert!(v > 0 && v < t / 10, "about 5% held out: {v} of {}", t + v);
    }

    #[test]
    fn same_seed_same_stream_and_state_resumes_it() {
        let split = Split::new(text(100_000), 16).unwrap();
        let mut a = split.shard(1, 3, 5, 4).unwrap();
        let mut b = split.shard(1, 3, 5, 4).unwrap();
        let mut other = split.shard(1, 3, 6, 4).unwrap();
        let (xa, _) = a.next_batch();
        assert!(xa.equal(&b.next_batch().0));
        assert!(!xa.equal(&other.next_batch().0), "another seed, another shard or stream");
        let saved = a.state();
        let next: Vec<Tensor> = (0..3).map(|_| a.next_batch().0).collect();
        let mut resumed = split.shard(1, 3, 5, 4).unwrap();
        resumed.restore(saved);
        for t in &next {
            assert!(t.equal(&resumed.next_batch().0));
        }
        assert_eq!(resumed.state(), a.state());
    }

    #[test]
    fn windows_stay_inside_the_shard_and_targets_are_shifted() {
        let bytes: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
        let corpus = Arc::new(Corpus::from_bytes(&bytes, TokenFormat::Text, None, "t").unwrap());
        let split = Split::new(corpus, 8).unwrap();
        let mut s = split.shard(0, 2, 1, 64).unwrap();
        for _ in 0..20 {
            let (x, y) = s.next_batch();
            assert_eq!(x.size(), vec![64, 8]);
            let x: Vec<i64> = Vec::try_from(x.flatten(0, -1)).unwrap();
            let y: Vec<i64> = Vec::try_from(y.flatten(0, -1)).unwrap();
            for (a, b) in x.iter().zip(&y) {
                assert_eq!((a + 1) % 251, *b);
            }
        }
        let val = split.validation(4, 3);
        assert_eq!(val.len(), 3);
        assert!(val.iter().all(|(x, _)| x.size() == vec![4, 8]));
    }

    #[test]
    fn binary_tokens_and_bad_input() {
        let ids: Vec<u8> = [1u16, 7, 300].iter().flat_map(|t| t.to_le_bytes()).collect();
        let c = Corpus::from_bytes(&ids, TokenFormat::U16, Some(512), "ids").unwrap();
        assert_eq!((c.len(), c.vocab()), (3, 512));
        let e = Corpus::from_bytes(&ids, TokenFormat::U16, Some(256), "ids").unwrap_err();
        assert!(e.to_string().contains("token 2 is 300"), "{e}");
        let e = Corpus::from_bytes(&ids, TokenFormat::U16, None, "ids").unwrap_err();
        assert!(e.to_string().contains("--vocab"), "{e}");
        let e = Corpus::from_bytes(&ids[..5], TokenFormat::U16, Some(512), "ids").unwrap_err();
        assert!(e.to_string().contains("whole number"), "{e}");
        let e = Corpus::from_bytes(&[], TokenFormat::Text, None, "empty.txt").unwrap_err();
        assert!(e.to_string().contains("empty.txt is empty"), "{e}");
        let e = Split::new(text(50), 32).unwrap_err();
        assert!(e.to_string().contains("at least"), "{e}");
        let split = Split::new(text(5_000), 8).unwrap();
        assert!(split.shard(0, 10_000, 0, 1).is_err());
        let e = Corpus::load(Path::new("/nonexistent/corpus.txt"), TokenFormat::Text, None);
        assert!(e.unwrap_err().to_string().contains("cannot read /nonexistent/corpus.txt"));
    }
}
