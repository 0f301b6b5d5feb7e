"""A trainer for any PyTorch ``nn.Module``.

One model object serves every client: parameters are copied in from the flat vector before each
fit or evaluation and read back out after it. PyTorch is imported when a trainer is made, so the
rest of fedloom works without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from fedloom.client._trainer import proximal_mu
from fedloom.data import ArrayData
from fedloom.messages import Config, EvalResult, FitResult, setting
from fedloom.params import ParamSpec, Vector
from fedloom.privacy import BATCH_METRIC, DPSGD, STEPS_METRIC, LocalDP

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["TorchTrainer"]

OptimizerFactory = Callable[["Iterable[torch.nn.Parameter]", float], "torch.optim.Optimizer"]


class _Stepper(Protocol):
    def zero_grad(self) -> None: ...

    def step(self) -> object: ...


class _SGD:
    """SGD with heavy-ball momentum, step for step what ``torch.optim.SGD(lr, momentum)`` does
    (no dampening, no weight decay). Written out because creating the first ``torch.optim``
    optimizer imports ``torch._dynamo``, which costs seconds at start-up."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, momentum: float) -> None:
        self._params = params
        self._lr = lr
        self._momentum = momentum
        self._buffers: list[torch.Tensor | None] = [None] * len(params)

    def zero_grad(self) -> None:
        for p in self._params:
            p.grad = None

    def step(self) -> None:
        import torch

        with torch.no_grad():
            for i, p in enumerate(self._params):
                grad = p.grad
                if grad is None:
                    continue
                if self._momentum:
                    buf = self._buffers[i]
                    if buf is None:
                        buf = self._buffers[i] = grad.detach().clone()
                    else:
                        buf.mul_(self._momentum).add_(grad)
                    grad = buf
                p.add_(grad, alpha=-self._lr)


def _add_terms(
    terms: list[tuple[torch.nn.Parameter, torch.Tensor | None, torch.Tensor | None]], mu: float
) -> None:
    """Add the proximal gradient ``mu * (w - anchor)`` and the correction to each gradient."""
    import torch

    with torch.no_grad():
        for p, anchor, corr in terms:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if anchor is not None:
                p.grad.add_(p - anchor, alpha=mu)
            if corr is not None:
                p.grad.add_(corr)


def _shuffled(n: int, batch: int, epochs: int, rng: torch.Generator) -> Iterator[torch.Tensor]:
    """Each epoch, a fresh permutation of ``range(n)`` cut into batches of ``batch``."""
    import torch

    for _ in range(epochs):
        order = torch.randperm(n, generator=rng)
        for start in range(0, n, batch):
            yield order[start : start + batch]


class TorchTrainer:
    """Trains a PyTorch model with minibatch gradient descent on a client's arrays.

    Parameters
    ----------
    model_fn
        Builds the model; called once here (and again by :meth:`init_parameters`).
    input_shape
        Per-example shape the model takes, e.g. ``(1, 28, 28)``; rows of ``ArrayData.x`` are
        reshaped to it. ``None`` feeds the flat rows.
    loss_fn
        Maps (outputs, labels) to a mean loss; cross-entropy by default.
    optimizer
        Maps (parameters, lr) to a fresh optimizer each fit. By default, SGD with ``momentum``
        (the same steps as ``torch.optim.SGD``), fresh each fit.
    lr, momentum, local_epochs, batch_size
        Defaults; an instruction's ``lr``, ``local_epochs`` and ``batch_size`` override them.

    Every floating-point tensor of the model's ``state_dict`` (parameters and buffers such as
    batch-norm statistics) travels in the vector; integer buffers stay on the client.

    Examples
    --------
    >>> from torch import nn
    >>> trainer = TorchTrainer(lambda: nn.Linear(4, 3), lr=0.1)
    >>> trainer.spec.size
    15
    """

    def __init__(
        self,
        model_fn: Callable[[], nn.Module],
        *,
        input_shape: tuple[int, ...] | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        optimizer: OptimizerFactory | None = None,
        lr: float = 0.05,
        momentum: float = 0.0,
        local_epochs: int = 1,
        batch_size: int = 32,
    ) -> None:
        import torch

        self._torch = torch
        self._model_fn = model_fn
        self._model = model_fn()
        self._input_shape = input_shape
        self._loss_fn = loss_fn if loss_fn is not None else torch.nn.functional.cross_entropy
        self._optimizer = optimizer
        self._momentum = momentum
        self._defaults = {"lr": lr, "local_epochs": local_epochs, "batch_size": batch_size}
        state = self._model.state_dict()
        names = [k for k, v in state.items() if v.is_floating_point()]
        self._tensors = [state[k] for k in names]
        self._spec = ParamSpec(
            tuple(names),
            tuple(tuple(t.shape) for t in self._tensors),
            tuple(str(t.dtype).removeprefix("torch.") for t in self._tensors),
        )
        offsets = np.cumsum([0, *self._spec.sizes])
        self._slices = {
            name: slice(int(offsets[i]), int(offsets[i + 1])) for i, name in enumerate(names)
        }

    @property
    def spec(self) -> ParamSpec:
        return self._spec

    def __getstate__(self) -> dict[str, Any]:
        """Pickles without the ``torch`` module (workers re-import it); ``model_fn`` and
        ``loss_fn`` must themselves be picklable."""
        state = dict(self.__dict__)
        del state["_torch"], state["_tensors"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        import torch

        self.__dict__.update(state)
        self._torch = torch
        model_state = self._model.state_dict()
        self._tensors = [model_state[k] for k in self._spec.names]

    @property
    def model(self) -> nn.Module:
        """The model object; holds whichever parameters were last loaded."""
        return self._model

    def init_parameters(self, seed: int) -> Vector:
        with self._torch.random.fork_rng():
            self._torch.manual_seed(seed)
            fresh = self._model_fn()
        state = fresh.state_dict()
        return self._spec.pack({k: state[k].detach().numpy() for k in self._spec.names})

    def load(self, parameters: Vector) -> None:
        """Copy a parameter vector into the model."""
        vec = self._spec.check(parameters)
        flat = self._torch.from_numpy(vec if vec.flags.writeable else vec.copy())
        offset = 0
        with self._torch.no_grad():
            for tensor, n in zip(self._tensors, self._spec.sizes, strict=True):
                tensor.copy_(flat[offset : offset + n].view_as(tensor))
                offset += n

    def parameters(self) -> Vector:
        """The model's current parameters as a new vector."""
        with self._torch.no_grad():
            flat = self._torch.cat([t.reshape(-1).float() for t in self._tensors])
        out: Vector = flat.numpy()
        return out

    def _tensors_of(self, data: ArrayData) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32))
        if self._input_shape is not None:
            x = x.reshape(-1, *self._input_shape)
        return x, self._torch.from_numpy(np.ascontiguousarray(data.y, dtype=np.int64))

    def _make_optimizer(self, lr: float) -> _Stepper:
        params = self._model.parameters()
        if self._optimizer is not None:
            return self._optimizer(params, lr)
        return _SGD(list(params), lr, self._momentum)

    def _private(
        self,
        settings: LocalDP,
        lr: float,
        n: int,
        batch: int,
        seed: int,
        after: Callable[[], None] | None,
    ) -> DPSGD:
        """DP-SGD for this fit, on ``optimizer`` or SGD (Opacus wraps a ``torch.optim`` one)."""
        params = self._model.parameters()
        if self._optimizer is not None:
            opt = self._optimizer(params, lr)
        else:
            opt = self._torch.optim.SGD(params, lr=lr, momentum=self._momentum)
        return DPSGD(settings, self._model, opt, n, batch, seed, after)

    def _gradient_terms(
        self, mu: float, correction: Vector | None
    ) -> list[tuple[torch.nn.Parameter, torch.Tensor | None, torch.Tensor | None]]:
        """Per trainable parameter: its proximal anchor (when ``mu``) and correction slice."""
        terms = []
        corr = None
        if correction is not None:
            corr = self._torch.from_numpy(np.array(self._spec.check(correction), copy=True))
        for name, p in self._model.named_parameters():
            anchor = p.detach().clone() if mu else None
            part = corr[self._slices[name]].view_as(p) if corr is not None else None
            terms.append((p, anchor, part))
        return terms

    def fit(
        self,
        parameters: Vector,
        data: ArrayData,
        config: Config,
        seed: int,
        correction: Vector | None = None,
    ) -> FitResult:
        """Minibatch training from ``parameters``.

        Each step's gradient gets ``mu * (w - parameters)`` (FedProx, ``config["mu"]``) and
        ``correction`` (SCAFFOLD's ``c - c_i``) added when they are given.

        Local DP (``config["local_dp_noise"]``, see :mod:`fedloom.privacy._local`) trains with
        DP-SGD instead: Poisson-sampled batches (each example joins each step with probability
        B/n), per-example clipping to ``local_dp_clip`` and Gaussian noise, with the proximal
        term and correction added after the noise. It reports ``local_dp_steps`` and
        ``local_dp_batch`` (q·n) instead of the training loss, which would leak the records.
        """
        torch = self._torch
        lr = setting(config, "lr", self._defaults["lr"], float)
        epochs = int(setting(config, "local_epochs", self._defaults["local_epochs"], int))
        batch = int(setting(config, "batch_size", self._defaults["batch_size"], int))
        mu = proximal_mu(config)
        private = LocalDP.from_config(config)
        self.load(parameters)
        terms = self._gradient_terms(mu, correction) if mu or correction is not None else []
        x, y = self._tensors_of(data)
        n = len(data)
        torch.random.default_generator.manual_seed(seed)  # dropout and other random layers
        order_rng = torch.Generator().manual_seed(seed)
        model = self._model
        model.train()
        opt: _Stepper
        dpsgd: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if private is not None and n:
            after = (lambda: _add_terms(terms, mu)) if terms else None
            dpsgd = dp = self._private(private, lr, n, batch, seed, after)
            opt, batches = dp.optimizer, dp.batches(epochs)
        else:
            opt, batches = self._make_optimizer(lr), _shuffled(n, batch, epochs, order_rng)
        loss_sum, seen, steps = 0.0, 0, 0
        with dpsgd:
            for idx in batches:
                opt.zero_grad()
                loss = self._loss_fn(model(x[idx]), y[idx])
                loss.backward()  # type: ignore[no-untyped-call]
                if terms and private is None:  # with DP-SGD: after the noise, in its step
                    _add_terms(terms, mu)
                opt.step()
                steps += 1
                if len(idx):  # a Poisson batch may be empty
                    loss_sum += float(loss.item()) * len(idx)
                    seen += len(idx)
        metrics = {"train_loss": loss_sum / max(seen, 1)}
        if private is not None:
            metrics = {STEPS_METRIC: steps, BATCH_METRIC: min(batch, n)}
        return FitResult(self.parameters(), n, metrics, steps=steps, lr=lr)

    def evaluate(self, parameters: Vector, data: ArrayData) -> EvalResult:
        n = len(data)
        if n == 0:
            return EvalResult(float("nan"), float("nan"), 0)
        torch = self._torch
        self.load(parameters)
        x, y = self._tensors_of(data)
        model = self._model
        model.eval()
        loss_sum, correct = 0.0, 0
        with torch.no_grad():
            for start in range(0, n, 4096):
                out = model(x[start : start + 4096])
                yb = y[start : start + 4096]
                loss_sum += float(self._loss_fn(out, yb).item()) * len(yb)
                correct += int((out.argmax(dim=1) == yb).sum().item())
        return EvalResult(loss_sum / n, correct / n, n)

    def predict(self, parameters: Vector, x: np.ndarray) -> npt.NDArray[np.int64]:
        """The class each example of ``x`` is given (the largest output), shape ``(n,)``."""
        torch = self._torch
        self.load(parameters)
        inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self._input_shape is not None:
            inputs = inputs.reshape(-1, *self._input_shape)
        model = self._model
        model.eval()
        parts = [np.zeros(0, dtype=np.int64)]
        with torch.no_grad():
            for start in range(0, len(inputs), 4096):
                parts.append(model(inputs[start : start + 4096]).argmax(dim=1).numpy())
        return np.concatenate(parts).astype(np.int64)

    def example_losses(self, parameters: Vector, data: ArrayData) -> np.ndarray:
        """Each example's loss under ``parameters``, shape ``(n,)``; their mean is
        :meth:`evaluate`'s loss. What a membership inference attack scores. The default
        cross-entropy runs batched; a custom ``loss_fn`` is called on one example at a time."""
        torch = self._torch
        self.load(parameters)
        x, y = self._tensors_of(data)
        model = self._model
        model.eval()
        batched = self._loss_fn is torch.nn.functional.cross_entropy
        parts = [torch.zeros(0, dtype=torch.float64)]
        with torch.no_grad():
            for start in range(0, len(data), 4096):
                out, yb = model(x[start : start + 4096]), y[start : start + 4096]
                if batched:
                    ce = torch.nn.functional.cross_entropy(out, yb, reduction="none")
                    parts.append(ce.double())
                else:
                    each = [self._loss_fn(out[i : i + 1], yb[i : i + 1]) for i in range(len(yb))]
                    parts.append(torch.stack(each).double().reshape(-1))
        losses: np.ndarray = torch.cat(parts).numpy()
        return losses
