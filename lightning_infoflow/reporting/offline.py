"""Analyses of saved models for ``infoflow analyze``: load a Lightning checkpoint or a Hugging Face folder
(:func:`load_model`), and write the run folder the callback would write (:func:`write_run`). Errors are
click errors naming the option to fix; torch, Lightning and transformers are imported when used."""

from __future__ import annotations

import glob
import importlib
import os
import sys
import uuid
from typing import Any

import click

from lightning_infoflow.reporting.runs import RESULTS


def import_object(spec: str, option: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"expected pkg.module:Name, got {spec!r}", param_hint=option)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise click.BadParameter(f"cannot import {module_name!r} ({err})", param_hint=option) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise click.BadParameter(f"module {module_name!r} has no {attr!r}", param_hint=option) from None


def tokenizer_from(spec: str) -> Any:
    """A tokenizer folder as its path (:func:`~lightning_infoflow.core.probe.build_probe` loads it), or the
    tokenizer a ``pkg.module:factory`` returns."""
    if os.path.isdir(spec):
        return spec
    factory = import_object(spec, "--tokenizer")
    if not callable(factory):
        raise click.BadParameter(f"{spec!r} is not callable", param_hint="--tokenizer")
    return factory()


def load_lightning(spec: str, ckpt: str) -> tuple[Any, dict[str, Any], int | None]:
    import torch

    cls = import_object(spec, "--module")
    if not hasattr(cls, "load_from_checkpoint"):
        raise click.BadParameter(f"{spec!r} is not a LightningModule class (no load_from_checkpoint)",
                                 param_hint="--module")
    try:
        module = cls.load_from_checkpoint(ckpt, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any loading failure is the user's to fix
        raise click.ClickException(
            f"cannot load {ckpt!r} with {spec}.load_from_checkpoint: {type(err).__name__}: {err}") from None
    step = None
    try:
        step = int(torch.load(ckpt, map_location="cpu", weights_only=True).get("global_step"))
    except Exception:  # noqa: BLE001 - the step is optional metadata
        step = None
    return module, dict(getattr(module, "hparams", {}) or {}), step


def load_hf(folder: str) -> tuple[Any, dict[str, Any]]:
    try:
        import transformers
    except ImportError:
        raise click.UsageError(
            "--hf-model needs transformers: pip install 'lightning-infoflow[transformers]'") from None
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        archs = [a for a in (getattr(config, "architectures", None) or []) if hasattr(transformers, a)]
        cls = getattr(transformers, archs[0]) if archs else transformers.AutoModel
        model = cls.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # noqa: BLE001
        raise click.ClickException(
            f"cannot load a Hugging Face model from {folder!r}: {type(err).__name__}: {err}") from None
    return model, {"model": folder, "architecture": type(model).__name__}


def existing_run(out: str) -> list[str]:
    """Files of a run already in ``out``: result files of any namespace, and ``hparams.yaml``."""
    held = sorted(glob.glob(os.path.join(glob.escape(out), "*", RESULTS, "step_*.pt")))
    return held + [p for p in [os.path.join(out, "hparams.yaml")] if os.path.isfile(p)]


def folder_run_id(results_dir: str) -> str:
    """The run_id of the newest result file in the folder, or a new one."""
    for path in sorted(glob.glob(os.path.join(glob.escape(results_dir), "step_*.pt")), reverse=True):
        try:
            meta = torch_load(path).get("meta", {})
        except Exception:  # noqa: BLE001, S112 - an unreadable file has no run_id to keep
            continue
        if isinstance(meta, dict) and meta.get("run_id") is not None:
            return str(meta["run_id"])
    return uuid.uuid4().hex


def torch_load(path: str) -> Any:
    """``torch.load`` of plain data on the CPU (torch is imported when a command needs it)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def load_model(module_spec: str | None, ckpt: str | None, hf_model: str | None, submodule: str | None,
                layers: tuple[str, ...]) -> tuple[Any, Any, dict[str, Any], int | None, str]:
    """``(module to analyse, layer spec, hyperparameters, checkpoint step, source path)`` from the options."""
    if (module_spec is None) == (hf_model is None):
        raise click.UsageError("pass either --module pkg.mod:Class with --ckpt, or --hf-model FOLDER")
    if module_spec is not None and ckpt is None:
        raise click.UsageError("--module needs --ckpt (the checkpoint to load)")
    if hf_model is not None:
        (model, hparams), step, source = load_hf(hf_model), None, hf_model
    else:
        assert module_spec is not None and ckpt is not None
        model, hparams, step = load_lightning(module_spec, ckpt)
        source = ckpt
    target = model
    if submodule is not None:
        target = getattr(model, submodule, None)
        if target is None:
            raise click.BadParameter(f"the model has no attribute {submodule!r}", param_hint="--submodule")
    layer_spec: Any = list(layers) if layers else getattr(model, "infoflow_layers", None) or "auto"
    if submodule is not None and not layers:
        layer_spec = "auto"
    return target, layer_spec, hparams, step, source


def write_run(result: Any, results_dir: str, out: str, hparams: dict[str, Any]) -> str:
    """Save the result as ``step_%08d.pt`` and the hyperparameters as ``hparams.yaml``; return the result's path."""
    from lightning.pytorch.core.saving import save_hparams_to_yaml

    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"step_{int(result.meta['step']):08d}.pt")
    result.save(path)
    save_hparams_to_yaml(os.path.join(out, "hparams.yaml"), plain_hparams(hparams))
    return path


def plain_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters YAML can hold: primitives and containers of them; anything else as text."""
    def plain(v: Any) -> Any:
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return repr(v)

    return {str(k): plain(v) for k, v in hparams.items()}
