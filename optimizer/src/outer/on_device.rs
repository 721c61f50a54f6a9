//! Every algorithm end to end on one device: the CPU always, the first GPU when one is
//! present. On a GPU the parameters, momenta and error buffers stay on the device, the
//! compression runs on the CUDA kernels, and only payloads and state cross to the host.
#![cfg(test)]

use tch::Device;

use super::OptimizerState;
use crate::config::AlgoConfig;
use crate::testing::{run_checked, toy_harness};
use crate::toy::ToyConfig;
use crate::Algorithm;

/// Settings that give every algorithm several exchanges within a short run.
fn short_rounds(algorithm: Algorithm) -> AlgoConfig {
    let set: &[(&str, &str)] = match algorithm {
        Algorithm::Ddp => &[],
        Algorithm::Demo => &[("lr", "5e-3")],
        Algorithm::Streaming => &[("inner_steps", "8"), ("overlap", "1")],
        Algorithm::Diloco | Algorithm::Sparseloco => &[("inner_steps", "5")],
    };
    let set: Vec<(String, String)> =
        set.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    AlgoConfig::from_parts(algorithm, toml::Table::new(), &set).unwrap()
}

fn every_algorithm_trains_on(device: Device) {
    for algorithm in Algorithm::ALL {
        let config = short_rounds(algorithm);
        let toy = ToyConfig { hidden: 128, device, ..ToyConfig::default() };
        let mut h = toy_harness(3, toy, |_, p| config.build(p));
        // Every exchange must leave bit-identical replicas (checked inside).
        let (exchanges, before, after) = run_checked(&mut h, 40);
        assert!(exchanges.len() >= 4, "{algorithm}: {} exchanges", exchanges.len());
        assert!(after < before, "{algorithm} on {device:?}: held-out loss {before} -> {after}");
        // The state stays on the device until it is encoded (to be checkpointed or sent),
        // and comes back onto the device.
        let w = &h.workers()[0];
        assert_eq!(w.params.device(), device);
        let state = w.outer.state().unwrap();
        assert!(state.tensors.values().all(|t| t.dim() == 0 || t.device() == device));
        let bytes = state.to_bytes().unwrap();
        let mut fresh = config.build(&w.params).unwrap();
        fresh.load_state(&w.params, &OptimizerState::from_bytes(&bytes).unwrap()).unwrap();
        assert_eq!(fresh.state().unwrap().to_bytes().unwrap(), bytes, "{algorithm}");
    }
}

#[test]
fn every_algorithm_trains_on_the_cpu() {
    every_algorithm_trains_on(Device::Cpu);
}

#[test]
fn every_algorithm_trains_on_a_cuda_device() {
    if !crate::device::cuda_is_available() {
        println!("skipped: no CUDA device");
        return;
    }
    every_algorithm_trains_on(Device::Cuda(0));
}
