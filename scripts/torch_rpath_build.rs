// Shared build script of the crates that link LibTorch (included by their build.rs).
//
// torch-sys reports LibTorch's library directory to crates that depend on it directly as
// DEP_TCH_LIBTORCH_LIB; embedding it as an rpath lets the binaries, tests and benches of
// that crate find libtorch*.so without LD_LIBRARY_PATH. The folder is also recorded as
// MERIDIAN_LIBTORCH_LIB, where `meridian_optimizer::device` finds libtorch_cuda.so to load
// on demand (the linker drops it from the binaries, which name none of its symbols).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-env=MERIDIAN_LIBTORCH_LIB={dir}");
    }
}
