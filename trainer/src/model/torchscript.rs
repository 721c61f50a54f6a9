//! A user's own PyTorch model, saved with `torch.jit.save`, trained as a [`LanguageModel`].
//!
//! # The contract
//!
//! The saved module's `forward(tokens, targets)` takes two int64 tensors of shape
//! `(B, T)` (`targets` is `tokens` shifted left by one) and returns the mean next-token
//! cross-entropy as a 0-d floating-point tensor, e.g. `F.cross_entropy(logits.flatten(0, 1),
//! targets.flatten())`. It may export `context() -> int` (tokens per window) and
//! `vocab() -> int` (token ids are below it) with `@torch.jit.export`; values the caller
//! passes to [`TorchScriptModel::load`] take precedence, and it is an error if neither
//! names one. `examples/export_torchscript.py` is a complete example.
//!
//! What Meridian trains:
//! - the parameters with `requires_grad`, in module order (the order of
//!   `named_parameters()` in Python, fixed by the saved archive, so the same on every
//!   worker); a tensor shared by two modules (tied embeddings) is listed once, under its
//!   first name;
//! - not frozen parameters (`requires_grad = False`): they stay as loaded;
//! - not buffers: they stay as loaded too, or change only as the module's own forward
//!   changes them, per worker and unsynchronised, so models with running statistics
//!   (BatchNorm) let replicas drift; LayerNorm and constant buffers (masks) are fine.
//!
//! Every trained parameter must be a contiguous float32 tensor: the outer optimizers work
//! on f32 memory in place. Modules are loaded onto the device the run trains on
//! (`--device`), whatever device they were saved from.
//!
//! Loading checks all of this up front with one probe forward (in eval mode, so it changes
//! nothing) on a `[1, context]` batch of the largest token id (`vocab - 1`): a module that
//! returns logits, takes other arguments, needs another window length, has a smaller
//! vocabulary or detaches its loss fails at load with a message naming the problem, not
//! in the middle of a run.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use anyhow::{anyhow, bail, Context, Result};
use tch::{CModule, Device, IValue, Kind, TchError, Tensor};

use super::LanguageModel;

/// A TorchScript module trained through its `forward(tokens, targets) -> loss`.
pub struct TorchScriptModel {
    path: PathBuf,
    // The mode switch needs `&mut CModule` while `loss` takes `&self`.
    module: Mutex<Scripted>,
    parameters: Vec<(String, Tensor)>,
    context: i64,
    vocab: i64,
    device: Device,
}

/// The module with the train/eval mode it was last switched to.
struct Scripted {
    module: CModule,
    train: Option<bool>,
}

impl Scripted {
    /// Switches dropout and the like on or off, walking the module tree only on a change.
    fn set_train(&mut self, train: bool) -> Result<()> {
        if self.train != Some(train) {
            if train {
                self.module.f_set_train()?;
            } else {
                self.module.f_set_eval()?;
            }
            self.train = Some(train);
        }
        Ok(())
    }
}

impl TorchScriptModel {
    /// Loads the module saved at `path` onto `device` and checks it against the contract.
    ///
    /// `context` and `vocab`, when given (from the command line or config), take precedence
    /// over the module's own `context()` and `vocab()`; a `vocab` above the module's is an
    /// error, as its ids would fall outside the model's embedding.
    pub fn load(
        path: &Path,
        context: Option<i64>,
        vocab: Option<i64>,
        device: Device,
    ) -> Result<Self> {
        let shown = path.display();
        // LibTorch's own message for a missing file is a C++ stack; say it plainly.
        let metadata = std::fs::metadata(path)
            .with_context(|| format!("cannot read TorchScript model {shown}"))?;
        // LibTorch reads a folder as a broken zip ("failed finding central directory").
        if metadata.is_dir() {
            bail!(
                "TorchScript model {shown} is a directory; --model torchscript:PATH takes a \
                 TorchScript file, the one torch.jit.save(module, PATH) writes"
            );
        }
        let module = CModule::load_on_device(path, device).map_err(|e| {
            anyhow!(
                "{shown} is not a TorchScript module saved by torch.jit.save: {}",
                torch_message(&e)
            )
        })?;
        let declared_context =
            declared(&module, "context").with_context(|| format!("TorchScript model {shown}"))?;
        let declared_vocab =
            declared(&module, "vocab").with_context(|| format!("TorchScript model {shown}"))?;
        let context = match context.or(declared_context) {
            Some(c) if c >= 1 => c,
            Some(c) => bail!("TorchScript model {shown}: context must be at least 1, got {c}"),
            None => bail!(
                "TorchScript model {shown} exports no context() method; give the window \
                 length with --set model.context=N or export `def context(self) -> int`"
            ),
        };
        let vocab = match (vocab, declared_vocab) {
            (Some(v), Some(m)) if v > m => bail!(
                "TorchScript model {shown}: vocabulary {v} is larger than the module's \
                 vocab() {m}; token ids up to {} would be out of range",
                v - 1
            ),
            (Some(v), _) | (None, Some(v)) if v >= 1 => v,
            (Some(v), _) | (None, Some(v)) => {
                bail!("TorchScript model {shown}: vocabulary must be at least 1, got {v}")
            }
            (None, None) => bail!(
                "TorchScript model {shown} exports no vocab() method; give the vocabulary \
                 size with --vocab or export `def vocab(self) -> int`"
            ),
        };
        let parameters =
            trainable(&module).with_context(|| format!("TorchScript model {shown}"))?;
        let model = Self {
            path: path.to_owned(),
            module: Mutex::new(Scripted { module, train: None }),
            parameters,
            context,
            vocab,
            device,
        };
        model.probe().with_context(|| format!("TorchScript model {shown}"))?;
        Ok(model)
    }

    fn lock(&self) -> MutexGuard<'_, Scripted> {
        // `Scripted::train` is recorded only after a switch succeeds, so the state behind a
        // lock poisoned by a panic elsewhere is still consistent.
        self.module.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One forward on `[1, context]` tokens of id `vocab - 1`, checking what a training
    /// step relies on: a finite scalar loss with a graph to the parameters. Eval mode, so
    /// loading changes no buffer (BatchNorm statistics) and draws no random numbers.
    fn probe(&self) -> Result<()> {
        let tokens = Tensor::f_full([1, self.context], self.vocab - 1, (Kind::Int64, self.device))?;
        let loss = tch::with_grad(|| self.forward(&tokens, &tokens, false)).with_context(|| {
            format!(
                "probe forward on a [1, {}] batch of token {} (vocab {}) failed",
                self.context,
                self.vocab - 1,
                self.vocab
            )
        })?;
        let value = loss.f_double_value(&[])?;
        if !value.is_finite() {
            bail!("the probe forward returned a non-finite loss ({value})");
        }
        if !loss.requires_grad() {
            bail!(
                "the loss does not depend on any trainable parameter (no gradient graph); \
                 return the loss tensor itself, not a detached copy"
            );
        }
        Ok(())
    }

    /// The module's forward in train or eval mode, under whatever grad mode is current.
    fn forward(&self, inputs: &Tensor, targets: &Tensor, train: bool) -> Result<Tensor> {
        check_tokens(inputs, targets)?;
        let mut scripted = self.lock();
        scripted.set_train(train)?;
        let args =
            [IValue::Tensor(inputs.shallow_clone()), IValue::Tensor(targets.shallow_clone())];
        let output = scripted.module.forward_is(&args).map_err(|e| {
            let message = torch_message(&e);
            if message.contains("'forward' is not defined") {
                anyhow!("the module has no forward method; Meridian calls forward(tokens, targets)")
            } else {
                anyhow!("forward(tokens, targets) failed: {message}")
            }
        })?;
        scalar_loss(output)
    }
}

impl LanguageModel for TorchScriptModel {
    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.parameters.iter().map(|(name, t)| (name.clone(), t.shallow_clone())).collect()
    }

    fn loss(&self, inputs: &Tensor, targets: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            self.forward(inputs, targets, true)
        } else {
            tch::no_grad(|| self.forward(inputs, targets, false))
        }
    }

    fn context(&self) -> i64 {
        self.context
    }

    fn vocab(&self) -> i64 {
        self.vocab
    }

    fn describe(&self) -> String {
        format!("torchscript:{} ctx{} vocab{}", self.path.display(), self.context, self.vocab)
    }
}

/// Calls the module's exported `name() -> int`, or `None` if it exports no such method.
fn declared(module: &CModule, name: &str) -> Result<Option<i64>> {
    match module.method_is::<IValue>(name, &[]) {
        Ok(IValue::Int(n)) => Ok(Some(n)),
        Ok(other) => bail!("{name}() must return an int, got {}", describe_value(&other)),
        // LibTorch has no "has method" query; a missing method is this error.
        Err(e) if e.to_string().contains(&format!("'{name}' is not defined")) => Ok(None),
        Err(e) => bail!("calling {name}() failed: {}", torch_message(&e)),
    }
}

/// The parameters that require grad, in module order, each storage once.
fn trainable(module: &CModule) -> Result<Vec<(String, Tensor)>> {
    let mut seen = HashSet::new();
    let mut parameters = Vec::new();
    for (name, t) in module.named_parameters()? {
        if !t.requires_grad() {
            continue;
        }
        // LibTorch lists a tied tensor under every module holding it; training it twice
        // per step would double its update. Empty tensors have no storage to share.
        if t.numel() > 0 && !seen.insert((t.data_ptr() as usize, t.size())) {
            continue;
        }
        if !matches!(t.f_kind(), Ok(Kind::Float)) {
            bail!(
                "parameter {name} is {}; Meridian trains float32 parameters \
                 (call .float() on the model before exporting)",
                describe_tensor(&t)
            );
        }
        if !t.is_contiguous() {
            bail!("parameter {name} is not contiguous; Meridian updates parameters in place");
        }
        parameters.push((name, t));
    }
    if parameters.is_empty() {
        bail!("the module has no trainable parameters (none with requires_grad)");
    }
    Ok(parameters)
}

/// Rejects token batches the contract does not cover before they reach the module, whose
/// own error would be further from the cause.
fn check_tokens(inputs: &Tensor, targets: &Tensor) -> Result<()> {
    for (what, t) in [("inputs", inputs), ("targets", targets)] {
        if !matches!(t.f_kind(), Ok(Kind::Int64)) || t.dim() != 2 {
            bail!("{what} must be an int64 (batch, context) tensor, got {}", describe_tensor(t));
        }
    }
    if inputs.size() != targets.size() {
        bail!("inputs {:?} and targets {:?} differ in shape", inputs.size(), targets.size());
    }
    Ok(())
}

fn scalar_loss(output: IValue) -> Result<Tensor> {
    match output {
        IValue::Tensor(t) if t.dim() == 0 && t.f_kind().is_ok_and(is_floating) => Ok(t),
        other => bail!("forward must return the scalar loss, got {}", describe_value(&other)),
    }
}

fn is_floating(kind: Kind) -> bool {
    matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
}

fn describe_tensor(t: &Tensor) -> String {
    // `f_kind` rather than `kind`: a dtype tch has no name for is described, not a panic.
    match t.f_kind() {
        Ok(kind) => format!("a tensor of dtype {kind:?} and shape {:?}", t.size()),
        Err(_) => format!("a tensor of an unsupported dtype and shape {:?}", t.size()),
    }
}

fn describe_value(v: &IValue) -> String {
    match v {
        IValue::Tensor(t) => describe_tensor(t),
        IValue::Tuple(items) => format!("a tuple of {} values", items.len()),
        IValue::Double(_) => "a float (return the loss tensor, not loss.item())".to_owned(),
        IValue::Int(_) => "an int".to_owned(),
        IValue::Bool(_) => "a bool".to_owned(),
        IValue::None => "None".to_owned(),
        IValue::GenericDict(_) => "a dict".to_owned(),
        IValue::TensorList(_) | IValue::GenericList(_) => "a list".to_owned(),
        _ => "a value that is not a tensor".to_owned(),
    }
}

/// A LibTorch error as a user can act on it: PyTorch's message, with the TorchScript
/// traceback when there is one, without the C++ stack frames that follow it.
fn torch_message(e: &TchError) -> String {
    let message = match e {
        TchError::Torch(message) => message.clone(),
        other => other.to_string(),
    };
    match message.find("Exception raised from") {
        Some(end) => message[..end].trim_end().to_owned(),
        None => message.trim_end().to_owned(),
    }
}
