//! Bad input gets one clear error naming its culprit: sizes beyond the machine are refused
//! before anything is allocated, unreadable dtypes and TorchScript paths are named, each
//! message is printed once, and `--join-file` names the user's file and keeps the secret
//! private.

// Test helpers outside #[test] functions may unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{meridian, Proc, BIN};

fn scratch(name: &str) -> PathBuf {
    common::scratch("named", name)
}

/// A small file of little-endian u32 tokens below 1000.
fn tokens(dir: &Path) -> PathBuf {
    let path = dir.join("ok.u32");
    let bytes: Vec<u8> = (0..20_000u32).flat_map(|i| (i * 7 % 1000).to_le_bytes()).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Asserts a failed run (exit status 1, not a panic's 101) and returns its stderr.
fn refused(what: &str, (ok, _, err): (bool, String, String)) -> String {
    assert!(!ok, "{what} succeeded");
    assert!(!err.contains("panicked"), "{what} panicked:\n{err}");
    err
}

/// How often `needle` occurs in `haystack`.
fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn a_vocabulary_beyond_the_machine_is_refused_naming_vocab() {
    let dir = scratch("vocab");
    let data = tokens(&dir);
    for model in ["mlp", "gpt"] {
        let out = dir.join(model);
        let err = refused(
            model,
            meridian(&[
                "train",
                "--model",
                model,
                "--algo",
                "diloco",
                "--steps",
                "20",
                "--workers",
                "2",
                "--data",
                data.to_str().unwrap(),
                "--vocab",
                "4294967295",
                "--out",
                out.to_str().unwrap(),
            ]),
        );
        assert!(err.contains("--vocab") && err.contains("4294967295"), "{model}: {err}");
        assert!(err.contains("memory"), "{model}: names the limit: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_data_file_beyond_the_machine_is_refused_before_reading_it() {
    let dir = scratch("bigdata");
    let data = dir.join("huge.txt");
    // Sparse: a terabyte that takes no disk.
    std::fs::File::create(&data).unwrap().set_len(1 << 40).unwrap();
    let out = dir.join("out");
    let err = refused(
        "a terabyte of text",
        meridian(&[
            "train",
            "--model",
            "mlp",
            "--steps",
            "2",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]),
    );
    assert!(err.contains("huge.txt") && err.contains("--data") && err.contains("GiB"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_model_shape_beyond_i64_is_refused_naming_the_setting() {
    let dir = scratch("shape");
    let data = tokens(&dir);
    let out = dir.join("out");
    let err = refused(
        "huge d_model",
        meridian(&[
            "train",
            "--model",
            "gpt",
            "--algo",
            "diloco",
            "--steps",
            "20",
            "--workers",
            "1",
            "--data",
            data.to_str().unwrap(),
            "--vocab",
            "1000",
            "--set",
            "model.d_model=4611686018427387904",
            "--set",
            "model.heads=1",
            "--out",
            out.to_str().unwrap(),
        ]),
    );
    assert!(err.contains("64-bit") && err.contains("model.d_model"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_compress_width_beyond_the_machine_is_refused_naming_width() {
    let err =
        refused("--width 1000000", meridian(&["compress", "--width", "1000000", "--layers", "1"]));
    assert!(err.contains("--width 1000000") && err.contains("memory"), "{err}");
    let err = refused(
        "--width i64::MAX",
        meridian(&["compress", "--width", "9223372036854775807", "--layers", "3"]),
    );
    assert!(err.contains("--width") && err.contains("64-bit"), "{err}");
}

/// A safetensors file of one tensor `name` of `dtype` with `bytes` of data.
fn safetensors(path: &Path, name: &str, dtype: &str, bytes: usize) {
    let mut header = format!(
        r#"{{"{name}":{{"dtype":"{dtype}","shape":[{bytes}],"data_offsets":[0,{bytes}]}}}}"#
    );
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.resize(file.len() + bytes, 0);
    std::fs::write(path, file).unwrap();
}

#[test]
fn an_unknown_safetensors_dtype_names_the_tensor_the_dtype_and_the_dtypes_read() {
    let dir = scratch("dtype");
    for (dtype, bytes) in [("F8_E4M3", 4), ("C64", 16)] {
        let path = dir.join(format!("{dtype}.safetensors"));
        safetensors(&path, "layer.weight", dtype, bytes);
        let err = refused(dtype, meridian(&["compress", "--input", path.to_str().unwrap()]));
        assert!(err.contains("layer.weight") && err.contains(dtype), "{err}");
        assert!(err.contains("BF16") && err.contains("F32"), "lists the dtypes read: {err}");
        assert!(!err.contains("InvalidHeaderDeserialization"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_torchscript_path_that_is_a_directory_says_so() {
    let dir = scratch("tsdir");
    let data = tokens(&dir);
    let model = format!("torchscript:{}", dir.display());
    let out = dir.join("out");
    let err = refused(
        "a directory as the module",
        meridian(&[
            "train",
            "--model",
            &model,
            "--algo",
            "diloco",
            "--steps",
            "2",
            "--workers",
            "1",
            "--data",
            data.to_str().unwrap(),
            "--vocab",
            "1000",
            "--set",
            "model.context=8",
            "--out",
            out.to_str().unwrap(),
        ]),
    );
    assert!(err.contains("is a directory") && err.contains("torch.jit.save"), "{err}");
    assert!(!err.contains("central directory"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unresolvable_join_host_is_reported_once() {
    let dir = scratch("dns");
    let data = tokens(&dir);
    let join = common::fake_join("no-such-host.invalid:7070");
    let out = dir.join("out");
    let mut args = common::worker_args(&join, "w0", data.to_str().unwrap());
    args.extend(["--vocab", "1000", "--out", out.to_str().unwrap()].map(String::from));
    let err = refused("an unresolvable host", meridian(&args));
    assert!(err.contains("no-such-host.invalid"), "{err}");
    assert_eq!(count(&err, "cannot resolve"), 1, "printed once: {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_busy_listen_port_is_reported_once() {
    let dir = scratch("busy");
    let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let (code, _, err) = refused_coordinator(&dir, &listen, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&listen), "names the address: {err}");
    assert_eq!(count(&err, "in use"), 1, "printed once: {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Starts `meridian coordinator --listen LISTEN ARGS`, its stdout and stderr going to files
/// in `dir`.
fn start_coordinator(dir: &Path, listen: &str, args: &[&OsStr]) -> Proc {
    let child = Command::new(BIN)
        .args(["coordinator", "--listen", listen])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(std::fs::File::create(dir.join("stdout")).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(dir.join("stderr")).unwrap()))
        .spawn()
        .unwrap();
    Proc(child)
}

/// A coordinator that should refuse to run: its exit code (`None` if it was still running
/// after 20 s and had to be killed), stdout and stderr.
fn refused_coordinator(dir: &Path, listen: &str, args: &[&OsStr]) -> (Option<i32>, String, String) {
    let mut proc = start_coordinator(dir, listen, args);
    let start = Instant::now();
    let code = loop {
        if let Some(status) = proc.0.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > Duration::from_secs(20) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(proc);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    (code, read("stdout"), read("stderr"))
}

#[test]
fn a_join_file_that_cannot_be_written_is_named_before_the_coordinator_starts() {
    let dir = scratch("joinfile");
    let plain = dir.join("plain");
    std::fs::write(&plain, b"a file, not a folder").unwrap();
    let cases = [
        dir.join("no-such-folder").join("j.txt"),
        plain.join("j.txt"),
        dir.clone(),
        PathBuf::from("/proc/j.txt"),
    ];
    for join in &cases {
        let (code, _, err) =
            refused_coordinator(&dir, "127.0.0.1:0", &["--join-file".as_ref(), join.as_os_str()]);
        assert_eq!(code, Some(1), "{}: {err}", join.display());
        assert!(err.contains(&join.display().to_string()), "names {}: {err}", join.display());
        assert!(!err.contains(".tmp"), "names no temporary: {err}");
    }
    // The folder checks come before the coordinator starts: no join string, no state.
    let _ = std::fs::remove_dir_all(dir.join("state"));
    let (_, stdout, _) =
        refused_coordinator(&dir, "127.0.0.1:0", &["--join-file".as_ref(), cases[0].as_os_str()]);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(!dir.join("state").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn the_join_file_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("joinmode");
    let join = dir.join("j.txt");
    // A file already there with looser permissions is replaced by a private one.
    std::fs::write(&join, b"old").unwrap();
    std::fs::set_permissions(&join, std::fs::Permissions::from_mode(0o644)).unwrap();
    let coordinator =
        start_coordinator(&dir, "127.0.0.1:0", &["--join-file".as_ref(), join.as_os_str()]);
    let start = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&join).unwrap_or_default();
        if text.starts_with("meridian://") {
            break text;
        }
        let err = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
        assert!(start.elapsed() < Duration::from_secs(20), "no join string written: {err}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(text.contains("secret="), "{text}");
    let mode = std::fs::metadata(&join).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
    drop(coordinator);
    std::fs::remove_dir_all(&dir).unwrap();
}
