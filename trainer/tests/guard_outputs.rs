//! Nothing a run wrote is lost to a mistaken command: a rerun without `--resume` does not
//! wipe an earlier run's checkpoints, an incomplete or hand-edited checkpoint is refused
//! with every file left as it was, and `compress --out` never replaces a symlink or a
//! special file (`--out -` is the way to send the decoded tensors to a stream).

// Test helpers outside #[test] functions may unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `meridian train` on the fast model, 60 steps of two workers, checkpoints only at the
/// end; then `extra`. Whether it succeeded, and its stderr.
fn train(out: &Path, extra: &[&str]) -> (bool, String) {
    let data = common::corpus();
    let mut args = vec![
        "train",
        "--model",
        "mlp",
        "--data",
        &data,
        "--threads",
        "1",
        "--workers",
        "2",
        "--steps",
        "60",
        "--inner-steps",
        "30",
        "--eval-every",
        "15",
        "--checkpoint-every",
        "0",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let (ok, _, stderr) = common::meridian(&args);
    (ok, stderr)
}

/// Every file under `dir` (relative path → bytes), to show that a refusal touched nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, into: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, into);
            } else {
                into.insert(
                    path.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&path).unwrap(),
                );
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files);
    files
}

fn manifest_path(out: &Path, algo: &str) -> PathBuf {
    out.join("checkpoints").join(algo).join("manifest.json")
}

#[test]
fn a_rerun_without_resume_does_not_replace_the_checkpoints() {
    let dir = common::scratch("guard", "rerun");
    let (ok, err) = train(&dir, &["--algo", "diloco", "--stop-after", "10"]);
    assert!(ok, "{err}");
    let before = snapshot(&dir);
    assert!(before.contains_key(Path::new("checkpoints/diloco/manifest.json")));
    // The same command again, and one for another algorithm into the same folder.
    for algo in ["diloco", "ddp"] {
        let (ok, err) = train(&dir, &["--algo", algo, "--stop-after", "10"]);
        assert!(!ok, "{algo}: a rerun was allowed to replace the checkpoints");
        for needle in [dir.to_str().unwrap(), "checkpoints/diloco", "--resume", "--overwrite"] {
            assert!(err.contains(needle), "{algo}: {needle:?} not in: {err}");
        }
        assert!(snapshot(&dir) == before, "{algo}: the refused rerun changed files");
    }
    let (ok, err) = train(&dir, &["--algo", "diloco", "--resume", "--overwrite"]);
    assert!(!ok && err.contains("--overwrite") && err.contains("--resume"), "{err}");
    assert!(snapshot(&dir) == before);
    // --overwrite starts afresh and replaces them.
    let (ok, err) = train(&dir, &["--algo", "diloco", "--overwrite"]);
    assert!(ok, "{err}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest_path(&dir, "diloco")).unwrap()).unwrap();
    assert_eq!(manifest["step"], 60);
    // An empty checkpoint folder holds nothing to lose.
    let fresh = common::scratch("guard", "rerun-empty");
    std::fs::create_dir_all(fresh.join("checkpoints/diloco")).unwrap();
    let (ok, err) = train(&fresh, &["--algo", "diloco", "--stop-after", "5"]);
    assert!(ok, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&fresh).unwrap();
}

#[test]
fn resuming_a_checkpoint_without_its_manifest_is_refused_untouched() {
    let dir = common::scratch("guard", "no-manifest");
    let (ok, err) = train(&dir, &["--algo", "ddp,diloco", "--stop-after", "10"]);
    assert!(ok, "{err}");
    std::fs::remove_file(manifest_path(&dir, "diloco")).unwrap();
    let before = snapshot(&dir);
    let (ok, err) = train(&dir, &["--algo", "ddp,diloco", "--resume"]);
    assert!(!ok, "a checkpoint without its manifest was taken for none: {err}");
    let folder = dir.join("checkpoints/diloco");
    for needle in [folder.to_str().unwrap(), "no manifest.json", "--overwrite"] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    // Neither diloco's weights nor ddp's checkpoint (the first algorithm) moved.
    assert!(snapshot(&dir) == before, "the refused resume changed files");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_edited_manifest_is_refused_untouched() {
    let dir = common::scratch("guard", "edited");
    let (ok, err) = train(&dir, &["--algo", "ddp,diloco", "--stop-after", "10"]);
    assert!(ok, "{err}");
    let path = manifest_path(&dir, "diloco");
    let original = std::fs::read_to_string(&path).unwrap();
    assert!(original.contains("\"step\": 10,"), "{original}");
    let edits = [
        ("\"step\": 10,", "\"step\": 15,"),
        ("\"round\": 0,", "\"round\": 1,"),
        ("\"adam_steps\": [\n    10,", "\"adam_steps\": [\n    11,"),
    ];
    for (from, to) in edits {
        assert!(original.contains(from), "{from:?} not in {original}");
        std::fs::write(&path, original.replacen(from, to, 1)).unwrap();
        let before = snapshot(&dir);
        let (ok, err) = train(&dir, &["--algo", "ddp,diloco", "--resume"]);
        assert!(!ok, "{to}: an edited manifest was resumed");
        for needle in [path.to_str().unwrap(), "the manifest was altered"] {
            assert!(err.contains(needle), "{to}: {needle:?} not in: {err}");
        }
        assert!(snapshot(&dir) == before, "{to}: the refused resume changed files");
    }
    std::fs::write(&path, &original).unwrap();
    // A corrupt file of the second algorithm is found before the first one trains.
    let weights = dir.join("checkpoints/diloco/worker-1.safetensors");
    let intact = std::fs::read(&weights).unwrap();
    let mut bytes = intact.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, &bytes).unwrap();
    let before = snapshot(&dir);
    let (ok, err) = train(&dir, &["--algo", "ddp,diloco", "--resume"]);
    assert!(!ok && err.contains("worker-1.safetensors is corrupt"), "{err}");
    assert!(snapshot(&dir) == before, "the refused resume changed files");
    std::fs::write(&weights, &intact).unwrap();
    // Put back, it resumes to the end.
    let (ok, err) = train(&dir, &["--algo", "ddp,diloco", "--resume"]);
    assert!(ok, "{err}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(manifest["step"], 60);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A small safetensors input with a float and an integer tensor.
fn compress_input(dir: &Path) -> PathBuf {
    let input = dir.join("grads.safetensors");
    tch::manual_seed(3);
    let w = tch::Tensor::randn([64, 32], (tch::Kind::Float, tch::Device::Cpu));
    let steps = tch::Tensor::from_slice(&[1i64, 2, 3]);
    tch::Tensor::write_safetensors(&[("w", &w), ("steps", &steps)], &input).unwrap();
    input
}

#[test]
fn compress_out_refuses_symlinks_and_special_files() {
    let dir = common::scratch("guard", "compress-special");
    let input = compress_input(&dir);
    let kept = dir.join("kept.txt");
    std::fs::write(&kept, b"not to be replaced").unwrap();
    let link = dir.join("link.safetensors");
    std::os::unix::fs::symlink(&kept, &link).unwrap();
    // A socket stands in for a device: as root, a test of /dev/null that failed would
    // replace the machine's /dev/null.
    let socket = dir.join("socket.safetensors");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let sub = dir.join("folder.safetensors");
    std::fs::create_dir(&sub).unwrap();
    for (out, kind) in [(&link, "a symbolic link"), (&socket, "a socket"), (&sub, "a directory")] {
        let (ok, _, err) = common::compress_to("diloco-f32", &input, out);
        assert!(!ok, "{kind}: replaced");
        assert!(err.contains(out.to_str().unwrap()) && err.contains(kind), "{kind}: {err}");
    }
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&kept).unwrap(), b"not to be replaced");
    {
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&socket).unwrap().file_type().is_socket());
    }
    assert!(sub.is_dir());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compress_out_dash_writes_the_decoded_file_to_stdout() {
    let dir = common::scratch("guard", "compress-stdout");
    let input = compress_input(&dir);
    let file = dir.join("decoded.safetensors");
    let run = |out: &str| {
        Command::new(common::BIN)
            .args(["compress", "--algo", "demo", "--input", input.to_str().unwrap(), "--out", out])
            .env("RUST_LOG", "warn")
            // In the scratch folder: a build that took `-` for a file name writes it there.
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let to_file = run(file.to_str().unwrap());
    assert!(to_file.status.success(), "{}", String::from_utf8_lossy(&to_file.stderr));
    let to_stdout = run("-");
    let report = String::from_utf8_lossy(&to_stdout.stderr);
    assert!(to_stdout.status.success(), "{report}");
    // stdout holds exactly the file --out FILE writes; the report went to stderr.
    assert!(to_stdout.stdout == std::fs::read(&file).unwrap(), "stdout is not the decoded file");
    assert!(report.contains("TOTAL") && report.contains("standard output"), "{report}");
    assert!(String::from_utf8_lossy(&to_file.stdout).contains("TOTAL"));
    assert!(!dir.join("-").exists(), "--out - wrote a file named -");
    std::fs::remove_dir_all(&dir).unwrap();
}
