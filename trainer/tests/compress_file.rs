//! `meridian compress --input FILE.safetensors` as a user runs it: every algorithm on a
//! file of mixed dtypes and shapes, the decoded file `--out` writes, and the mistakes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

mod common;

use common::meridian;

/// A fresh directory for one test, removed by the test when it passes.
fn scratch(test: &str) -> PathBuf {
    common::scratch("compress", test)
}

/// `r`'s value; a failing helper fails the test that called it.
fn or_fail<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Tensors of every kind the command meets: a large f32 matrix, bf16, f16 and f64
/// tensors, a vector, a scalar, a 4-d kernel, an integer and an empty tensor.
fn write_input(path: &Path) -> Vec<(String, Tensor)> {
    tch::manual_seed(7);
    let f = (Kind::Float, tch::Device::Cpu);
    let tensors: Vec<(String, Tensor)> = vec![
        ("w".into(), Tensor::randn([256, 512], f)),
        ("h".into(), Tensor::randn([64, 128], f).to_kind(Kind::BFloat16)),
        ("half".into(), (Tensor::randn([40, 50], f) * 0.01).to_kind(Kind::Half)),
        ("wide".into(), Tensor::randn([300], f).to_kind(Kind::Double)),
        ("v".into(), Tensor::randn([1000], f)),
        ("s".into(), Tensor::from(2.5f32)),
        ("conv".into(), Tensor::randn([8, 4, 3, 3], f)),
        ("steps".into(), Tensor::from_slice(&[1i64, 2, 3])),
        ("empty".into(), Tensor::zeros([0, 4], f)),
    ];
    or_fail(Tensor::write_safetensors(&tensors, path), "input file");
    tensors
}

/// The numbers of a table row: bytes, sent, ratio, rel.error (read from the end, since
/// the shape column holds spaces).
fn numbers(line: &str) -> (usize, usize, f64, f64) {
    let f: Vec<&str> = line.split_whitespace().rev().take(4).collect();
    let ratio = f[1].trim_end_matches('x').parse().unwrap_or(f64::NAN);
    let int = |s: &str| or_fail(s.parse::<usize>(), line);
    (int(f[3]), int(f[2]), ratio, or_fail(f[0].parse(), line))
}

/// The row of `tensor` (or `TOTAL`) in `algo`'s table.
fn row<'a>(stdout: &'a str, algo: &str, tensor: &str) -> &'a str {
    let header = format!("{algo}: ");
    stdout
        .lines()
        .skip_while(|l| !l.starts_with(&header))
        .skip(2)
        .take_while(|l| !l.is_empty())
        .find(|l| l.split_whitespace().next() == Some(tensor))
        .unwrap_or_else(|| panic!("no {tensor} row for {algo} in:\n{stdout}"))
}

fn rel_error(x: &Tensor, y: &Tensor) -> f64 {
    let x = x.to_kind(Kind::Double);
    let y = y.to_kind(Kind::Double);
    (&x - &y).norm().double_value(&[]) / x.norm().double_value(&[])
}

#[test]
fn every_algorithm_reports_bytes_ratio_and_error() {
    let dir = scratch("compress-all");
    let input = dir.join("grads.safetensors");
    let tensors = write_input(&input);
    let (ok, stdout, stderr) = meridian(&["compress", "--input", input.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("skipped steps (i64 [3]): not floating point"), "{stdout}");
    assert!(stdout.contains("skipped empty (f32 [0, 4]): no elements"), "{stdout}");

    let float: Vec<&(String, Tensor)> =
        tensors.iter().filter(|(n, _)| n != "steps" && n != "empty").collect();
    let stored: usize = float.iter().map(|(_, t)| t.numel() * t.kind().elt_size_in_bytes()).sum();
    let numel: usize = float.iter().map(|(_, t)| t.numel()).sum();
    for algo in [
        "sparseloco",
        "demo",
        "demo-2bit",
        "demo-sign",
        "diloco-f32",
        "diloco-bf16",
        "diloco-int8",
        "streaming-int4",
        "streaming-fp4",
    ] {
        for (name, _) in &float {
            row(&stdout, algo, name);
        }
        let (bytes, sent, ratio, err) = numbers(row(&stdout, algo, "TOTAL"));
        assert_eq!(bytes, stored, "{algo}");
        assert!((ratio - bytes as f64 / sent as f64).abs() < 0.06, "{algo}: {ratio}");
        match algo {
            "diloco-f32" => assert_eq!((sent, err), (numel * 4, 0.0)),
            "diloco-bf16" => assert!(sent == numel * 2 && err > 0.0 && err < 4e-3, "{err}"),
            // The 256×512 and 64×128 matrices go as 8-bit codes, the small tensors as f32.
            // On Gaussian noise the error is mostly the ±3σ clip of the 0.27 % tail (≈ 0.02);
            // a broken decoder would be off by far more.
            "diloco-int8" => assert!(ratio > 3.0 && err > 0.005 && err < 0.03, "{ratio} {err}"),
            // Every value in 4 bits plus a scale per 128: about 7.5x; on Gaussian noise both
            // grids lose about a tenth of the norm (measured: 0.11 on a 1024x1024 tensor).
            "streaming-int4" | "streaming-fp4" => {
                assert!(
                    ratio > 6.0 && ratio < 8.0 && err > 0.03 && err < 0.2,
                    "{algo}: {ratio} {err}"
                )
            }
            // Sparse: far fewer bytes; on white noise most of the energy stays behind.
            _ => assert!(ratio > 10.0 && err > 0.3 && err < 1.0, "{algo}: {ratio} {err}"),
        }
    }
    // The summary repeats each total.
    let summary = stdout.lines().skip_while(|l| !l.starts_with("all tensors:"));
    assert_eq!(summary.filter(|l| l.starts_with("diloco-") || l.starts_with("demo")).count(), 6);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn out_holds_the_decoded_tensors_in_the_input_dtypes() {
    let dir = scratch("compress-out");
    let input = dir.join("grads.safetensors");
    let tensors = write_input(&input);
    let original: HashMap<String, Tensor> = tensors.into_iter().collect();
    let out = dir.join("decoded.safetensors");
    let read_out = || -> HashMap<String, Tensor> {
        Tensor::read_safetensors(&out).unwrap().into_iter().collect()
    };

    // f32 transport: every tensor comes back bit for bit, in its own dtype and shape.
    let (ok, _, stderr) = common::compress_to("diloco-f32", &input, &out);
    assert!(ok, "{stderr}");
    let decoded = read_out();
    assert_eq!(decoded.len(), original.len());
    for (name, t) in &original {
        let d = &decoded[name];
        assert_eq!((d.kind(), d.size()), (t.kind(), t.size()), "{name}");
        assert!(d.equal(t), "{name}");
    }

    // SparseLoCo: at most 64 of every 4096 values survive, and the file's error is the
    // printed one.
    let (ok, stdout, stderr) = common::compress_to("sparseloco", &input, &out);
    assert!(ok, "{stderr}");
    let decoded = read_out();
    let w = &decoded["w"];
    assert_eq!((w.kind(), w.size()), (Kind::Float, vec![256, 512]));
    let nonzero = w.reshape([-1, 4096]).ne(0.0).sum_dim_intlist(1, false, Kind::Int64);
    let per_chunk = Vec::<i64>::try_from(&nonzero).unwrap();
    assert_eq!(per_chunk.len(), 32);
    assert!(per_chunk.iter().all(|&n| n <= 64), "{per_chunk:?}");
    assert!(per_chunk.iter().sum::<i64>() > 32 * 60, "{per_chunk:?}");
    let (_, _, _, printed) = numbers(row(&stdout, "sparseloco", "w"));
    let measured = rel_error(&original["w"], w);
    assert!((measured - printed).abs() < 1e-4, "file {measured}, printed {printed}");
    // A bf16 tensor comes back as bf16; its error is the printed one up to bf16 rounding.
    let h = &decoded["h"];
    assert_eq!(h.kind(), Kind::BFloat16);
    let (_, _, _, printed) = numbers(row(&stdout, "sparseloco", "h"));
    assert!((rel_error(&original["h"], h) - printed).abs() < 1e-2);
    assert!(decoded["steps"].equal(&original["steps"]));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mistakes_are_named_and_leave_the_input_alone() {
    let dir = scratch("compress-mistakes");
    let input = dir.join("grads.safetensors");
    write_input(&input);
    let before = std::fs::read(&input).unwrap();
    let path = input.to_str().unwrap();

    let (ok, _, stderr) = meridian(&["compress", "--input", "/nonexistent/g.safetensors"]);
    assert!(!ok && stderr.contains("/nonexistent/g.safetensors"), "{stderr}");

    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!").unwrap();
    let (ok, _, stderr) = meridian(&["compress", "--input", garbage.to_str().unwrap()]);
    assert!(!ok && stderr.contains("not a safetensors file"), "{stderr}");

    for out in [path.to_owned(), format!("{}/./grads.safetensors", dir.display())] {
        let (ok, _, stderr) =
            meridian(&["compress", "--algo", "demo", "--input", path, "--out", &out]);
        assert!(!ok && stderr.contains("is the input file"), "{stderr}");
    }
    let (ok, _, stderr) = meridian(&["compress", "--algo", "zstd", "--input", path]);
    assert!(!ok && stderr.contains("zstd"), "{stderr}");
    let out = dir.join("d.safetensors");
    let out = out.to_str().unwrap();
    let (ok, _, stderr) =
        meridian(&["compress", "--algo", "demo,sparseloco", "--input", path, "--out", out]);
    assert!(!ok && stderr.contains("exactly one --algo"), "{stderr}");
    assert_eq!(std::fs::read(&input).unwrap(), before);

    let nan = dir.join("nan.safetensors");
    let bad = Tensor::from_slice(&[1.0f32, f32::NAN, 3.0]);
    Tensor::write_safetensors(&[("layer.bias", &bad)], &nan).unwrap();
    let (ok, _, stderr) = meridian(&["compress", "--input", nan.to_str().unwrap()]);
    assert!(!ok && stderr.contains("layer.bias") && stderr.contains("NaN"), "{stderr}");
    // Nothing half-written is left behind.
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["garbage.safetensors", "grads.safetensors", "nan.safetensors"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_demo_runs_the_named_algorithms_without_input() {
    let (ok, stdout, stderr) = meridian(&[
        "compress",
        "--width",
        "32",
        "--layers",
        "1",
        "--inner-steps",
        "2",
        "--algo",
        "sparseloco,diloco-int8",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("sparseloco")), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("diloco-int8")), "{stdout}");
    assert!(!stdout.lines().any(|l| l.starts_with("demo")), "{stdout}");
}

#[test]
fn an_algorithm_that_cannot_take_the_input_does_not_hide_the_others() {
    let dir = scratch("compress-too-large");
    let input = dir.join("huge.safetensors");
    // Finite, but far beyond what a DCT tile can sum in f32.
    let mut values = vec![0.5f32; 64 * 64];
    values[0] = 3e38;
    values[1] = -3e38;
    let tensors = vec![("w".to_string(), Tensor::from_slice(&values).reshape([64, 64]))];
    or_fail(Tensor::write_safetensors(&tensors, &input), "input file");
    let (ok, stdout, stderr) = meridian(&["compress", "--input", input.to_str().unwrap()]);
    assert!(!ok, "{stdout}\n{stderr}");
    // The DCT pipelines say why they failed; the algorithms after them still ran.
    assert!(
        stdout.contains("demo: failed") && stdout.contains("too large for the DCT"),
        "{stdout}"
    );
    for later in ["demo-sign", "diloco-f32", "diloco-int8"] {
        assert!(stdout.contains(&format!("{later}: ")), "{later} did not run:\n{stdout}");
    }
    assert!(stderr.contains("could not compress") && stderr.contains("demo"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
