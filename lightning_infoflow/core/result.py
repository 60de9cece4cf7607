"""InfoFlowResult: what one estimation produced, and its plain on-disk format."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import torch
from torch import Tensor

from lightning_infoflow.core import measures, uncertainty
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
        noise_se: float32 ``[L]`` standard error of ``layer_information`` from the estimator's own noise
            (another seed, same probe; :class:`~lightning_infoflow.core.uncertainty.StepNoise`), nats per
            word. NaN when unknown (``steps=0``, a subset of sentences, files written before the field).
        state_spread: float32 ``[L]`` how much each layer's clean state varies over the probe relative to
            its magnitude (:func:`~lightning_infoflow.core.hidden.state_spread`, in ``[0, 1]``); a layer below
            :data:`~lightning_infoflow.core.measures.COLLAPSED_SPREAD` is collapsed (:attr:`collapsed`).
            NaN when unknown (files written before the field).

    Summaries that do not depend on ``sigma_max`` (while no word sits at the bound): ``layer_log_sigma``,
    ``effective_words``, ``information_se``-based intervals' widths, differences of ``layer_information``
    between results or layers of one model. ``information``, ``layer_information`` and
    ``sentence_information`` carry the common offset ``K log sigma_max``.

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
    noise_se: Optional[Tensor] = None
    state_spread: Optional[Tensor] = None

    def __post_init__(self) -> None:
        if self.at_bound is None:
            self.at_bound = (self.sigma >= self.sigma_max * (1 - 1e-4)) & self.mask.expand_as(self.sigma)
        if self.loss is None:
            self.loss = torch.full((len(self.layer_names),), float("nan"))
        if self.unstable is None:
            self.unstable = torch.zeros(self.sigma.shape, dtype=torch.bool)
        if self.noise_se is None:
            self.noise_se = torch.full((len(self.layer_names),), float("nan"))
        if self.state_spread is None:
            self.state_spread = torch.full((len(self.layer_names),), float("nan"))

    def _unstable_layers(self) -> Tensor:
        """``[L]``: True for a layer with any unstable word."""
        assert self.unstable is not None
        return self.unstable.flatten(1).any(-1)

    @property
    def stated_error(self) -> float:
        """The largest layer's estimated error of ``log sigma`` at the end of the optimisation
        (``meta["error"]``, from ``steps="auto"``); NaN when the estimate stated none (fixed steps) or the
        file holds no list of numbers there.

        >>> import torch
        >>> r = InfoFlowResult(["a", "b"], torch.ones(2, 1, 3), torch.ones(1, 3, dtype=torch.bool), 10.0, 4,
        ...                    meta={"error": [0.02, 0.04]})
        >>> r.stated_error
        0.04
        """
        try:  # a result file written elsewhere may hold anything here
            errors = [float(e) for e in self.meta.get("error") or []]
        except (TypeError, ValueError):
            return float("nan")
        errors = [e for e in errors if e == e]
        return max(errors) if errors else float("nan")

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
        """Effective number of words each layer focuses on, averaged over sentences (that have a state), ``[L]``.

        ``exp(entropy)`` of each word's share of the sentence's precision ``1 / sigma_i^2``
        (:func:`~lightning_infoflow.core.measures.effective_words`); free of ``sigma_max``. Files written
        before this definition logged the participation ratio of the information instead.
        """
        assert self.at_bound is not None
        words = torch.nanmean(measures.effective_words(self.sigma, self.at_bound), dim=-1)
        return words.masked_fill(self._unstable_layers(), float("nan"))

    @property
    def layer_log_sigma(self) -> Tensor:
        """Mean ``log sigma`` per real word, ``[L]`` nats per embedding dimension; free of ``sigma_max``.

        ``-embedding_dim`` times the difference of two layers' (or two analyses') values is the difference
        of their ``layer_information`` (while no word sits at the bound).
        """
        return measures.mean_log_sigma(self.sigma).masked_fill(self._unstable_layers(), float("nan"))

    @property
    def layer_information_se(self) -> Tensor:
        """Standard error of ``layer_information`` over probe sentences and estimator noise, ``[L]`` nats.

        A seeded bootstrap over sentences (:func:`~lightning_infoflow.core.uncertainty.bootstrap_se`): how
        much the value would move with another probe of as many sentences and another seed. NaN with one
        sentence. For another seed on the same probe only, see ``noise_se``.
        """
        info = self.information
        sums = torch.nansum(info, dim=-1)
        words = (~info.isnan()).sum(-1).float()
        return uncertainty.bootstrap_se(sums, words).masked_fill(self._unstable_layers(), float("nan"))

    def layer_information_interval(self, level: float = 0.9,
                                   source: Literal["probe", "seed"] = "probe") -> tuple[Tensor, Tensor]:
        """``(low, high)``, each ``[L]``: ``layer_information +/- z * se``, a normal interval of probability ``level``.

        ``source="probe"`` uses ``layer_information_se`` (another probe and seed), ``"seed"`` uses
        ``noise_se`` (another seed, same probe).

        >>> r = InfoFlowResult(["l0"], torch.ones(1, 1, 2), torch.ones(1, 2, dtype=torch.bool), 10.0, 4,
        ...                    noise_se=torch.tensor([0.5]))
        >>> [round(float(t), 2) for t in r.layer_information_interval(0.9, source="seed")]
        [8.39, 10.03]
        """
        if source not in ("probe", "seed"):
            raise ValueError(f"`source` must be 'probe' or 'seed', got {source!r}")
        se = self.layer_information_se if source == "probe" else self.noise_se
        assert se is not None
        half = uncertainty.normal_quantile(level) * se
        return self.layer_information - half, self.layer_information + half

    def collapsed(self, threshold: float = measures.COLLAPSED_SPREAD) -> Tensor:
        """``[L]`` bool: layers whose state spread is below ``threshold`` (False where it is unknown)."""
        assert self.state_spread is not None
        return self.state_spread < threshold

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
            state_spread=self.state_spread,
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
            "noise_se": self.noise_se,
            "state_spread": self.state_spread,
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
            noise_se=data.get("noise_se"),  # the same for these two
            state_spread=data.get("state_spread"),
        )

    def save(self, path: Union[str, os.PathLike[str]]) -> None:
        """Write the result with ``torch.save`` as a plain dict; read it back with :meth:`load` or with
        ``torch.load(path, weights_only=True)`` without this package. The write is atomic: a failure
        leaves no partial file (:func:`~lightning_infoflow.core.files.atomic_write`)."""
        atomic_write(path, lambda f: torch.save(self.to_dict(), f))

    @classmethod
    def load(cls, path: Union[str, os.PathLike[str]]) -> InfoFlowResult:
        return cls.from_dict(torch.load(path, map_location="cpu", weights_only=True))
