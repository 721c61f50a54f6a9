//! Embeds LibTorch's library directory as an rpath (see scripts/torch_rpath_build.rs).
include!("../scripts/torch_rpath_build.rs");
