"""Leave the model exactly as found: modes, ``requires_grad``, RNG; compiled modules run eagerly."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run ``torch.compile``'d modules and functions eagerly for the duration, compiling nothing.

    The analysis hooks modules, switches them to eval mode and feeds batches of other shapes: under
    a compiled module each of these would fail a guard and trigger a recompilation (and could evict the
    training graph from the cache). With torch>=2.6 this is ``torch.compiler.set_stance("force_eager")``;
    on older versions ``torch._dynamo.config.disable`` is set instead, which skips compilation of new
    frames (already compiled code may still run).
    """
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is not None:
        with set_stance("force_eager"):
            yield
        return
    try:  # torch < 2.6
        import torch._dynamo.config as dynamo_config
    except ImportError:  # pragma: no cover - builds without dynamo
        yield
        return
    with dynamo_config.patch(disable=True):
        yield


@contextlib.contextmanager
def model_untouched(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration; everything restored on exit, also on error.

    Every submodule's ``training`` flag, every parameter's ``requires_grad`` and the global RNG (CPU,
    and the model's CUDA device) are put back. Freezing the parameters keeps autograd from saving what
    weight gradients would need; callers take gradients with :func:`torch.autograd.grad` with respect to
    their own tensors, so no ``.grad`` is written. On CUDA a model with a recurrent module runs with
    cuDNN disabled: cuDNN's RNN backward refuses eval mode ("cudnn RNN backward can only be called in
    training mode"). Compiled modules run eagerly (:func:`eager`): nothing is compiled for the analysis
    and the training graph's compiled code is neither replaced nor recompiled.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    has_rnn = any(isinstance(m, nn.RNNBase) for m in model.modules())
    cudnn = (torch.backends.cudnn.flags(enabled=False) if device.type == "cuda" and has_rnn
             else contextlib.nullcontext())
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), cudnn, eager():
        try:
            model.eval()
            for p, _ in grads:
                p.requires_grad_(False)
            yield
        finally:
            for module, mode in modes:
                module.training = mode
            for p, flag in grads:
                p.requires_grad_(flag)


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
