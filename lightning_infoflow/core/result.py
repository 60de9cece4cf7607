"""InfoFlowResult: what one estimation produced, and its plain on-disk format."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor

from lightning_infoflow.core import measures
from lightning_infoflow.core.files import atomic_write

_FORMAT = "lightning_infoflow.result/v1"


@dataclass
class InfoFlowResult:
    """Per-word noise scales, entropies and information for every watched layer and probe sentence.

    Attributes:
        layer_names: one name per row of the tensors (a module name, or ``"name@t"`` for one time step).
        sigma: float32 ``[L, B, T]`` learned noise scale per word; NaN at padded positions.
        mask: bool ``[B, T]``, True at real (non-padded) words.
        sigma_max: the upper bound of ``sigma`` (a word at the bound is discarded by the layer).
        embedding_dim: K, the dimension of a word embedding.
        at_bound: bool ``[L, B, T]``, True where a word ended at ``sigma_max`` (ignored by the layer).
        loss: float32 ``[L]`` final value of Eq. 7 per layer, averaged over sentences.
        tokens: optional word strings per sentence, for labels.
        meta: free-form primitives (step, lam, steps, ...).
        unstable: bool ``[L, B, T]``, True where the layer's output was not finite under the noise: the
            word's sigma is NaN, and every summary of its layer (``layer_information``, ``mean_entropy``,
            ``effective_words``) and of its sentence (``sentence_information``) is NaN rather than an
            average that silently leaves it out. All False when not given (files written before the field).

    Example::

        >>> import torch
        >>> r = InfoFlowResult(["l0"], torch.tensor([[[1.0, 10.0]]]), torch.ones(1, 2, dtype=torch.bool),
        ...                    sigma_max=10.0, embedding_dim=4)
        >>> r.information
        tensor([[[9.2103, 0.0000]]])
        >>> r.layer_information
        tensor([4.6052])
    """

    layer_names: list[str]
    sigma: Tensor
    mask: Tensor
    sigma_max: float
    embedding_dim: int
    at_bound: Optional[Tensor] = None
    loss: Optional[Tensor] = None
    tokens: Optional[list[list[str]]] = None
    meta: dict[str, Any] = field(default_factory=dict)
    unstable: Optional[Tensor] = None

    def __post_init__(self) -> None:
        if self.at_bound is None:
            self.at_bound = (self.sigma >= self.sigma_max * (1 - 1e-4)) & self.mask.expand_as(self.sigma)
        if self.loss is None:
            self.loss = torch.full((len(self.layer_names),), float("nan"))
        if self.unstable is None:
            self.unstable = torch.zeros(self.sigma.shape, dtype=torch.bool)

    def _unstable_layers(self) -> Tensor:
        """``[L]``: True for a layer with any unstable word."""
        assert self.unstable is not None
        return self.unstable.flatten(1).any(-1)

    @property
    def entropy(self) -> Tensor:
        """H(X_i | s) in nats (Eq. 6), ``[L, B, T]``, NaN at padding."""
        return measures.word_entropy(self.sigma, self.embedding_dim)

    @property
    def information(self) -> Tensor:
        """Information each layer keeps of each word, ``K * log(sigma_max / sigma_i)`` nats, ``[L, B, T]``.

        0 for a word the layer ignores (sigma at the bound), NaN at padding.
        """
        info = measures.word_information(self.sigma, self.sigma_max, self.embedding_dim)
        return info.masked_fill(~self.mask.expand_as(info), float("nan"))

    @property
    def sentence_information(self) -> Tensor:
        """Sum of word information per sentence, ``[L, B]`` (sentence level, Eq. 3)."""
        assert self.unstable is not None
        info = measures.sentence_information(self.information)
        return info.masked_fill(self.unstable.any(-1), float("nan"))

    @property
    def layer_information(self) -> Tensor:
        """Mean information per real word over all probe sentences, ``[L]`` nats.

        The corpus-level information of Eq. 2 (averaged over sentences) divided by the number of words.
        """
        info = measures.mean_word_information(self.information)
        return info.masked_fill(self._unstable_layers(), float("nan"))

    @property
    def mean_entropy(self) -> Tensor:
        """Mean word entropy H(X_i | s) per layer, ``[L]`` nats."""
        return measures.mean_word_information(self.entropy).masked_fill(self._unstable_layers(), float("nan"))

    @property
    def effective_words(self) -> Tensor:
        """Effective number of words each layer keeps, averaged over sentences (that have a state), ``[L]``."""
        words = torch.nanmean(measures.effective_words(self.information), dim=-1)
        return words.masked_fill(self._unstable_layers(), float("nan"))

    def words(self, sentence: int) -> list[str]:
        """The real (non-padded) words of one probe sentence: its tokens, or their positions as text.

        >>> r = InfoFlowResult(["l0"], torch.ones(1, 1, 3), torch.tensor([[True, True, False]]), 10.0, 4,
        ...                    tokens=[["a", "b", "[PAD]"]])
        >>> r.words(0), r.select([0]).words(0)
        (['a', 'b'], ['a', 'b'])
        """
        n = int(self.mask[sentence].sum())
        if self.tokens and sentence < len(self.tokens):
            return list(self.tokens[sentence][:n])
        return [str(i) for i in range(n)]

    def select(self, sentences: Union[Tensor, Sequence[int]]) -> InfoFlowResult:
        """The result for a subset of the probe sentences (indices into the sentence dimension)."""
        idx = torch.as_tensor(sentences, dtype=torch.long)
        return InfoFlowResult(
            layer_names=list(self.layer_names),
            sigma=self.sigma[:, idx],
            mask=self.mask[idx],
            sigma_max=self.sigma_max,
            embedding_dim=self.embedding_dim,
            at_bound=None if self.at_bound is None else self.at_bound[:, idx],
            loss=self.loss,
            tokens=[self.tokens[i] for i in idx.tolist()] if self.tokens else None,
            meta=dict(self.meta),
            unstable=None if self.unstable is None else self.unstable[:, idx],
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of tensors and primitives (loads with ``torch.load(weights_only=True)``)."""
        return {
            "format": _FORMAT,
            "layer_names": list(self.layer_names),
            "sigma": self.sigma,
            "mask": self.mask,
            "entropy": self.entropy,
            "information": self.information,
            "at_bound": self.at_bound,
            "loss": self.loss,
            "sigma_max": float(self.sigma_max),
            "embedding_dim": int(self.embedding_dim),
            "tokens": self.tokens,
            "meta": dict(self.meta),
            "unstable": self.unstable,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InfoFlowResult:
        if data.get("format") != _FORMAT:
            raise ValueError(f"not an infoflow result (format={data.get('format')!r}, expected {_FORMAT!r})")
        return cls(
            layer_names=list(data["layer_names"]),
            sigma=data["sigma"],
            mask=data["mask"],
            sigma_max=float(data["sigma_max"]),
            embedding_dim=int(data["embedding_dim"]),
            at_bound=data["at_bound"],
            loss=data["loss"],
            tokens=data["tokens"],
            meta=dict(data["meta"]),
            unstable=data.get("unstable"),  # absent from files written before the field
        )

    def save(self, path: Union[str, os.PathLike[str]]) -> None:
        """Write the result with ``torch.save`` as a plain dict; read it back with :meth:`load` or with
        ``torch.load(path, weights_only=True)`` without this package. The write is atomic: a failure
        leaves no partial file (:func:`~lightning_infoflow.core.files.atomic_write`)."""
        atomic_write(path, lambda f: torch.save(self.to_dict(), f))

    @classmethod
    def load(cls, path: Union[str, os.PathLike[str]]) -> InfoFlowResult:
        return cls.from_dict(torch.load(path, map_location="cpu", weights_only=True))
