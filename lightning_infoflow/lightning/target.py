"""Which network the callback analyses: the LightningModule, a named submodule, or the Hugging Face one inside.

The contract: the analysed network is called with the probe as keywords (``input_ids=``, and
``attention_mask=`` when the probe has one) or, for a tensor probe, as one positional tensor. A
LightningModule whose ``forward`` takes neither ``input_ids`` nor ``**kwargs`` (e.g. the common
``forward(self, batch)``) is not called directly: the callback analyses its one Hugging Face
submodule (a module with ``get_input_embeddings`` whose ``forward`` takes ``input_ids``) and names
layers relative to it. ``module="<attribute>"`` picks the submodule explicitly.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

from torch import nn

CONTRACT = (
    "InfoFlowCallback calls the network with the tokenized probe as keywords (input_ids=..., attention_mask=...) "
    "or, for a tensor probe, as one positional tensor of token ids"
)


@dataclass(frozen=True)
class Target:
    """The network to analyse and where it sits in the LightningModule.

    Attributes:
        module: the network the estimator calls.
        attribute: its dotted name in the LightningModule (``""``: the LightningModule itself).
        found: whether it was discovered (not named by ``module=``).
        note: why the LightningModule itself is called although its forward may not take token ids
            (``""`` when it does); used to explain a failing probe check.
    """

    module: nn.Module
    attribute: str
    found: bool = False
    note: str = ""

    def relative(self, name: str) -> str:
        """A layer or embedding name given relative to the LightningModule, made relative to the network."""
        prefix = f"{self.attribute}." if self.attribute else ""
        return name[len(prefix):] if prefix and name.startswith(prefix) else name

    def relative_layers(self, layers: Union[str, Sequence[str]]) -> Union[str, list[str]]:
        """:meth:`relative` of one layer pattern or of each."""
        return self.relative(layers) if isinstance(layers, str) else [self.relative(n) for n in layers]


def takes_token_ids(module: nn.Module) -> bool:
    """Whether ``module.forward`` has an ``input_ids`` parameter or takes ``**kwargs``."""
    try:
        parameters = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # a forward without a signature (C extension): assume it does
        return True
    return "input_ids" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def hugging_face_networks(root: nn.Module) -> list[str]:
    """Dotted names of the outermost submodules that look like Hugging Face models taking ``input_ids``."""
    found: list[str] = []
    for name, module in root.named_modules():
        if not name or any(name.startswith(f"{outer}.") for outer in found):
            continue
        if callable(getattr(module, "get_input_embeddings", None)) and takes_token_ids(module):
            found.append(name)
    return found


def find_target(pl_module: nn.Module, attribute: Optional[str]) -> Target:
    """The network to analyse (see the module docstring).

    Raises:
        ValueError: ``attribute`` names no submodule (the message lists the LightningModule's children).
    """
    if attribute is not None:
        target = pl_module.get_submodule(attribute) if _has_submodule(pl_module, attribute) else None
        if target is None:
            children = [name for name, _ in pl_module.named_children()]
            raise ValueError(
                f"InfoFlowCallback(module={attribute!r}): the LightningModule has no submodule of that name "
                f"(its children: {children}); pass the attribute that holds the network, or module=None"
            )
        return Target(target, attribute)
    if takes_token_ids(pl_module):
        return Target(pl_module, "")
    candidates = hugging_face_networks(pl_module)
    if len(candidates) == 1:
        return Target(pl_module.get_submodule(candidates[0]), candidates[0], found=True)
    signature = _signature(pl_module)
    children = [name for name, _ in pl_module.named_children()] or ["<attribute>"]
    why = ("no Hugging Face submodule was found" if not candidates
           else f"several Hugging Face submodules were found ({candidates})")
    return Target(pl_module, "", note=(
        f"{type(pl_module).__name__}.forward{signature} takes no `input_ids`, and {why}. {CONTRACT}. "
        f"Either pass module=\"<attribute>\" naming the submodule that takes input_ids (e.g. module="
        f"{(candidates or children)[0]!r}), or give the LightningModule a forward(input_ids, attention_mask=None)"
    ))


def _has_submodule(root: nn.Module, attribute: str) -> bool:
    try:
        return isinstance(root.get_submodule(attribute), nn.Module)
    except AttributeError:
        return False


def _signature(module: nn.Module) -> str:
    try:
        return str(inspect.signature(module.forward))
    except (TypeError, ValueError):
        return "(...)"
