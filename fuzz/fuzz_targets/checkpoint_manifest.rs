//! Feeds arbitrary bytes to the checkpoint manifest parser (`parse_manifest`, what
//! `read_manifest` does with `manifest.json`) and, when they parse, to the check of the
//! manifest against a run (`check_manifest`, what `load` does before reading any tensor).
//!
//! Each input is tried as it is and, if it deserializes, with its config hash recomputed (so
//! that mutated identities get past the hash check). Checked beyond "no panic, no
//! over-allocation": a manifest that parses, written out again, parses to the same manifest;
//! checked against its own identity it can only lack a listed worker file; checked against
//! another run it names what differs.
//!
//! With `MERIDIAN_FUZZ_WRITE_SEEDS=<dir>` in the environment the target writes valid
//! manifests into `<dir>` and exits instead (see `fuzz/seed-corpus.sh`).

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use meridian_trainer::report::checkpoint::{check_manifest, parse_manifest, Manifest, RunIdentity};
use meridian_trainer::data::ShardState;

/// The run the manifests are checked against.
fn identity() -> RunIdentity {
    RunIdentity {
        model: "mlp-lm vocab=256 context=32 embed=16 hidden=64".into(),
        params: vec![
            ("embed.weight".into(), vec![256, 16]),
            ("hidden.weight".into(), vec![64, 512]),
            ("hidden.bias".into(), vec![64]),
            ("out.weight".into(), vec![256, 64]),
        ],
        algorithm: "algorithm = \"diloco\"\ninner_steps = 20\nouter_lr = 0.7\n".into(),
        inner: "lr = 0.001\nbeta1 = 0.9\nweight_decay = 0.1\n".into(),
        schedule_steps: 400,
        batch: 8,
        seed: 7,
        workers: 2,
        data: 0x0123_4567_89ab_cdef,
    }
}

fn manifest(identity: RunIdentity, extras: &[&str]) -> Manifest {
    let workers = identity.workers as usize;
    let mut files = BTreeMap::new();
    for i in 0..workers {
        files.insert(format!("worker-{i}.safetensors"), format!("{:016x}", 11 * i + 1));
        files.insert(format!("worker-{i}.outer.safetensors"), format!("{:016x}", 13 * i + 2));
    }
    for name in extras {
        files.insert((*name).to_string(), "00000000deadbeef".into());
    }
    let mut m = Manifest {
        format: "meridian-checkpoint".into(),
        version: 2,
        step: 120,
        round: 6,
        config_hash: identity.hash().expect("hash"),
        shards: (0..workers as u64)
            .map(|i| ShardState { batches: 120 + i, rng: 0x5eed + i })
            .collect(),
        adam_steps: vec![120; workers],
        schedule_positions: vec![120; workers],
        files,
        identity,
        digest: String::new(),
    };
    m.seal().expect("seal");
    m
}

fn write_seeds(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("seed directory");
    let mut other = identity();
    other.workers = 3;
    other.algorithm = "algorithm = \"sparseloco\"\n[sparseloco]\nk = 64\n".into();
    let cases = [
        ("two-workers", manifest(identity(), &[])),
        ("with-progress", manifest(identity(), &["progress.json"])),
        ("three-workers-sparseloco", manifest(other, &[])),
    ];
    for (name, m) in cases {
        let pretty = serde_json::to_vec_pretty(&m).expect("json");
        std::fs::write(dir.join(format!("{name}.json")), pretty).expect("writing a seed");
        let compact = serde_json::to_vec(&m).expect("json");
        std::fs::write(dir.join(format!("{name}-compact.json")), compact).expect("writing a seed");
    }
}

/// Parses `bytes` and, if they parse, checks what holds of every manifest that does.
fn check(bytes: &[u8]) {
    let Ok(m) = parse_manifest(bytes) else { return };
    let again = serde_json::to_vec(&m).expect("a parsed manifest serializes");
    let reparsed = parse_manifest(&again).expect("a parsed manifest, written out, parses");
    assert_eq!(serde_json::to_vec(&reparsed).expect("serializes"), again);

    if let Err(e) = check_manifest(&m, &m.identity, m.identity.workers as usize) {
        assert!(e.to_string().contains("lists no"), "against its own identity: {e:#}");
    }
    if let Err(e) = check_manifest(&m, &identity(), 2) {
        let text = e.to_string();
        assert!(
            text.contains("differs") || text.contains("workers") || text.contains("lists no"),
            "{text}"
        );
    }
}

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("MERIDIAN_FUZZ_WRITE_SEEDS") {
            write_seeds(std::path::Path::new(&dir));
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        check(data);
        // Past the config hash: a manifest whose identity was mutated, with the hash `save`
        // would have written for it. Without this, mutations of the identity (the part that
        // `check_manifest` compares) would almost all stop at the hash check.
        if let Ok(mut m) = serde_json::from_slice::<Manifest>(data) {
            if let Ok(hash) = m.identity.hash() {
                if hash != m.config_hash {
                    m.config_hash = hash;
                    // And the digest `save` would have sealed it with, or every mutation
                    // would stop at the digest check.
                    if m.seal().is_ok() {
                        check(&serde_json::to_vec(&m).expect("serializes"));
                    }
                }
            }
        }
    }
);
