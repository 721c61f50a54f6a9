//! Links the extension against LibTorch with an rpath to its folder. Cargo does not forward
//! a dependency's `rustc-link-arg` to a cdylib, so torch-sys's own link lines stop short
//! of this module; without them the extension loads only after `import torch` happened to
//! load LibTorch globally, and fails to link where the linker drops unused libraries.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-link-search=native={dir}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-ltorch_cpu");
        println!("cargo:rustc-link-arg=-lc10");
        println!("cargo:rustc-link-arg=-ltorch_python");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
