use super::source::{compile, module_source, SOURCES};

const ARCHES: [&str; 2] = ["sm_80", "sm_90"];

#[test]
fn every_kernel_source_compiles_for_sm80_and_sm90_without_warnings() {
    for arch in ARCHES {
        for (name, src) in SOURCES {
            let out = compile(name, src, arch).unwrap_or_else(|e| panic!("{name} {arch}: {e}"));
            assert!(out.log.is_empty(), "{name} for {arch}: NVRTC diagnostics:\n{}", out.log);
            assert!(!out.image.is_empty(), "{name} for {arch}: empty image");
        }
        let out = compile("module", &module_source(), arch)
            .unwrap_or_else(|e| panic!("module {arch}: {e}"));
        assert!(out.log.is_empty(), "module for {arch}: NVRTC diagnostics:\n{}", out.log);
    }
}

#[test]
fn a_compile_error_and_a_warning_are_both_caught() {
    // The compile test above relies on errors failing and warnings showing in the log.
    let err = compile("broken.cu", "extern \"C\" __global__ void k() { undeclared(); }", "sm_80");
    assert!(err.is_err());
    let warned =
        compile("warn.cu", "extern \"C\" __global__ void k(int* p) { int x; p[0] = x; }", "sm_80")
            .unwrap();
    assert!(!warned.log.is_empty(), "expected a warning for an uninitialised read");
}
