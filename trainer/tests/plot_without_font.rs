//! A machine without any usable font still gets both plots: the SVG with its text (the
//! viewer renders it), the PNG without. In its own test binary because the font is chosen
//! once per process.

use meridian_trainer::report::plot::{write_loss_plot, Curve, CurvePoint, XAxis};

#[test]
fn without_a_font_the_png_has_no_text_and_the_svg_keeps_it() {
    std::env::set_var("MERIDIAN_PLOT_FONT", "/nonexistent/font.ttf");
    let dir = std::env::temp_dir().join(format!("meridian-plot-nofont-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let points = (0..5)
        .map(|i| CurvePoint {
            step: i * 10,
            tokens: 0,
            bytes_per_worker: 1e3 * (i + 1) as f64,
            seconds: i as f64,
            val_loss: 3.0 - i as f64 * 0.1,
        })
        .collect();
    let curves = [Curve { label: "DeMo".into(), points }];
    let written = write_loss_plot(&dir, "loss", "No font here", XAxis::Steps, &curves).unwrap();
    let svg = std::fs::read_to_string(&written[0]).unwrap();
    assert!(svg.contains("DeMo") && svg.contains("No font here"));
    let png = std::fs::read(&written[1]).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    std::fs::remove_dir_all(&dir).unwrap();
}
