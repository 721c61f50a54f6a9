//! Checkpoints of an in-process run: everything needed to continue it bit for bit.
//!
//! A checkpoint is a directory:
//! - `manifest.json`: format and version, progress (inner step, round), what the run is
//!   (model, parameter names and shapes, algorithm settings, inner-optimizer settings,
//!   schedule length, batch, seed, workers, the data's fingerprint), each worker's data
//!   position and AdamW step count, a hash of every other file, and a digest of all of
//!   the above, so that no statement of the manifest can be edited unnoticed;
//! - `worker-{i}.safetensors`: worker i's parameters (`param/NAME`) and AdamW moments
//!   (`adam_m/NAME`, `adam_v/NAME`);
//! - `worker-{i}.outer.safetensors`: worker i's outer-optimizer state (global snapshot,
//!   outer momentum, error-feedback buffers, in-flight fragments: whatever the algorithm
//!   keeps, see `OuterOptimizer::state`).
//!
//! It is written to a sibling temporary directory and renamed into place, so a crash while
//! saving leaves the previous checkpoint intact. Loading checks the manifest against the
//! run being resumed and names the first thing that differs, checks every file's hash,
//! shape and finiteness, and only then replaces any state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use meridian_optimizer::harness::{Harness, HarnessFlight};
use meridian_optimizer::outer::{OptimizerState, Phase};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::data::ShardState;
use crate::step::lm_step::LmStep;

const FORMAT: &str = "meridian-checkpoint";
/// 2: the manifest carries `digest`, covering every field (progress included). Version 1
/// covered only the identity and the files, so its step, round and data positions could be
/// edited unnoticed; version-1 checkpoints are refused with a note on what to do.
const VERSION: u32 = 2;
/// The manifest's file name inside a checkpoint folder.
pub const MANIFEST: &str = "manifest.json";

/// What a run is: a checkpoint resumes only a run with the same identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunIdentity {
    /// The model's one-line description (kind and shape).
    pub model: String,
    /// Parameter names and shapes, in canonical order.
    pub params: Vec<(String, Vec<i64>)>,
    /// The outer algorithm's settings, as TOML.
    pub algorithm: String,
    /// The inner optimizer's settings, as TOML.
    pub inner: String,
    /// Length of the learning-rate schedule, in inner steps.
    pub schedule_steps: u64,
    /// Windows per batch.
    pub batch: u64,
    /// Seed of the parameters and the shards.
    pub seed: u64,
    /// Workers.
    pub workers: u32,
    /// Fingerprint (xxh3) of the training tokens.
    pub data: u64,
}

impl RunIdentity {
    /// xxh3 of the identity's JSON form, as 16 hex digits.
    pub fn hash(&self) -> Result<String> {
        Ok(format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&serde_json::to_vec(self)?)))
    }
}

/// The manifest file.
#[derive(Debug, Clone, Serialize, Deserialize)]
// A field the format does not have is an edit too, and is refused rather than ignored.
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `meridian-checkpoint`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// Inner steps done.
    pub step: u64,
    /// Exchanges done.
    pub round: u64,
    /// The run it belongs to.
    pub identity: RunIdentity,
    /// xxh3 of `identity` serialized, for telling runs apart at a glance (the comparison
    /// on resume uses `identity` itself, to name what differs).
    pub config_hash: String,
    /// Each worker's data position.
    pub shards: Vec<ShardState>,
    /// Each worker's AdamW step count.
    pub adam_steps: Vec<u64>,
    /// Each worker's learning-rate schedule position.
    pub schedule_positions: Vec<u64>,
    /// xxh3 of every other file, by name.
    pub files: BTreeMap<String, String>,
    /// xxh3 of this manifest's JSON (compact, fields in declaration order) with `digest`
    /// empty: covers every field above, so an edited step, round, data position, identity or
    /// file hash is refused (see [`Manifest::seal`]). Like the file hashes it detects edits
    /// and corruption, not a forger who recomputes it.
    pub digest: String,
}

impl Manifest {
    /// The digest of everything the manifest states but its `digest`, as 16 hex digits.
    pub fn compute_digest(&self) -> Result<String> {
        let bare = Manifest { digest: String::new(), ..self.clone() };
        Ok(format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&serde_json::to_vec(&bare)?)))
    }

    /// Sets `digest` to cover the manifest as it now stands: the last step before writing
    /// it, after every other field is final.
    pub fn seal(&mut self) -> Result<()> {
        self.digest = self.compute_digest()?;
        Ok(())
    }
}

/// The first fields of a manifest, read on their own so that a manifest of another format
/// or version is named as such rather than as malformed.
#[derive(Deserialize)]
struct Header {
    format: Option<String>,
    version: Option<u32>,
}

fn worker_file(i: usize) -> String {
    format!("worker-{i}.safetensors")
}

fn outer_file(i: usize) -> String {
    format!("worker-{i}.outer.safetensors")
}

fn file_hash(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)))
}

/// Saves the harness's complete state at its current step into `dir`, with `extras`
/// (name, bytes) beside it, replacing any checkpoint there only once the new one is
/// complete.
pub fn save(
    dir: &Path,
    harness: &Harness<LmStep>,
    identity: &RunIdentity,
    extras: &[(&str, Vec<u8>)],
) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("checkpoint");
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut files = BTreeMap::new();
    let mut shards = Vec::new();
    let mut adam_steps = Vec::new();
    let mut schedule_positions = Vec::new();
    for (i, w) in harness.workers().iter().enumerate() {
        let names = w.params.names();
        let (m, v, steps) = w.train.adam().state();
        let mut named: Vec<(String, Tensor)> = Vec::with_capacity(names.len() * 3);
        for (j, (pname, t)) in w.train.model().parameters().into_iter().enumerate() {
            named.push((format!("param/{pname}"), t.detach()));
            named.push((format!("adam_m/{}", names[j]), m[j].shallow_clone()));
            named.push((format!("adam_v/{}", names[j]), v[j].shallow_clone()));
        }
        let path = tmp.join(worker_file(i));
        Tensor::write_safetensors(&named, &path)
            .with_context(|| format!("writing {}", path.display()))?;
        files.insert(worker_file(i), file_hash(&path)?);
        let outer_path = tmp.join(outer_file(i));
        w.outer.state()?.save(&outer_path)?;
        files.insert(outer_file(i), file_hash(&outer_path)?);
        shards.push(w.train.shard().state());
        adam_steps.push(steps);
        schedule_positions.push(w.train.schedule_step());
    }
    if let Some(flight) = harness.in_flight() {
        let path = tmp.join(IN_FLIGHT);
        in_flight_state(harness, flight).save(&path)?;
        files.insert(IN_FLIGHT.to_string(), file_hash(&path)?);
    }
    for (name, bytes) in extras {
        let path = tmp.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        files.insert((*name).to_string(), file_hash(&path)?);
    }
    let mut manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        step: harness.steps_done(),
        round: harness.rounds_done(),
        identity: identity.clone(),
        config_hash: identity.hash()?,
        shards,
        adam_steps,
        schedule_positions,
        files,
        digest: String::new(),
    };
    manifest.seal()?;
    let manifest_path = tmp.join(MANIFEST);
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    // Swap in the new checkpoint: the old one is removed only after the rename.
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).with_context(|| format!("moving {} aside", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("renaming into {}", dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// Reads and checks the manifest in `dir` (see [`parse_manifest`]).
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let bytes = std::fs::read(&path)
        .with_context(|| format!("checkpoint: cannot read {}", path.display()))?;
    parse_manifest(&bytes).with_context(|| format!("checkpoint: {} is refused", path.display()))
}

/// Parses the bytes of a `manifest.json` and checks what can be checked without the run
/// or the other files: the format and version, that the digest covers every field as it
/// stands (nothing was edited), that the identity's hash is the one recorded, that there
/// is one shard position, AdamW step count and schedule position per
/// worker of the identity, and that every file it lists is a plain name inside the
/// checkpoint directory (a manifest is input: it must not make [`load`] read elsewhere).
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest> {
    // Format and version first: another version's fields need not parse as this one's.
    if let Ok(header) = serde_json::from_slice::<Header>(bytes) {
        if let Some(format) = header.format.filter(|f| f != FORMAT) {
            bail!("it is a {format:?}, not a {FORMAT}");
        }
        match header.version {
            Some(1) => bail!(
                "format version 1 was written by an earlier Meridian, whose manifest did not \
                 cover its step, round and data positions, so edits to them cannot be ruled \
                 out; this build reads version {VERSION}. Finish that run with the build that \
                 wrote it, or start afresh with --overwrite"
            ),
            Some(v) if v != VERSION => {
                bail!("format version {v} is not supported (this build reads {VERSION})")
            }
            _ => {}
        }
    }
    let m: Manifest = serde_json::from_slice(bytes).context("not a valid manifest")?;
    let digest = m.compute_digest()?;
    if m.digest != digest {
        bail!(
            "its digest {:?} does not match its contents ({digest}): the manifest was altered \
             after it was written (the digest covers its step, round, data positions, \
             identity and file hashes). Put back the manifest.json the run wrote, or start \
             afresh with --overwrite",
            m.digest
        );
    }
    let hash = m.identity.hash()?;
    if m.config_hash != hash {
        bail!(
            "its config hash {:?} is not its identity's ({hash}): the manifest was altered",
            m.config_hash
        );
    }
    let workers = m.identity.workers as usize;
    for (what, len) in [
        ("shard positions", m.shards.len()),
        ("AdamW step counts", m.adam_steps.len()),
        ("schedule positions", m.schedule_positions.len()),
    ] {
        if len != workers {
            bail!("it holds {len} {what} for {workers} workers");
        }
    }
    if let Some(name) = m.files.keys().find(|name| !plain_file_name(name)) {
        bail!("it lists {name:?}, which is not a file name inside the checkpoint");
    }
    Ok(m)
}

/// Whether `name` is one normal path component: not empty, not `.` or `..`, no separator
/// (either platform's) and no NUL.
fn plain_file_name(name: &str) -> bool {
    !matches!(name, "" | "." | "..") && !name.contains(['/', '\\', '\0'])
}

/// Checks a parsed manifest against the run resuming from it: the same identity (naming
/// the first difference), `workers` workers, and a parameter and an outer-state file
/// listed for each of them. Needs no tensors: [`load`] calls it before reading any.
pub fn check_manifest(manifest: &Manifest, identity: &RunIdentity, workers: usize) -> Result<()> {
    compare(&manifest.identity, identity)?;
    if manifest.shards.len() != workers
        || manifest.adam_steps.len() != workers
        || manifest.schedule_positions.len() != workers
    {
        bail!(
            "checkpoint: the manifest describes {} workers, not {workers}",
            manifest.shards.len()
        );
    }
    for i in 0..workers {
        for name in [worker_file(i), outer_file(i)] {
            if !manifest.files.contains_key(&name) {
                bail!("checkpoint: the manifest lists no {name}");
            }
        }
    }
    Ok(())
}

/// Names the first difference between the checkpoint's run and this one.
fn compare(saved: &RunIdentity, now: &RunIdentity) -> Result<()> {
    let differ = |what: &str, a: &dyn std::fmt::Display, b: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "checkpoint is from another run: {what} differs (checkpoint: {a}; this run: {b})"
        )
    };
    if saved.model != now.model {
        return Err(differ("the model", &saved.model, &now.model));
    }
    if saved.params != now.params {
        let diff = saved
            .params
            .iter()
            .zip(&now.params)
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("{} {:?} vs {} {:?}", a.0, a.1, b.0, b.1))
            .unwrap_or_else(|| format!("{} vs {} tensors", saved.params.len(), now.params.len()));
        return Err(differ("the parameters", &diff, &"-"));
    }
    let toml_diff = |what: &str, a: &str, b: &str| -> Result<()> {
        if a == b {
            return Ok(());
        }
        let (ta, tb): (toml::Table, toml::Table) =
            (a.parse().unwrap_or_default(), b.parse().unwrap_or_default());
        let key = ta
            .iter()
            .find(|(k, v)| tb.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .or_else(|| tb.keys().find(|k| !ta.contains_key(*k)).cloned())
            .unwrap_or_default();
        let show = |t: &toml::Table| t.get(&key).map_or("unset".to_string(), |v| v.to_string());
        Err(differ(&format!("{what} setting {key:?}"), &show(&ta), &show(&tb)))
    };
    toml_diff("the outer algorithm's", &saved.algorithm, &now.algorithm)?;
    toml_diff("the inner optimizer's", &saved.inner, &now.inner)?;
    if saved.schedule_steps != now.schedule_steps {
        return Err(differ(
            "the schedule length (--steps)",
            &saved.schedule_steps,
            &now.schedule_steps,
        ));
    }
    if saved.batch != now.batch {
        return Err(differ("the batch", &saved.batch, &now.batch));
    }
    if saved.seed != now.seed {
        return Err(differ("the seed", &saved.seed, &now.seed));
    }
    if saved.workers != now.workers {
        return Err(differ("the number of workers", &saved.workers, &now.workers));
    }
    if saved.data != now.data {
        return Err(differ(
            "the data (token fingerprint)",
            &format!("{:016x}", saved.data),
            &format!("{:016x}", now.data),
        ));
    }
    Ok(())
}

/// Checks that every file `manifest` lists is in `dir` with the hash it records. Reads
/// the files, nothing else; [`load`] calls it before reading any tensor.
pub fn check_files(dir: &Path, manifest: &Manifest) -> Result<()> {
    for (name, expected) in &manifest.files {
        let path = dir.join(name);
        let got = file_hash(&path)
            .with_context(|| format!("checkpoint: {name}, listed in its manifest, is missing"))?;
        if &got != expected {
            bail!(
                "checkpoint: {} is corrupt (hash {got}, manifest says {expected})",
                path.display()
            );
        }
    }
    Ok(())
}

/// One worker's state read from disk and checked, not yet applied.
struct Loaded {
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    outer: OptimizerState,
}

fn take(
    map: &mut BTreeMap<String, Tensor>,
    key: &str,
    like: &Tensor,
    file: &Path,
) -> Result<Tensor> {
    let t = map
        .remove(key)
        .with_context(|| format!("checkpoint: {} has no tensor {key}", file.display()))?;
    if t.size() != like.size() || t.kind() != like.kind() {
        bail!(
            "checkpoint: {key} in {} is {:?} {:?}, expected {:?} {:?}",
            file.display(),
            t.kind(),
            t.size(),
            like.kind(),
            like.size()
        );
    }
    let finite = t.isfinite().all().int64_value(&[]) == 1;
    if !finite {
        bail!("checkpoint: {key} in {} holds NaN or infinite values", file.display());
    }
    Ok(t)
}

/// Restores `harness` (built fresh for the run `identity`) from the checkpoint in `dir`
/// and returns the manifest. The checkpoint is never modified. Every file is read and
/// checked before the harness is touched, so a mismatched or corrupt checkpoint leaves it
/// as it was; only a refusal by an outer optimizer's own state check, which comes last,
/// can leave it part-restored (the caller then discards it).
pub fn load(dir: &Path, harness: &mut Harness<LmStep>, identity: &RunIdentity) -> Result<Manifest> {
    let manifest = read_manifest(dir)?;
    let workers = harness.workers().len();
    check_manifest(&manifest, identity, workers)?;
    check_files(dir, &manifest)?;
    let flight = read_in_flight(dir, &manifest, workers)?;
    let mut loaded = Vec::with_capacity(workers);
    for (i, w) in harness.workers().iter().enumerate() {
        let path = dir.join(worker_file(i));
        let mut map: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path)
            .with_context(|| format!("checkpoint: cannot read {}", path.display()))?
            .into_iter()
            .collect();
        let mut l = Loaded {
            params: vec![],
            m: vec![],
            v: vec![],
            outer: OptimizerState::new(w.outer.algorithm()),
        };
        for (pname, t) in w.train.model().parameters() {
            l.params.push(take(&mut map, &format!("param/{pname}"), &t, &path)?);
        }
        for (j, name) in w.params.names().iter().enumerate() {
            let like = &w.train.adam().state().0[j];
            l.m.push(take(&mut map, &format!("adam_m/{name}"), like, &path)?);
            l.v.push(take(&mut map, &format!("adam_v/{name}"), like, &path)?);
        }
        let outer_path = dir.join(outer_file(i));
        l.outer = OptimizerState::load(&outer_path)
            .with_context(|| format!("checkpoint: cannot read {}", outer_path.display()))?;
        l.outer.expect_algorithm(w.outer.algorithm())?;
        loaded.push(l);
    }
    // Everything is read and checked: apply. The outer state goes last because loading it
    // can still refuse (per-algorithm checks); on refusal, restore nothing else either.
    for (w, l) in harness.workers_mut().iter_mut().zip(&loaded) {
        w.outer.load_state(&w.params, &l.outer).context("checkpoint: outer optimizer state")?;
    }
    for (i, (w, l)) in harness.workers_mut().iter_mut().zip(loaded).enumerate() {
        tch::no_grad(|| {
            for ((_, p), saved) in w.train.model().parameters().into_iter().zip(&l.params) {
                let mut p = p;
                p.copy_(saved);
            }
        });
        w.train.adam_mut().restore(l.m, l.v, manifest.adam_steps[i])?;
        w.train.set_schedule_step(manifest.schedule_positions[i]);
        w.train.shard_mut().restore(manifest.shards[i]);
    }
    harness.resume_at(manifest.step, manifest.round);
    if let Some(flight) = flight {
        harness.resume_in_flight(flight).context("checkpoint: the round in flight")?;
    }
    Ok(manifest)
}

/// The file holding an overlapped round that was launched and had not landed when the
/// checkpoint was taken: every worker's payload, and where it lands.
const IN_FLIGHT: &str = "in_flight.safetensors";

fn in_flight_state(harness: &Harness<LmStep>, f: &HarnessFlight) -> OptimizerState {
    let algorithm = harness.workers()[0].outer.algorithm();
    let mut s = OptimizerState::new(algorithm);
    s.put_scalar("round", f.round as f64);
    s.put_scalar("lands_at", f.lands_at as f64);
    s.put_scalar("after_backward", f64::from(u8::from(f.phase == Phase::AfterBackward)));
    for (i, bytes) in f.wire.iter().enumerate() {
        s.put(format!("wire.{i}"), &Tensor::from_slice(bytes));
    }
    s
}

/// Reads the round in flight of the checkpoint in `dir`, if it holds one.
fn read_in_flight(
    dir: &Path,
    manifest: &Manifest,
    workers: usize,
) -> Result<Option<HarnessFlight>> {
    if !manifest.files.contains_key(IN_FLIGHT) {
        return Ok(None);
    }
    let path = dir.join(IN_FLIGHT);
    let s = OptimizerState::load(&path)
        .with_context(|| format!("checkpoint: cannot read {}", path.display()))?;
    let whole = |name: &str| -> Result<u64> {
        let v = s.get_scalar(name)?;
        anyhow::ensure!(v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53), "bad {name} {v}");
        Ok(v as u64)
    };
    let phase = match whole("after_backward")? {
        0 => Phase::AfterInnerStep,
        1 => Phase::AfterBackward,
        other => bail!("checkpoint: {} has a bad phase {other}", path.display()),
    };
    let wire = (0..workers)
        .map(|i| {
            let t = s.get(&format!("wire.{i}"))?;
            anyhow::ensure!(t.kind() == Kind::Uint8, "checkpoint: wire.{i} is not bytes");
            Ok(Vec::<u8>::try_from(t)?)
        })
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("checkpoint: {}", path.display()))?;
    Ok(Some(HarnessFlight { round: whole("round")?, lands_at: whole("lands_at")?, phase, wire }))
}

/// Where `meridian train` keeps algorithm `algo`'s checkpoint under `out`.
pub fn dir_for(out: &Path, algo: &str) -> PathBuf {
    out.join("checkpoints").join(algo)
}

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::*;

    fn identity(workers: u32) -> RunIdentity {
        RunIdentity {
            model: "mlp-lm embed=16 hidden=64".into(),
            params: vec![("embed.weight".into(), vec![256, 16]), ("out.bias".into(), vec![256])],
            algorithm: "algorithm = \"diloco\"\nouter_lr = 0.7\n".into(),
            inner: "lr = 0.001\n".into(),
            schedule_steps: 400,
            batch: 8,
            seed: 7,
            workers,
            data: 0xfeed,
        }
    }

    /// A manifest as `save` writes it for `identity`.
    fn manifest(identity: RunIdentity) -> Manifest {
        let n = identity.workers as usize;
        let mut files = BTreeMap::new();
        for i in 0..n {
            files.insert(worker_file(i), format!("{:016x}", i + 1));
            files.insert(outer_file(i), format!("{:016x}", i + 100));
        }
        files.insert("progress.json".into(), "0000000000000abc".into());
        let mut m = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            step: 40,
            round: 2,
            config_hash: identity.hash().unwrap(),
            shards: (0..n as u64).map(|i| ShardState { batches: 40, rng: i }).collect(),
            adam_steps: vec![40; n],
            schedule_positions: vec![40; n],
            files,
            identity,
            digest: String::new(),
        };
        m.seal().unwrap();
        m
    }

    fn json(m: &Manifest) -> Vec<u8> {
        serde_json::to_vec_pretty(m).unwrap()
    }

    #[test]
    fn a_saved_manifest_parses_and_fits_its_run() {
        let m = manifest(identity(2));
        let parsed = parse_manifest(&json(&m)).unwrap();
        assert_eq!(json(&parsed), json(&m));
        check_manifest(&parsed, &identity(2), 2).unwrap();
        // Layout is not content: the compact form and reordered keys parse as well.
        parse_manifest(&serde_json::to_vec(&m).unwrap()).unwrap();
        let mut keys: Vec<(String, serde_json::Value)> =
            serde_json::to_value(&m).unwrap().as_object().unwrap().clone().into_iter().collect();
        keys.reverse();
        let reordered = format!(
            "{{{}}}",
            keys.iter().map(|(k, v)| format!("{k:?}: {v}")).collect::<Vec<_>>().join(", ")
        );
        parse_manifest(reordered.as_bytes()).unwrap();
    }

    #[test]
    fn malformed_or_altered_manifests_are_refused_by_name() {
        for (bytes, needle) in [
            (&b""[..], "not a valid manifest"),
            (b"{", "not a valid manifest"),
            (b"null", "not a valid manifest"),
            (b"{\"format\": \"meridian-checkpoint\"}", "not a valid manifest"),
        ] {
            let err = format!("{:#}", parse_manifest(bytes).unwrap_err());
            assert!(err.contains(needle), "{err}");
        }
        // `refused`: edited and re-sealed, as `save` would write it, to reach the checks
        // after the digest; `edited`: edited by hand, the digest left as it was.
        let check = |edit: &dyn Fn(&mut Manifest), reseal: bool, needle: &str| {
            let mut m = manifest(identity(2));
            edit(&mut m);
            if reseal {
                m.seal().unwrap();
            }
            let err = format!("{:#}", parse_manifest(&json(&m)).unwrap_err());
            assert!(err.contains(needle), "{needle}: {err}");
        };
        let refused = |edit: &dyn Fn(&mut Manifest), needle: &str| check(edit, true, needle);
        let edited = |edit: &dyn Fn(&mut Manifest)| check(edit, false, "the manifest was altered");
        refused(&|m| m.format = "safetensors".into(), "not a meridian-checkpoint");
        refused(&|m| m.version = 3, "format version 3 is not supported");
        refused(&|m| m.version = 1, "format version 1 was written by an earlier Meridian");
        refused(&|m| m.identity.seed = 8, "the manifest was altered");
        refused(&|m| m.config_hash = "0".repeat(16), "the manifest was altered");
        // Every statement is covered: progress, data positions, counts, file hashes.
        edited(&|m| m.step = 45);
        edited(&|m| m.round = 3);
        edited(&|m| m.shards[1].batches += 1);
        edited(&|m| m.shards[0].rng ^= 1);
        edited(&|m| m.adam_steps[0] = 41);
        edited(&|m| m.schedule_positions[1] = 0);
        edited(&|m| m.identity.seed = 8);
        edited(&|m| {
            m.files.insert("progress.json".into(), "0".repeat(16));
        });
        edited(&|m| m.digest.clear());
        // A field the format does not have is refused, not ignored.
        let mut value = serde_json::to_value(manifest(identity(2))).unwrap();
        value["resume_at"] = 15.into();
        let err = format!("{:#}", parse_manifest(value.to_string().as_bytes()).unwrap_err());
        assert!(err.contains("unknown field `resume_at`"), "{err}");
        refused(
            &|m| {
                m.shards.pop();
            },
            "1 shard positions for 2 workers",
        );
        refused(&|m| m.adam_steps.push(1), "3 AdamW step counts");
        refused(&|m| m.schedule_positions.clear(), "0 schedule positions");
        // Files outside the checkpoint: `load` hashes every listed file, and reading
        // `/dev/zero` or another run's files must not be something a manifest can ask for.
        for name in ["../worker-0.safetensors", "/dev/zero", "a/b", "a\\b", "..", ".", "", "x\0"] {
            refused(
                &|m| {
                    m.files.insert(name.into(), "0".repeat(16));
                },
                "not a file name inside the checkpoint",
            );
        }
    }

    #[test]
    fn a_manifest_is_checked_against_the_run_without_tensors() {
        let m = manifest(identity(2));
        let differs = |now: RunIdentity, workers: usize, needle: &str| {
            let err = check_manifest(&m, &now, workers).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        };
        differs(RunIdentity { seed: 8, ..identity(2) }, 2, "the seed differs");
        differs(identity(3), 3, "the number of workers differs");
        let other = RunIdentity {
            algorithm: "algorithm = \"diloco\"\nouter_lr = 0.5\n".into(),
            ..identity(2)
        };
        differs(other, 2, "setting \"outer_lr\" differs");
        differs(identity(2), 3, "describes 2 workers, not 3");
        let mut missing = m.clone();
        missing.files.remove(&outer_file(1));
        let err = check_manifest(&missing, &identity(2), 2).unwrap_err().to_string();
        assert!(err.contains("lists no worker-1.outer.safetensors"), "{err}");
    }
}
