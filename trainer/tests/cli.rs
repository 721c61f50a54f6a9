//! The `meridian` binary as a user runs it.

use std::process::Command;

fn meridian(args: &[&str]) -> (bool, String, String) {
    let out = match Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!("cannot run meridian: {e}"),
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn train_compares_algorithms_with_identical_replicas() {
    let (ok, stdout, stderr) = meridian(&[
        "train",
        "--algo",
        "ddp,diloco,sparseloco",
        "--workers",
        "2",
        "--steps",
        "40",
        "--inner-steps",
        "10",
    ]);
    assert!(ok, "{stderr}");
    for algo in ["ddp", "diloco", "sparseloco"] {
        let line = stdout.lines().find(|l| l.starts_with(algo)).unwrap_or_default();
        assert!(line.contains("identical"), "{algo}: {stdout}");
    }
    // DiLoCo at H = 10 over 40 steps: 4 rounds.
    let diloco = stdout.lines().find(|l| l.starts_with("diloco")).unwrap_or_default();
    assert_eq!(diloco.split_whitespace().nth(3), Some("4"), "{diloco}");
}

#[test]
fn mistakes_are_named_and_fail() {
    let (ok, _, stderr) = meridian(&["train", "--algo", "diloco", "--set", "momentun=0.5"]);
    assert!(!ok && stderr.contains("momentun"), "{stderr}");
    let (ok, _, stderr) = meridian(&["train", "--algo", "adam"]);
    assert!(!ok && stderr.contains("adam"), "{stderr}");
    let (ok, _, stderr) = meridian(&["train", "--algo", "diloco", "--inner-steps", "0"]);
    assert!(!ok && stderr.contains("inner_steps"), "{stderr}");
    let (ok, _, stderr) = meridian(&["train", "--config", "/nonexistent/run.toml"]);
    assert!(!ok && stderr.contains("/nonexistent/run.toml"), "{stderr}");
}

#[test]
fn config_file_tables_configure_each_algorithm() {
    let dir = std::env::temp_dir().join(format!("meridian-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("run.toml");
    std::fs::write(&path, "[diloco]\ninner_steps = 5\n").unwrap();
    let (ok, stdout, stderr) = meridian(&[
        "train",
        "--algo",
        "diloco",
        "--workers",
        "2",
        "--steps",
        "20",
        "--config",
        path.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let diloco = stdout.lines().find(|l| l.starts_with("diloco")).unwrap_or_default();
    assert_eq!(diloco.split_whitespace().nth(3), Some("4"), "{diloco}");
    std::fs::write(&path, "[diloco]\ninner_stepz = 5\n").unwrap();
    let (ok, _, stderr) =
        meridian(&["train", "--algo", "diloco", "--config", path.to_str().unwrap()]);
    assert!(!ok && stderr.contains("inner_stepz"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
