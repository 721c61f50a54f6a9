//! A model exported from PyTorch with `examples/export_torchscript.py` loads, trains and
//! shares its parameters with Meridian; modules that break the contract fail at load.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use meridian_trainer::model::torchscript::TorchScriptModel;
use meridian_trainer::model::{parameter_count, LanguageModel};
use tch::{Device, Kind, Tensor};

/// Modules that each break one part of the contract, or test one allowance, saved by name
/// into the directory given as the first argument.
const MODULES: &str = r#"
import sys, torch
import torch.nn as nn
import torch.nn.functional as F

class Logits(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(64, 64)
    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.emb(tokens)

class Pair(Logits):
    def forward(self, tokens: torch.Tensor, targets: torch.Tensor):
        logits = self.emb(tokens)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten()), logits

class Detached(Logits):
    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.emb(tokens).flatten(0, 1), targets.flatten()).detach()

class OneArgument(Logits):
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.emb(tokens).mean()

class NoForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(64, 64)
    @torch.jit.export
    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.emb(tokens).flatten(0, 1), targets.flatten())

class NoParameters(nn.Module):
    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.zeros([]) + 5.5

class Frozen(nn.Module):
    """No context()/vocab(); a frozen embedding under a trained head."""
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 64).requires_grad_(False)
        self.head = nn.Linear(64, 16)
    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.head(self.emb(tokens)).flatten(0, 1), targets.flatten())

class Mode(nn.Module):
    """Its loss says which mode it ran in: 1 training, 0 evaluating."""
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(64))
    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.w.sum() + (1.0 if self.training else 0.0)

class NotFinite(Mode):
    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.w.sum() + float("nan")

torch.manual_seed(0)
classes = [Logits, Pair, Detached, OneArgument, NoForward, NoParameters, Frozen, Mode, NotFinite]
for cls in classes:
    torch.jit.script(cls()).save(f"{sys.argv[1]}/{cls.__name__.lower()}.pt")
torch.jit.script(Mode().double()).save(f"{sys.argv[1]}/double.pt")
"#;

/// The exported example and the contract-breaking modules, made once per test run.
struct Fixture {
    dir: PathBuf,
    model: PathBuf,
    /// Parameter tensors and scalar parameters as PyTorch counts them.
    python_tensors: usize,
    python_values: i64,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let python = root.join(".venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing; `make setup` creates the PyTorch virtualenv",
            python.display()
        );
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
        remove_stale(scratch);
        let dir = scratch.join(format!("torchscript-{}", std::process::id()));
        ok(std::fs::create_dir_all(&dir), "creating the scratch directory");
        let model = dir.join("model.pt");
        let export = root.join("examples/export_torchscript.py");
        let stdout = run(Command::new(&python).arg(&export).arg("--out").arg(&model));
        // torch.jit.script reads class sources back from their file, so not `python -c`.
        let modules = dir.join("modules.py");
        ok(std::fs::write(&modules, MODULES), "writing modules.py");
        run(Command::new(&python).arg(&modules).arg(&dir));
        // "wrote PATH: 28 parameter tensors, 120576 parameters, context 64, vocab 256"
        let count = |unit: &str| -> i64 {
            let before = stdout.split(unit).next().unwrap_or_default();
            let number = before.split_whitespace().last().unwrap_or_default();
            ok(number.parse(), &format!("reading {unit:?} from {stdout:?}"))
        };
        Fixture {
            dir,
            model,
            python_tensors: ok(count(" parameter tensors").try_into(), "tensor count"),
            python_values: count(" parameters,"),
        }
    })
}

/// Removes the directories of earlier runs. A run takes seconds, so one an hour old is
/// no concurrent run's.
fn remove_stale(scratch: &Path) {
    let Ok(entries) = std::fs::read_dir(scratch) else { return };
    for entry in entries.flatten() {
        let ours = entry.file_name().to_string_lossy().starts_with("torchscript-");
        let age = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if ours && age.is_some_and(|age| age > Duration::from_secs(3600)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `unwrap` with a message, for the shared functions outside `#[test]` ones.
fn ok<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn run(command: &mut Command) -> String {
    let out = ok(command.output(), &format!("running {command:?}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{command:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn example() -> TorchScriptModel {
    ok(TorchScriptModel::load(&fixture().model, None, None, Device::Cpu), "loading the example")
}

fn load_error(name: &str, context: Option<i64>, vocab: Option<i64>) -> String {
    let path = fixture().dir.join(name);
    match TorchScriptModel::load(&path, context, vocab, Device::Cpu) {
        Ok(_) => panic!("{name} loaded"),
        Err(e) => format!("{e:#}"),
    }
}

fn random_batch(seed: i64, batch: i64, model: &TorchScriptModel) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randint(model.vocab(), [batch, model.context()], (Kind::Int64, Device::Cpu))
}

fn value(t: &Tensor) -> f64 {
    t.double_value(&[])
}

#[test]
fn example_loads_with_its_declared_shape_and_pythons_parameters() {
    let model = example();
    assert_eq!((model.context(), model.vocab()), (64, 256));
    assert!(model.describe().contains("ctx64 vocab256"), "{}", model.describe());
    let params = model.parameters();
    // The tied head weight is the embedding's tensor, trained once, as PyTorch counts it.
    assert_eq!(params.len(), fixture().python_tensors);
    assert_eq!(parameter_count(&model), fixture().python_values);
    assert_eq!(params[0].0, "model.tok.weight");
    assert!(params.iter().all(|(name, _)| name != "model.head.weight"));
    for (name, t) in &params {
        assert!(t.requires_grad(), "{name}");
        assert_eq!(t.kind(), Kind::Float, "{name}");
    }
}

#[test]
fn two_loads_give_identical_parameters_in_the_same_order() {
    let (a, b) = (example().parameters(), example().parameters());
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na}");
    }
}

#[test]
fn initial_loss_is_near_uniform_and_graphs_only_in_training() {
    let model = example();
    let tokens = random_batch(1, 4, &model);
    let train = model.loss(&tokens, &tokens.roll([-1], [1]), true).unwrap();
    assert_eq!(train.dim(), 0);
    assert!((value(&train) - 256f64.ln()).abs() < 0.5, "{}", value(&train));
    assert!(train.requires_grad());
    let eval = model.loss(&tokens, &tokens.roll([-1], [1]), false).unwrap();
    assert!(!eval.requires_grad());
    // No dropout in the example, so the two modes agree.
    assert!((value(&eval) - value(&train)).abs() < 1e-5);
}

#[test]
fn backward_reaches_every_parameter() {
    let model = example();
    let tokens = random_batch(2, 2, &model);
    model.loss(&tokens, &tokens.roll([-1], [1]), true).unwrap().backward();
    for (name, t) in model.parameters() {
        let grad = t.grad();
        assert!(grad.defined(), "{name} has no gradient");
        let size = value(&grad.abs().sum(Kind::Double));
        assert!(size.is_finite() && size > 0.0, "{name}: gradient size {size}");
    }
}

#[test]
fn writing_a_returned_parameter_changes_the_module() {
    let model = example();
    let tokens = random_batch(3, 2, &model);
    let targets = tokens.roll([-1], [1]);
    let before = value(&model.loss(&tokens, &targets, false).unwrap());
    let (name, mut embedding) = model.parameters().swap_remove(0);
    assert_eq!(name, "model.tok.weight");
    let _ = tch::no_grad(|| embedding.zero_());
    // The head is tied to the embedding: all-zero logits give exactly the uniform loss.
    let after = value(&model.loss(&tokens, &targets, false).unwrap());
    assert!((after - 256f64.ln()).abs() < 1e-4, "{after}");
    assert!((after - before).abs() > 1e-4, "{before} -> {after}");
}

#[test]
fn plain_sgd_lowers_the_loss_on_a_fixed_batch() {
    let model = example();
    // Counting sequences: every next byte follows from the current one.
    let tokens = (Tensor::arange(2 * 64, (Kind::Int64, Device::Cpu)) * 3).remainder(256);
    let tokens = tokens.reshape([2, 64]);
    let targets = (&tokens + 3).remainder(256);
    let params = model.parameters();
    let mut losses = Vec::new();
    for _ in 0..8 {
        let loss = model.loss(&tokens, &targets, true).unwrap();
        losses.push(value(&loss));
        for (_, t) in &params {
            let mut grad = t.grad();
            if grad.defined() {
                let _ = grad.zero_();
            }
        }
        loss.backward();
        tch::no_grad(|| {
            for (_, t) in &params {
                let mut t = t.shallow_clone();
                t -= t.grad() * 0.5;
            }
        });
    }
    let last = value(&model.loss(&tokens, &targets, false).unwrap());
    assert!(last < losses[0] - 1.0, "{losses:?} -> {last}");
}

#[test]
fn loss_switches_the_module_between_train_and_eval_mode() {
    let path = fixture().dir.join("mode.pt");
    let model =
        ok(TorchScriptModel::load(&path, Some(8), Some(16), Device::Cpu), "loading mode.pt");
    let tokens = Tensor::zeros([2, 8], (Kind::Int64, Device::Cpu));
    for train in [true, false, false, true] {
        let loss = value(&model.loss(&tokens, &tokens, train).unwrap());
        assert_eq!(loss, if train { 1.0 } else { 0.0 }, "train = {train}");
    }
}

#[test]
fn the_model_can_move_to_a_worker_thread() {
    fn send<T: Send>(_: &T) {}
    send(&example());
}

#[test]
fn caller_values_take_precedence_and_a_larger_vocab_is_refused() {
    let path = &fixture().model;
    let model = TorchScriptModel::load(path, Some(32), Some(100), Device::Cpu).unwrap();
    assert_eq!((model.context(), model.vocab()), (32, 100));
    let err =
        format!("{:#}", TorchScriptModel::load(path, None, Some(257), Device::Cpu).err().unwrap());
    assert!(err.contains("larger than the module's vocab() 256"), "{err}");
    // The positional table has 64 rows: the probe finds a window that does not fit.
    let err =
        format!("{:#}", TorchScriptModel::load(path, Some(65), None, Device::Cpu).err().unwrap());
    assert!(err.contains("probe forward on a [1, 65] batch"), "{err}");
}

#[test]
fn without_declared_shape_the_callers_is_used_and_frozen_parameters_are_left_out() {
    let path = fixture().dir.join("frozen.pt");
    let model = TorchScriptModel::load(&path, Some(8), Some(16), Device::Cpu).unwrap();
    assert_eq!((model.context(), model.vocab()), (8, 16));
    let names: Vec<_> = model.parameters().into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["head.weight", "head.bias"]);
    let err = load_error("frozen.pt", None, Some(16));
    assert!(err.contains("no context()") && err.contains("model.context"), "{err}");
    let err = load_error("frozen.pt", Some(8), None);
    assert!(err.contains("no vocab()") && err.contains("--vocab"), "{err}");
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let err = load_error("does-not-exist.pt", Some(8), Some(16));
    assert!(err.contains("does-not-exist.pt"), "{err}");
}

#[test]
fn a_file_that_is_not_torchscript_is_an_error_naming_it() {
    let path = fixture().dir.join("garbage.pt");
    std::fs::write(&path, b"this is not a zip archive").unwrap();
    let err = load_error("garbage.pt", Some(8), Some(16));
    assert!(err.contains("garbage.pt") && err.contains("not a TorchScript module"), "{err}");
}

#[test]
fn a_forward_returning_logits_or_a_tuple_is_refused() {
    let err = load_error("logits.pt", Some(8), Some(64));
    assert!(err.contains("must return the scalar loss") && err.contains("[1, 8, 64]"), "{err}");
    let err = load_error("pair.pt", Some(8), Some(64));
    assert!(err.contains("must return the scalar loss, got a tuple"), "{err}");
}

#[test]
fn a_forward_with_another_signature_is_refused() {
    let err = load_error("oneargument.pt", Some(8), Some(64));
    assert!(err.contains("forward(tokens, targets) failed"), "{err}");
    assert!(!err.contains("Exception raised from"), "C++ stack in {err}");
}

#[test]
fn a_module_without_forward_is_refused() {
    let err = load_error("noforward.pt", Some(8), Some(64));
    assert!(err.contains("has no forward method"), "{err}");
}

#[test]
fn float64_parameters_are_refused() {
    let err = load_error("double.pt", Some(8), Some(16));
    assert!(err.contains("parameter w is a tensor of dtype Double"), "{err}");
    assert!(err.contains("float32"), "{err}");
}

#[test]
fn a_module_without_trainable_parameters_is_refused() {
    let err = load_error("noparameters.pt", Some(8), Some(64));
    assert!(err.contains("no trainable parameters"), "{err}");
}

#[test]
fn a_non_finite_loss_is_refused() {
    let err = load_error("notfinite.pt", Some(8), Some(16));
    assert!(err.contains("non-finite loss"), "{err}");
}

#[test]
fn a_detached_loss_is_refused() {
    let err = load_error("detached.pt", Some(8), Some(64));
    assert!(err.contains("does not depend on any trainable parameter"), "{err}");
}

#[test]
fn token_batches_outside_the_contract_are_errors() {
    let model = example();
    let tokens = random_batch(4, 2, &model);
    let err = model.loss(&tokens.to_kind(Kind::Int), &tokens, true).unwrap_err().to_string();
    assert!(err.contains("int64"), "{err}");
    let err = model.loss(&tokens.flatten(0, 1), &tokens, true).unwrap_err().to_string();
    assert!(err.contains("(batch, context)"), "{err}");
    let err = model.loss(&tokens, &tokens.narrow(1, 0, 8), true).unwrap_err().to_string();
    assert!(err.contains("differ in shape"), "{err}");
    // Ids past the vocabulary reach the module, whose error comes back as an error.
    let err = model.loss(&(&tokens + 256), &tokens, false).unwrap_err().to_string();
    assert!(err.contains("forward(tokens, targets) failed"), "{err}");
}
