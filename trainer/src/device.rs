//! `--device`: where each worker's model, data batches, inner and outer optimizer state
//! live. On a GPU the compression runs on the CUDA kernels (`meridian_kernels::cuda`) in
//! place on LibTorch's memory; payloads, checkpoints and catch-up state pass through the
//! host.

use anyhow::{bail, Result};
use tch::Device;

/// What `--device` names, before it is checked against the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// Host memory and the CPU kernels (the default: every machine has one, and runs are
    /// bit-reproducible across machines).
    #[default]
    Cpu,
    /// CUDA device `N` (`cuda` is `cuda:0`).
    Cuda(usize),
    /// The first CUDA device when LibTorch sees one, else the CPU.
    Auto,
}

impl std::str::FromStr for DeviceChoice {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            "auto" => Ok(Self::Auto),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => bail!("unknown device {s:?}; choose cpu, cuda, cuda:N or auto"),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl DeviceChoice {
    /// The device to train on, given the `count` CUDA devices LibTorch sees; `why_none`
    /// says why there are none, for the error.
    pub fn resolve_with(self, count: usize, why_none: &dyn Fn() -> String) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto if count > 0 => Ok(Device::Cuda(0)),
            Self::Auto => {
                tracing::info!(
                    "--device auto: no CUDA device ({}); training on the CPU",
                    why_none()
                );
                Ok(Device::Cpu)
            }
            Self::Cuda(_) if count == 0 => bail!(
                "--device {self}: no CUDA device is usable here ({}); use --device cpu",
                why_none()
            ),
            Self::Cuda(n) if n >= count => bail!(
                "--device {self}: this machine has {count} CUDA device{} (cuda:0 to cuda:{})",
                if count == 1 { "" } else { "s" },
                count - 1
            ),
            Self::Cuda(n) => Ok(Device::Cuda(n)),
        }
    }

    /// [`DeviceChoice::resolve_with`] on this machine, as LibTorch sees it.
    pub fn resolve(self) -> Result<Device> {
        if self == Self::Cpu {
            return Ok(Device::Cpu);
        }
        let count = meridian_optimizer::device::cuda_device_count();
        self.resolve_with(count, &|| match meridian_kernels::cuda::device_count() {
            // The driver sees devices that LibTorch does not: a CPU-only PyTorch build.
            Ok(n) => format!("the driver sees {n} but this LibTorch was built without CUDA"),
            Err(e) => e.to_string(),
        })
    }
}

/// A device as `--device` spells it: `cpu` or `cuda:N`.
pub fn name(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        Device::Cpu => "cpu".to_owned(),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_form() {
        for (s, want) in [
            ("cpu", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
            ("auto", DeviceChoice::Auto),
        ] {
            let got: DeviceChoice = s.parse().unwrap();
            assert_eq!(got, want);
            assert_eq!(got.to_string().parse::<DeviceChoice>().unwrap(), want);
        }
        assert_eq!(name(Device::Cpu), "cpu");
        assert_eq!(name(Device::Cuda(1)), "cuda:1");
        for bad in ["", "tpu", "cuda:", "cuda:x", "cuda:-1", "CPU "] {
            let err = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(err.contains("choose cpu, cuda, cuda:N or auto"), "{bad}: {err}");
        }
    }

    #[test]
    fn resolves_against_the_devices_present() {
        let why = || "no CUDA driver".to_string();
        assert_eq!(DeviceChoice::Cpu.resolve_with(2, &why).unwrap(), Device::Cpu);
        assert_eq!(DeviceChoice::Auto.resolve_with(0, &why).unwrap(), Device::Cpu);
        assert_eq!(DeviceChoice::Auto.resolve_with(2, &why).unwrap(), Device::Cuda(0));
        assert_eq!(DeviceChoice::Cuda(1).resolve_with(2, &why).unwrap(), Device::Cuda(1));
        let err = DeviceChoice::Cuda(0).resolve_with(0, &why).unwrap_err().to_string();
        assert!(err.contains("no CUDA device is usable here (no CUDA driver)"), "{err}");
        let err = DeviceChoice::Cuda(2).resolve_with(2, &why).unwrap_err().to_string();
        assert!(err.contains("has 2 CUDA devices (cuda:0 to cuda:1)"), "{err}");
    }
}
