//! `meridian._native`: the Python package's bridge to Meridian's Rust crates. Glue only:
//! the worker and coordinator logic lives in `meridian_trainer::embedded`, shared with the
//! `meridian` binary. Tensors cross without a copy (pyo3-tch hands over the same storage),
//! and every wait releases the GIL and answers Ctrl-C within a fraction of a second.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::anyhow;
use meridian_optimizer::Algorithm;
use meridian_trainer::embedded::coordinator::{CoordinatorSpec, EmbeddedCoordinator};
use meridian_trainer::embedded::script_step::{ScriptOptimizer, ScriptState};
use meridian_trainer::embedded::shard::{balanced_bounds, ShardLayout};
use meridian_trainer::embedded::site::SiteChannel;
use meridian_trainer::embedded::worker::{shardable, EmbeddedWorker, JoinSpec, SiteSpec};
use meridian_trainer::networked::drive::AppliedRound;
use pyo3::create_exception;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use pyo3_tch::PyTensor;

create_exception!(
    meridian,
    MeridianError,
    PyRuntimeError,
    "A Meridian run refused, lost or could not take a step; the message says why."
);

/// The Python exception a callback raised (or Ctrl-C), kept while the Rust error it caused
/// unwinds, so the caller sees the original exception rather than a copy of its text.
type ErrorSlot = Rc<RefCell<Option<PyErr>>>;

fn raise(e: anyhow::Error, slot: &ErrorSlot) -> PyErr {
    match slot.borrow_mut().take() {
        Some(original) => original,
        None => MeridianError::new_err(format!("{e:#}")),
    }
}

/// Runs `f` with the GIL released. `f` runs on this very thread (`allow_threads` never
/// moves it), so values that are not `Send` never cross a thread.
fn released<T>(py: Python<'_>, f: impl FnOnce() -> T) -> T {
    struct SameThread<T>(T);
    // SAFETY: see above; the wrapper only satisfies `allow_threads`' bound.
    unsafe impl<T> Send for SameThread<T> {}
    let f = SameThread(f);
    let out = py.allow_threads(move || {
        let f = f;
        SameThread((f.0)())
    });
    out.0
}

/// A Python object Rust calls back, with the GIL; an exception it raises is kept in `slot`
/// (for the caller to re-raise as it was) and becomes an error naming `what`.
struct Callback {
    object: PyObject,
    slot: ErrorSlot,
    what: &'static str,
}

impl Callback {
    fn call<T>(&self, f: impl FnOnce(Python<'_>, &PyObject) -> PyResult<T>) -> anyhow::Result<T> {
        Python::with_gil(|py| f(py, &self.object)).map_err(|e| {
            let text = e.to_string();
            *self.slot.borrow_mut() = Some(e);
            anyhow!("{} raised {text}", self.what)
        })
    }
}

/// The script's optimizer, reached through a Python object with `step()`,
/// `state_parts()` and `load_state_parts(meta, tensors)` (see `meridian/optimizer.py`).
struct PyScriptOptimizer(Callback);

impl PyScriptOptimizer {
    fn call<T>(&self, f: impl FnOnce(Python<'_>, &PyObject) -> PyResult<T>) -> anyhow::Result<T> {
        self.0.call(f)
    }
}

impl ScriptOptimizer for PyScriptOptimizer {
    fn step(&mut self) -> anyhow::Result<()> {
        self.call(|py, b| b.call_method0(py, "step").map(drop))
    }

    fn state(&self) -> anyhow::Result<ScriptState> {
        self.call(|py, b| {
            let (meta, tensors): (Bound<'_, PyBytes>, Vec<PyTensor>) =
                b.call_method0(py, "state_parts")?.extract(py)?;
            // One copy of the (small) structure; the tensors are the optimizer's own.
            Ok(ScriptState {
                meta: meta.as_bytes().to_vec(),
                tensors: tensors.into_iter().map(|t| t.0).collect(),
            })
        })
    }

    fn load_state(&mut self, state: ScriptState) -> anyhow::Result<()> {
        self.call(|py, b| {
            let tensors: Vec<PyTensor> = state.tensors.into_iter().map(PyTensor).collect();
            b.call_method1(py, "load_state_parts", (PyBytes::new(py, &state.meta), tensors))
                .map(drop)
        })
    }
}

/// A site's process group, reached through a Python object with `leads`,
/// `broadcast(message | None) -> bytes` and `gather(message) -> list | None` (see
/// `meridian/site.py`).
struct PySiteChannel(Callback);

impl PySiteChannel {
    fn call<T>(&self, f: impl FnOnce(Python<'_>, &PyObject) -> PyResult<T>) -> anyhow::Result<T> {
        self.0.call(f)
    }
}

impl SiteChannel for PySiteChannel {
    fn broadcast(&mut self, message: Option<Vec<u8>>) -> anyhow::Result<Vec<u8>> {
        self.call(|py, c| {
            let message = message.map(|m| PyBytes::new(py, &m));
            c.call_method1(py, "broadcast", (message,))?.extract::<Vec<u8>>(py)
        })
    }

    fn gather(&mut self, message: Vec<u8>) -> anyhow::Result<Option<Vec<Vec<u8>>>> {
        self.call(|py, c| {
            c.call_method1(py, "gather", (PyBytes::new(py, &message),))?
                .extract::<Option<Vec<Vec<u8>>>>(py)
        })
    }
}

/// A sharded site's layout as Python gives it: the whole model's names and shapes
/// (canonical order), each rank's first tensor (and the count at the end), this rank.
type ShardArg = (Vec<String>, Vec<Vec<usize>>, Vec<usize>, usize);

/// One worker of a Meridian run inside this Python process.
#[pyclass(unsendable, module = "meridian._native")]
struct Worker {
    inner: Option<EmbeddedWorker>,
    slot: ErrorSlot,
}

impl Worker {
    fn get(&mut self) -> PyResult<&mut EmbeddedWorker> {
        self.inner.as_mut().ok_or_else(|| MeridianError::new_err("this worker is closed"))
    }
}

fn round_dict<'py>(py: Python<'py>, r: &AppliedRound) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("round", r.exchange.round)?;
    d.set_item("replayed", r.replayed)?;
    d.set_item("sent", r.exchange.sent)?;
    d.set_item("received", r.exchange.received)?;
    d.set_item("applied", r.exchange.applied.clone())?;
    let rejected: Vec<(u32, String)> =
        r.exchange.rejected.iter().map(|(m, why)| (*m, why.to_string())).collect();
    d.set_item("rejected", rejected)?;
    d.set_item("hash", format!("{:016x}", r.exchange.hash))?;
    Ok(d)
}

#[pymethods]
impl Worker {
    #[new]
    #[pyo3(signature = (join, name, params, bridge, algorithm, sets, inner_steps=None, total_steps=None, connect_timeout=60.0, reconnect_timeout=600.0, site=None, shard=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        join: String,
        name: String,
        params: Vec<(String, PyTensor)>,
        bridge: PyObject,
        algorithm: &str,
        sets: Vec<String>,
        inner_steps: Option<u64>,
        total_steps: Option<u64>,
        connect_timeout: f64,
        reconnect_timeout: f64,
        site: Option<PyObject>,
        shard: Option<ShardArg>,
    ) -> PyResult<Self> {
        let slot = ErrorSlot::default();
        let algorithm: Algorithm = algorithm.parse().map_err(MeridianError::new_err)?;
        let seconds = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v < 1e9 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(MeridianError::new_err(format!(
                    "{name} {v}: give a positive number of seconds"
                )))
            }
        };
        let connect_timeout = seconds("connect_timeout", connect_timeout)?;
        let reconnect_timeout = seconds("reconnect_timeout", reconnect_timeout)?;
        let spec = JoinSpec {
            join,
            name,
            algorithm,
            sets,
            inner_steps,
            total_steps,
            connect_timeout,
            reconnect_timeout,
        };
        let site = match (site, shard) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(MeridianError::new_err("shard given without a site channel"))
            }
            (Some(channel), shard) => {
                let leads = Python::with_gil(|py| channel.getattr(py, "leads")?.extract(py))?;
                let shard = match shard {
                    None => None,
                    Some((names, shapes, bounds, rank)) => {
                        let layout = ShardLayout::new(shapes, bounds, rank)
                            .map_err(|e| MeridianError::new_err(format!("{e:#}")))?;
                        Some((names, layout))
                    }
                };
                let what = "the site's process group";
                let channel =
                    Box::new(PySiteChannel(Callback { object: channel, slot: slot.clone(), what }));
                Some(SiteSpec { leads, channel, shard })
            }
        };
        let params = params.into_iter().map(|(n, t)| (n, t.0)).collect();
        let what = "the script's optimizer";
        let inner =
            Box::new(PyScriptOptimizer(Callback { object: bridge, slot: slot.clone(), what }));
        let interrupt_slot = slot.clone();
        let interrupt = Box::new(move || {
            Python::with_gil(|py| py.check_signals()).map_err(|e| {
                *interrupt_slot.borrow_mut() = Some(e);
                anyhow!("interrupted")
            })
        });
        let worker = EmbeddedWorker::new(spec, params, inner, interrupt, site)
            .map_err(|e| raise(e, &slot))?;
        Ok(Self { inner: Some(worker), slot })
    }

    /// Joins the run now (the first step does otherwise).
    fn join(&mut self, py: Python<'_>) -> PyResult<()> {
        let slot = self.slot.clone();
        let w = self.get()?;
        released(py, || w.join()).map_err(|e| raise(e, &slot))
    }

    /// Whether this rank holds part of the model only (a sharded site).
    #[getter]
    fn holds_part(&mut self) -> PyResult<bool> {
        Ok(self.get()?.holds_part())
    }

    /// This worker's member id (joins first).
    #[getter]
    fn member(&mut self, py: Python<'_>) -> PyResult<u32> {
        let slot = self.slot.clone();
        let w = self.get()?;
        released(py, || w.member()).map_err(|e| raise(e, &slot))
    }

    /// The number of workers the run was started for (joins first).
    #[getter]
    fn expected_workers(&mut self, py: Python<'_>) -> PyResult<u32> {
        let slot = self.slot.clone();
        let w = self.get()?;
        released(py, || w.expected_workers()).map_err(|e| raise(e, &slot))
    }

    /// Whether it has joined.
    #[getter]
    fn joined(&mut self) -> PyResult<bool> {
        Ok(self.get()?.joined())
    }

    /// One inner step after the script's backward pass; the rounds it applied.
    #[pyo3(signature = (loss=None))]
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        loss: Option<f64>,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let slot = self.slot.clone();
        let w = self.get()?;
        let applied = released(py, || w.step(loss)).map_err(|e| raise(e, &slot))?;
        applied.iter().map(|r| round_dict(py, r)).collect()
    }

    /// Counters: steps, rounds, bytes, stragglers, rejections, latency.
    fn stats<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.get()?.stats().clone();
        let d = PyDict::new(py);
        d.set_item("steps", s.steps)?;
        d.set_item("rounds", s.rounds)?;
        d.set_item("rounds_replayed", s.rounds_replayed)?;
        d.set_item("bytes_sent", s.bytes_sent)?;
        d.set_item("bytes_received", s.bytes_received)?;
        d.set_item("straggled", s.straggled)?;
        d.set_item("rejected", s.rejected)?;
        d.set_item("last_rejection", s.last_rejection)?;
        d.set_item("last_round_seconds", s.last_round_seconds)?;
        d.set_item("waiting_seconds", s.waiting_seconds)?;
        d.set_item("rtt_ms", s.rtt_ms)?;
        d.set_item("states_taken", s.states_taken)?;
        d.set_item("outer_elements", s.outer_elements)?;
        Ok(d)
    }

    /// The replica hash (hex) every worker shares after the same round (on a rank of a
    /// sharded site, a collective of the site's ranks).
    fn consensus_hash(&mut self, py: Python<'_>) -> PyResult<String> {
        let slot = self.slot.clone();
        let w = self.get()?;
        let h = released(py, || w.consensus_hash()).map_err(|e| raise(e, &slot))?;
        Ok(format!("{h:016x}"))
    }

    /// (inner steps, rounds) done.
    fn progress(&mut self) -> PyResult<(u64, u64)> {
        Ok(self.get()?.progress())
    }

    /// The whole state as bytes (parameters, outer and inner optimizer, counters).
    fn state<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let slot = self.slot.clone();
        let bytes = self.get()?.state().map_err(|e| raise(e, &slot))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Replaces the state with bytes from `state()`, before the first step.
    fn load_state(&mut self, bytes: Vec<u8>) -> PyResult<()> {
        let slot = self.slot.clone();
        self.get()?.load_state(&bytes).map_err(|e| raise(e, &slot))
    }

    /// Leaves the run; the worker cannot be used afterwards.
    fn close(&mut self, py: Python<'_>) -> PyResult<()> {
        let slot = self.slot.clone();
        match self.inner.take() {
            Some(w) => released(py, || w.close()).map_err(|e| raise(e, &slot)),
            None => Ok(()),
        }
    }
}

/// A coordinator on a background thread of this process.
#[pyclass(unsendable, module = "meridian._native")]
struct Coordinator {
    inner: EmbeddedCoordinator,
}

#[pymethods]
impl Coordinator {
    #[new]
    #[pyo3(signature = (listen, min_workers=1, topology="relay", deadline_ms=None, state_dir=None))]
    fn new(
        py: Python<'_>,
        listen: &str,
        min_workers: u32,
        topology: &str,
        deadline_ms: Option<u64>,
        state_dir: Option<PathBuf>,
    ) -> PyResult<Self> {
        let listen = listen.parse().map_err(|e| {
            MeridianError::new_err(format!(
                "listen {listen:?}: {e}; give an IP:port such as 127.0.0.1:0"
            ))
        })?;
        let spec = CoordinatorSpec {
            listen,
            topology: topology.to_string(),
            min_workers,
            deadline: deadline_ms.map(Duration::from_millis),
            state_dir,
        };
        let inner = released(py, || EmbeddedCoordinator::start(&spec))
            .map_err(|e| MeridianError::new_err(format!("{e:#}")))?;
        Ok(Self { inner })
    }

    /// The join string (it holds the run's secret).
    #[getter]
    fn join(&self) -> String {
        self.inner.join_string().to_string()
    }

    /// The address it listens on.
    #[getter]
    fn address(&self) -> String {
        self.inner.local_addr().to_string()
    }

    /// Stops it.
    fn close(&mut self, py: Python<'_>) -> PyResult<()> {
        let inner = &mut self.inner;
        released(py, || inner.close()).map_err(|e| MeridianError::new_err(format!("{e:#}")))
    }
}

/// Sends Meridian's logs to stderr at `level` (`warn` by default; `MERIDIAN_LOG` or
/// `RUST_LOG` override it). Called once by `import meridian`.
#[pyfunction]
#[pyo3(signature = (level="warn"))]
fn init_logging(level: &str) {
    let filter = std::env::var("MERIDIAN_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| level.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Where each of `ranks` ranks' run of tensors (of `numels` elements, canonical order)
/// starts, balanced by elements, with the count at the end; `None` with fewer tensors than
/// ranks.
#[pyfunction]
fn shard_bounds(numels: Vec<usize>, ranks: usize) -> Option<Vec<usize>> {
    balanced_bounds(&numels, ranks)
}

/// Why a site running `algorithm` with `sets` on a model of `tensors` tensors cannot shard
/// its outer state, or `None`.
#[pyfunction]
fn shard_refusal(algorithm: &str, sets: Vec<String>, tensors: usize) -> PyResult<Option<String>> {
    let algorithm: Algorithm = algorithm.parse().map_err(MeridianError::new_err)?;
    Ok(shardable(algorithm, &sets, tensors).err().map(|e| format!("{e:#}")))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Worker>()?;
    m.add_class::<Coordinator>()?;
    m.add_function(wrap_pyfunction!(init_logging, m)?)?;
    m.add_function(wrap_pyfunction!(shard_bounds, m)?)?;
    m.add_function(wrap_pyfunction!(shard_refusal, m)?)?;
    m.add("MeridianError", m.py().get_type::<MeridianError>())?;
    Ok(())
}
