//! Loss plots as `meridian train` writes them: both files, every label, the log bytes axis,
//! and the inputs that cannot be drawn.

use std::path::{Path, PathBuf};

use meridian_trainer::report::plot::{write_loss_plot, Curve, CurvePoint, XAxis, SIZE};

/// A fresh directory for one test, removed by the test when it passes.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meridian-plot-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    or_fail(std::fs::create_dir_all(&dir), "scratch directory");
    dir
}

/// `r`'s value; a failing helper fails the test that called it.
fn or_fail<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A decaying loss curve whose bytes grow geometrically from `first_bytes`.
fn curve(label: &str, n: u64, first_bytes: f64, growth: f64) -> Curve {
    let points = (0..n)
        .map(|i| CurvePoint {
            step: i * 50,
            tokens: i * 50 * 4096,
            bytes_per_worker: first_bytes * growth.powi(i as i32),
            seconds: i as f64 * 1.5,
            val_loss: 4.0 / (1.0 + i as f64 * 0.3) + 1.0,
        })
        .collect();
    Curve { label: label.to_owned(), points }
}

/// Width and height from a PNG's IHDR chunk, after checking the signature.
fn png_size(path: &Path) -> (u32, u32) {
    let b = or_fail(std::fs::read(path), "png");
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    assert_eq!(&b[12..16], b"IHDR");
    let be = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    (be(16), be(20))
}

#[test]
fn writes_an_svg_and_a_png_with_every_label() {
    let dir = scratch("labels");
    let curves = [
        curve("DiLoCo", 12, 0.0, 1.0),
        curve("SparseLoCo & friends", 12, 0.0, 1.0),
        curve("DDP", 1, 0.0, 1.0),
    ];
    for (x, stem) in [(XAxis::Steps, "steps"), (XAxis::Seconds, "seconds")] {
        let written = write_loss_plot(&dir, stem, "Loss <vs> time", x, &curves).unwrap();
        assert_eq!(written, [dir.join(format!("{stem}.svg")), dir.join(format!("{stem}.png"))]);
        let svg = std::fs::read_to_string(&written[0]).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for text in ["DiLoCo", "SparseLoCo &amp; friends", "DDP", "Loss &lt;vs&gt; time"] {
            assert!(svg.contains(text), "{stem}.svg lacks {text}");
        }
        assert!(svg.contains("validation loss"));
        assert_eq!(png_size(&written[1]), SIZE);
    }
    // Nothing but the four plots: no temporaries left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bytes_go_on_a_log_axis_from_a_kilobyte_to_a_gigabyte() {
    let dir = scratch("log");
    // 1e3 · 10^(6·i/12): one curve spans 1 kB to 1 GB; the first point (0 bytes, before
    // any exchange) cannot sit on a log axis and is dropped.
    let mut wide = curve("SparseLoCo", 13, 1e3, 10f64.powf(0.5));
    wide.points[0].bytes_per_worker = 0.0;
    let narrow = curve("DiLoCo", 4, 5e8, 2.0);
    let written =
        write_loss_plot(&dir, "bytes", "Loss vs bytes", XAxis::BytesPerWorker, &[wide, narrow])
            .unwrap();
    let svg = std::fs::read_to_string(&written[0]).unwrap();
    for tick in ["10 kB", "1 MB", "100 MB", "bytes sent per worker (log scale)"] {
        assert!(svg.contains(tick), "no {tick:?} on the axis");
    }
    assert_eq!(png_size(&written[1]), SIZE);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn odd_inputs_are_drawn_or_refused_clearly() {
    let dir = scratch("odd");
    // One point, a NaN loss, all losses equal, and a curve with nothing drawable.
    let mut flat = curve("flat", 5, 1e3, 2.0);
    flat.points.iter_mut().for_each(|p| p.val_loss = 2.0);
    flat.points[2].val_loss = f64::NAN;
    let single = curve("single", 1, 1e4, 1.0);
    let mut nothing = curve("nothing", 3, 1e3, 1.0);
    nothing.points.iter_mut().for_each(|p| p.val_loss = f64::INFINITY);
    let written =
        write_loss_plot(&dir, "odd", "odd", XAxis::BytesPerWorker, &[flat, single, nothing])
            .unwrap();
    let svg = std::fs::read_to_string(&written[0]).unwrap();
    assert!(svg.contains("nothing (no data)"));

    let err = write_loss_plot(&dir, "empty", "Empty run", XAxis::Steps, &[]).unwrap_err();
    assert!(err.to_string().contains("nothing to plot"), "{err}");
    let zero_bytes = curve("DDP", 1, 0.0, 1.0);
    let err = write_loss_plot(
        &dir,
        "zero",
        "t",
        XAxis::BytesPerWorker,
        std::slice::from_ref(&zero_bytes),
    )
    .unwrap_err();
    assert!(err.to_string().contains("positive byte count"), "{err}");
    assert!(write_loss_plot(&dir, "../escape", "t", XAxis::Steps, &[zero_bytes]).is_err());
    assert!(write_loss_plot(
        &dir.join("missing"),
        "m",
        "t",
        XAxis::Steps,
        &[curve("a", 2, 0.0, 1.0)]
    )
    .is_err());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn curves_round_trip_through_json() {
    let c = curve("DeMo", 3, 1e3, 10.0);
    let json = serde_json::to_string(&c).unwrap();
    let back: Curve = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c);
}
