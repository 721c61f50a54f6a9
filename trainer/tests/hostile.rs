//! Bad input swept across every subcommand from one table. Every row must end in a clear
//! refusal: exit status 1 for a run refused by Meridian, 2 for a flag refused by the parser,
//! never a panic (101) or a hang; a message that names the culprit; and every file the
//! command was given, or could have touched outside its `--out`, left as it was.

// Test helpers outside #[test] functions may unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One hostile input.
struct Case {
    /// The arguments. `{dir}` stands for the folder of fixtures (also the working directory),
    /// `{corpus}` for the shipped corpus.
    args: &'static [&'static str],
    /// The exit status: 1 when Meridian refuses the run, 2 when the parser refuses a flag.
    code: i32,
    /// Words the message must contain: what the user got wrong, by name.
    names: &'static [&'static str],
}

const fn case(args: &'static [&'static str], code: i32, names: &'static [&'static str]) -> Case {
    Case { args, code, names }
}

/// A join string to a port nothing listens on, with a well-formed fingerprint and secret.
const NOBODY: &str = "meridian://127.0.0.1:9/?fp=0000000000000000000000000000000000000000000000000000000000000000&run=00000000000000000000000000000000&secret=0000000000000000000000000000000000000000000000000000000000000000";

const CASES: &[Case] = &[
    // ---- train: flags, data, config, model
    case(&["train", "--algo", "nope"], 2, &["--algo", "nope"]),
    case(&["train", "--data", "{corpus}", "--steps", "0"], 1, &["--steps"]),
    case(&["train", "--data", "{corpus}", "--workers", "0"], 1, &["--workers"]),
    case(&["train", "--data", "{corpus}", "--threads", "0"], 1, &["--threads"]),
    case(&["train", "--data", "{dir}/missing.txt"], 1, &["missing.txt", "does not exist"]),
    case(&["train", "--data-format", "bogus"], 2, &["--data-format", "bogus"]),
    case(&["train", "--data", "{corpus}", "--vocab", "100"], 1, &["--vocab"]),
    case(&["train", "--data", "{dir}/odd.u32"], 1, &["odd.u32"]),
    case(&["train", "--data", "{corpus}", "--config", "{dir}/nope.toml"], 1, &["nope.toml"]),
    case(&["train", "--data", "{corpus}", "--config", "{dir}/table.toml"], 1, &["[nosuch]"]),
    case(&["train", "--data", "{corpus}", "--config", "{dir}/broken.toml"], 1, &["broken.toml"]),
    case(&["train", "--data", "{corpus}", "--model", "mlp", "--set", "nokey=1"], 1, &["nokey"]),
    case(&["train", "--data", "{corpus}", "--set", "novalue"], 1, &["novalue", "KEY=VALUE"]),
    case(&["train", "--data", "{corpus}", "--set", "model.nokey=1"], 1, &["nokey"]),
    case(&["train", "--data", "{corpus}", "--set", "inner.lr=fast"], 1, &["lr"]),
    case(&["train", "--data", "{corpus}", "--model", "torchscript:{dir}/m.pt"], 1, &["m.pt"]),
    case(&["train", "--data", "{corpus}", "--model", "resnet"], 2, &["--model", "resnet"]),
    case(&["train", "--data", "{corpus}", "--device", "tpu"], 2, &["--device", "tpu"]),
    case(
        &["train", "--data", "{dir}/ok.u32", "--vocab", "4294967295", "--model", "mlp"],
        1,
        &["--vocab"],
    ),
    case(
        &["train", "--data", "{corpus}", "--config", "{dir}/toplevel.toml"],
        1,
        &["steps", "--steps"],
    ),
    case(&["train", "--data", "{corpus}", "--model", "torchscript:{dir}"], 1, &["directory"]),
    case(
        &["train", "--data", "{corpus}", "--model", "mlp", "--algo", "diloco", "--set", "lr=1e-3"],
        1,
        &["inner.lr"],
    ),
    case(
        &[
            "train",
            "--data",
            "{corpus}",
            "--model",
            "mlp",
            "--algo",
            "diloco",
            "--set",
            "outer_lr=1e30",
            "--steps",
            "20",
            "--inner-steps",
            "5",
            "--workers",
            "2",
            "--out",
            "{dir}/out/diverged",
        ],
        1,
        &["diloco.outer_lr"],
    ),
    // A folder holding a run's checkpoints: neither replaced nor resumed from half a checkpoint.
    case(
        &["train", "--data", "{corpus}", "--model", "mlp", "--out", "{dir}/run"],
        1,
        &["--resume", "--overwrite"],
    ),
    case(
        &[
            "train",
            "--data",
            "{corpus}",
            "--model",
            "mlp",
            "--algo",
            "diloco",
            "--out",
            "{dir}/run",
            "--resume",
        ],
        1,
        &["manifest.json"],
    ),
    // ---- coordinator
    case(&["coordinator", "--listen", "nothere"], 2, &["--listen", "nothere"]),
    case(&["coordinator", "--set", "diloco.outer_lr=1"], 1, &["diloco.outer_lr", "transport"]),
    case(&["coordinator", "--topology", "bogus"], 2, &["--topology", "bogus"]),
    case(
        &["coordinator", "--listen", "127.0.0.1:0", "--config", "{dir}/transport.toml"],
        1,
        &["transport"],
    ),
    // ---- worker: join strings and flags
    case(&["worker", "--join", "garbage", "--name", "w"], 1, &["--join", "meridian://"]),
    case(&["worker", "--join", "meridian://127.0.0.1:1/?fp=00", "--name", "w"], 1, &["fp="]),
    case(&["worker", "--join", NOBODY, "--name", "w", "--shards", "0"], 1, &["--shards"]),
    case(&["worker", "--name", "w"], 2, &["--join"]),
    case(
        &["worker", "--join-file", "{dir}/nojoin.txt", "--name", "w"],
        1,
        &["--join-file", "nojoin.txt"],
    ),
    case(
        &["worker", "--join-file", "{dir}/empty-join.txt", "--name", "w"],
        1,
        &["empty-join.txt", "empty"],
    ),
    case(&["worker", "--join-file", "{dir}/topo.toml", "--name", "w"], 1, &["--join-file"]),
    case(
        &["worker", "--join", NOBODY, "--join-file", "{dir}/x.txt", "--name", "w"],
        2,
        &["--join-file"],
    ),
    // ---- simulate: presets, topologies, durations
    case(&["simulate", "--data", "{corpus}", "--preset", "mars"], 1, &["--preset", "mars"]),
    case(&["simulate", "--data", "{corpus}", "--topology", "{dir}/topo.toml"], 1, &["topo.toml"]),
    case(&["simulate", "--step-time", "fast"], 2, &["--step-time", "fast"]),
    case(&["simulate", "--algos", "bogus"], 2, &["--algos", "bogus"]),
    case(&["simulate", "--data", "{corpus}", "--quick", "--workers", "0"], 1, &["--workers"]),
    case(&["simulate", "--route", "carrier-pigeon"], 2, &["--route"]),
    // ---- what-if
    case(&["what-if", "--params", "0"], 2, &["--params"]),
    case(&["what-if", "--params", "lots"], 2, &["--params", "lots"]),
    case(&["what-if", "--params", "1e30"], 1, &["--params"]),
    case(
        &["simulate", "--data", "{corpus}", "--quick", "--step-time", "100000000s"],
        1,
        &["--step-time"],
    ),
    case(&["what-if", "--params", "1e9", "--target", "2"], 1, &["--target"]),
    case(&["what-if", "--params", "1e9", "--preset", "mars"], 1, &["mars"]),
    case(&["what-if", "--params", "1e9", "--step-time", "1 parsec"], 2, &["--step-time"]),
    // ---- proxy: link specs and limits
    case(
        &["proxy", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--up", "{ delay = \"x\" }"],
        1,
        &["--up", "x"],
    ),
    case(
        &["proxy", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--link", "a -> b"],
        1,
        &["--link", "\"a\""],
    ),
    case(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--to",
            "127.0.0.1:9",
            "--up",
            "{}",
            "--idle-timeout-s",
            "0",
        ],
        1,
        &["--idle-timeout-s"],
    ),
    case(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--to",
            "127.0.0.1:9",
            "--up",
            "{}",
            "--max-clients",
            "0",
        ],
        1,
        &["--max-clients"],
    ),
    case(&["proxy", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9"], 1, &["--up"]),
    case(
        &["proxy", "--listen", "127.0.0.1:17999", "--to", "127.0.0.1:17999", "--up", "{}"],
        1,
        &["--to"],
    ),
    // ---- compress: files and flags
    case(&["compress", "--input", "{dir}/nope.safetensors"], 1, &["nope.safetensors"]),
    case(&["compress", "--input", "{dir}/garbage.safetensors"], 1, &["garbage.safetensors"]),
    case(&["compress", "--algo", "bogus", "--width", "8", "--layers", "1"], 1, &["bogus"]),
    case(&["compress", "--width", "0"], 1, &["--width"]),
    case(&["compress", "--width", "1000000", "--layers", "1"], 1, &["--width"]),
    case(&["compress", "--input", "{dir}/f8.safetensors"], 1, &["F8_E4M3", "tensor w"]),
    case(
        &[
            "compress",
            "--input",
            "{dir}/ok.safetensors",
            "--algo",
            "sparseloco",
            "--out",
            "{dir}/link.safetensors",
        ],
        1,
        &["link.safetensors"],
    ),
    case(&["compress", "--out", "{dir}/out/x.safetensors"], 2, &["--input"]),
    case(
        &["compress", "--input", "{dir}/garbage.safetensors", "--out", "{dir}/out/x.safetensors"],
        1,
        &["--algo"],
    ),
];

/// The fixtures the table refers to, written into `dir`.
fn write_fixtures(dir: &Path) {
    let put = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
    put("table.toml", b"[nosuch]\nx = 1\n");
    put("broken.toml", b"[diloco\nouter_lr = \n");
    put("transport.toml", b"[transport]\ncongestion = \"carrier-pigeon\"\n");
    put("topo.toml", b"regions = [\"a\"]\n[links\n");
    put("garbage.safetensors", b"this is not a safetensors file");
    put("toplevel.toml", b"steps = 5\n");
    put("empty-join.txt", b" \n");
    // Five bytes: not a whole number of u32 tokens.
    put("odd.u32", &[1, 0, 0, 0, 2]);
    let tokens: Vec<u8> = (0u32..4096).flat_map(|t| (t % 200).to_le_bytes()).collect();
    put("ok.u32", &tokens);
    put(
        "f8.safetensors",
        &safetensors(r#"{"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}"#, &[0; 2]),
    );
    let floats: Vec<u8> = [1.0f32, -2.0, 3.0, 0.5].iter().flat_map(|f| f.to_le_bytes()).collect();
    put(
        "ok.safetensors",
        &safetensors(r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, &floats),
    );
    // A symlink to a file the command was not asked to write.
    put("victim.txt", b"not a safetensors file, and not yours\n");
    std::os::unix::fs::symlink(dir.join("victim.txt"), dir.join("link.safetensors")).unwrap();
    // A run folder with one algorithm's checkpoint files but no manifest.
    std::fs::create_dir_all(dir.join("run/checkpoints/diloco")).unwrap();
    put("run/checkpoints/diloco/worker-0.safetensors", b"weights");
    std::fs::create_dir_all(dir.join("out")).unwrap();
}

/// A safetensors file: the header's length (u64, little-endian), the header, the data.
fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// Every file under `dir` except `out/`, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path == dir.join("out") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.insert(path.strip_prefix(dir).unwrap().to_path_buf(), bytes);
            }
        }
    }
    files
}

/// Runs `meridian` in `dir` with `args`, killed after `limit`: (exit status, stderr).
fn run(dir: &Path, args: &[String], limit: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(common::BIN)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap())
}

#[test]
fn every_hostile_input_is_a_clear_error_that_changes_nothing() {
    let dir = common::scratch("hostile", "sweep");
    write_fixtures(&dir);
    let corpus = common::corpus();
    let dir_text = dir.to_str().unwrap().to_string();
    let mut failures = Vec::new();
    for case in CASES {
        let args: Vec<String> = case
            .args
            .iter()
            .map(|a| a.replace("{dir}", &dir_text).replace("{corpus}", &corpus))
            .collect();
        let before = snapshot(&dir);
        let (code, stderr) = run(&dir, &args, Duration::from_secs(60));
        let shown = format!("meridian {}", args.join(" "));
        if code != Some(case.code) {
            failures.push(format!("{shown}\n  exit {code:?}, expected {}\n  {stderr}", case.code));
        }
        if stderr.contains("panicked") {
            failures.push(format!("{shown}\n  panicked:\n  {stderr}"));
        }
        if let Some(missing) = case.names.iter().find(|n| !stderr.contains(*n)) {
            failures.push(format!("{shown}\n  message does not name {missing:?}:\n  {stderr}"));
        }
        if snapshot(&dir) != before {
            failures.push(format!("{shown}\n  changed files outside --out"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n\n")
    );
}
