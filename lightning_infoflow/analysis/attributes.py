"""Which attributes of a word a layer keeps: Eqs. 8-9 of Guan et al. (ICML 2019), Sec. 3.3 and Fig. 8.

A *concept* ``c`` is a named set of words (e.g. "negative emotion": sadness, grief, misery, ...). For a
word ``x_i`` of a probe sentence and the Gaussian ``p(x~_i | s) = N(x_i, sigma_i^2 I)`` that the estimator
learned for each layer,

    A_i = log p(x_i | s)              - E_{x' ~ vocabulary} log p(x' | s)        (Eq. 8)
    A_c = E_{x' in c} log p(x' | s)   - E_{x' ~ vocabulary} log p(x' | s)        (Eq. 9)
    r_{i,c} = A_i - A_c

``r_{i,c}`` is the information of the word that remains once the common attribute ``c`` is taken away: a
small ``r`` means the layer's state is about as confident of the concept's words as of the word itself.

With the isotropic Gaussian the constants cancel and ``r_{i,c} = E_{x' in c} ||x' - x_i||^2 / (2 sigma_i^2)``:
within a layer the order of the concepts is set by the embedding geometry, and the layer scales every
concept by ``1 / sigma_i^2`` (the paper's Fig. 8 shows exactly this: curves that fall together through the
layers, a model's concepts separated by a constant factor). ``likelihood="state"`` instead scores each
candidate word by how well the layer's state is reproduced when it replaces ``x_i``,
``log p(x' | s) = -||Phi(x with x_i := x') - s||^2 / lam`` (per hidden unit normalised by its variance over
the probe, as in Eq. 7): the likelihood behind the MLE term of Eq. 5, which equals the Gaussian one for
a linear layer with isotropic Jacobian and otherwise sees *which directions* of the embedding a layer
keeps. It costs one forward per candidate word and layer stack (batched).

The expectation over the vocabulary runs over ``num_random`` (default 2,000) token embeddings drawn
without replacement from the embedding matrix, leaving out special tokens (the tokenizer's special ids,
tokens written ``[...]`` or ``<...>`` such as BERT's ``[unused17]``, and the embedding's ``padding_idx``);
all of them when the vocabulary is smaller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

import torch
from torch import Tensor, nn

from lightning_infoflow.analysis.vocabulary import (
    ALL_WORDS,
    ConceptSpec,
    Vocabulary,
    concept_vectors,
    load_concepts,
    random_ids,
)
from lightning_infoflow.core import guard, inputs
from lightning_infoflow.core.result import InfoFlowResult
from lightning_infoflow.core.runner import ProbeRunner

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lightning_infoflow.core.estimator import InfoFlowEstimator


__all__ = ["WordAttributes", "word_attributes", "load_concepts", "attribute_figure", "ALL_WORDS"]


# ---------------------------------------------------------------------------------------------- result


@dataclass
class WordAttributes:
    """Eqs. 8-9 for one word of one probe sentence, every layer and every concept.

    Attributes:
        layer_names: one name per row (the estimator result's rows).
        concepts: concept names, one per column.
        word: the word as text (its word pieces joined).
        sentence: index of the probe sentence.
        positions: the word's positions in the sentence (several for a word split into word pieces).
        word_attribute: ``A_i`` (Eq. 8), float64 ``[L]`` nats.
        concept_attribute: ``A_c`` (Eq. 9), float64 ``[L, C]`` nats.
        remaining: ``r_{i,c} = A_i - A_c``, float64 ``[L, C]`` nats.
        sigma: the word's noise scale per layer ``[L]`` (for several pieces, ``sqrt(sum sigma_p^2) / P``).
        concept_words: the words each concept was computed from (``["*"]`` for the random sample).
        missing: per concept, words the vocabulary lacks (left out).
        split: per concept, words that split into several word pieces, with their pieces.
        split_policy: ``"average"`` (a split word is the mean of its pieces' embeddings) or ``"skip"``.
        num_random: vocabulary embeddings the expectation over ``X_i`` ran over.
        likelihood: ``"gaussian"`` (the paper's) or ``"state"``.
    """

    layer_names: list[str]
    concepts: list[str]
    word: str
    sentence: int
    positions: list[int]
    word_attribute: Tensor
    concept_attribute: Tensor
    remaining: Tensor
    sigma: Tensor
    concept_words: dict[str, list[str]]
    missing: dict[str, list[str]] = field(default_factory=dict)
    split: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    split_policy: str = "average"
    num_random: int = 0
    likelihood: str = "gaussian"

    def report(self) -> str:
        """A few lines on what was left out or averaged, for logs."""
        lines = [f"word {self.word!r} (sentence {self.sentence}, positions {self.positions}); "
                 f"{self.num_random} random vocabulary words; likelihood={self.likelihood}"]
        for c in self.concepts:
            used = self.concept_words[c]
            line = f"  {c}: " + ("the random sample" if used == [ALL_WORDS] else f"{len(used)} words")
            if self.missing.get(c):
                line += f"; not in the vocabulary (left out): {', '.join(self.missing[c])}"
            if self.split.get(c):
                verb = "averaged over pieces" if self.split_policy == "average" else "split, left out"
                parts = ", ".join(f"{w}={'+'.join(p)}" for w, p in self.split[c].items())
                line += f"; {verb}: {parts}"
            lines.append(line)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors and primitives (``torch.save``-able, loads with ``weights_only=True``)."""
        return {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}


# ---------------------------------------------------------------------------------------------- computation


def _embedding_matrix(source: Any) -> tuple[Tensor, Optional[int]]:
    from lightning_infoflow.core.estimator import InfoFlowEstimator

    if isinstance(source, InfoFlowEstimator):
        module = source.embedding_module
        if not isinstance(module, nn.Embedding):
            raise ValueError(
                f"the estimator's embedding module {source.embedding_name!r} is a {type(module).__name__}, not an "
                "nn.Embedding, so its vocabulary embeddings are unknown; pass the vocabulary embeddings [V, K] in the "
                "space where the noise was added instead of the estimator"
            )
        source = module
    if isinstance(source, nn.Embedding):
        return source.weight.detach(), source.padding_idx
    if isinstance(source, Tensor) and source.dim() == 2:
        return source.detach(), None
    raise ValueError(
        "the first argument must be an InfoFlowEstimator, an nn.Embedding or a [V, K] tensor of vocabulary "
        f"embeddings, got {type(source).__name__}"
    )


def _word_ids(result: InfoFlowResult, sentence: int, positions: list[int], vocab: Vocabulary,
              batch: Optional[inputs.Batch]) -> list[int]:
    if batch is not None:
        ids = inputs.input_ids_of(batch)
        return [int(ids[sentence, p]) for p in positions]
    if result.tokens is not None:
        out = []
        for p in positions:
            token = result.tokens[sentence][p]
            i = vocab.token_id(token)
            if i is None:
                raise ValueError(f"token {token!r} at position {p} is not in the vocabulary; pass batch=")
            out.append(i)
        return out
    raise ValueError("the result holds no tokens: pass batch= (the probe batch given to estimate) for the word's ids")


def _gaussian_log_p(candidates: Tensor, centre: Tensor, sig2: Tensor) -> Tensor:
    """``log N(x'; centre, sig2 I)`` for every layer and candidate: ``[L, N]`` (float64)."""
    k = centre.shape[-1]
    d2 = (candidates - centre).pow(2).sum(-1)  # [N]
    return -0.5 * k * torch.log(2 * math.pi * sig2).unsqueeze(1) - d2.unsqueeze(0) / (2 * sig2.unsqueeze(1))


def _state_log_p(est: InfoFlowEstimator, result: InfoFlowResult, batch: inputs.Batch, sentence: int,
                 position: int, candidates: Tensor, chunk: int, reference: Optional[inputs.Batch] = None) -> Tensor:
    """``-||Phi(x with x_i := x') - s||^2 / lam`` per layer and candidate: ``[L, N]`` (float64).

    Runs through the estimator's hooked forward (:class:`~lightning_infoflow.core.runner.ProbeRunner`):
    the same layers, time axes, rows, checks and per-unit normalisation (over ``reference``, default
    ``batch``) as the estimate.
    """
    model = est.model
    device = guard.device_of(model)
    full = inputs.to_device(batch, device)
    mask = result.mask.to(device)
    runner = ProbeRunner(model, est.embedding_name, est.layer_names)
    ref_mask = None
    if reference is not None:
        ref_mask = inputs.word_mask(reference, est.pad_token_id).to(device)
        reference = inputs.to_device(reference, device)
    with guard.model_untouched(model, device), torch.no_grad():
        prep = runner.prepare(full, mask, est.position, noise_scale=result.sigma_max, reference=reference,
                              reference_mask=ref_mask, seed=est.seed + 1)
        if [r.name for r in prep.rows] != list(result.layer_names):
            raise ValueError(f"the estimator's rows {[r.name for r in prep.rows]} differ from the result's "
                             f"{result.layer_names}; pass the estimator and batch that produced the result")
        out = torch.zeros(len(prep.rows), candidates.shape[0], dtype=torch.float64)
        for a in range(0, candidates.shape[0], chunk):
            cand = candidates[a:a + chunk].to(device=device, dtype=prep.x.dtype)
            rows = torch.full((cand.shape[0],), sentence, dtype=torch.long, device=device)
            x = prep.x[rows].clone()
            x[:, position] = cand
            states: dict[str, Tensor] = {}
            runner.forward(prep, runner.copies(prep, rows), x, runner.layer_names, states.__setitem__)
            for g, row in enumerate(prep.rows):
                diff = (states[row.module_name] - prep.clean(g)[rows]) * prep.inv_std[row.module_name]
                err = (diff.pow(2).sum(-1) * prep.row_mask(g, rows)).sum(-1)
                out[g, a:a + cand.shape[0]] = (-err / est.lam).double().cpu()
    return out


def word_attributes(
    source: Union[InfoFlowEstimator, nn.Embedding, Tensor],
    result: InfoFlowResult,
    sentence: int,
    word: Union[int, Sequence[int]],
    concepts: ConceptSpec,
    vocab: Any,
    *,
    batch: Optional[inputs.Batch] = None,
    reference: Optional[inputs.Batch] = None,
    num_random: int = 2000,
    seed: int = 0,
    split: Literal["average", "skip"] = "average",
    likelihood: Literal["gaussian", "state"] = "gaussian",
    chunk_size: int = 256,
) -> WordAttributes:
    """``A_i`` (Eq. 8), ``A_c`` (Eq. 9) and ``r_{i,c} = A_i - A_c`` for one word, every layer and concept.

    Args:
        source: where the vocabulary embeddings come from: the :class:`~lightning_infoflow.InfoFlowEstimator`
            that produced ``result`` (its embedding module must be an ``nn.Embedding``), an ``nn.Embedding``,
            or a ``[V, K]`` tensor in the space where the noise was added.
        result: the estimator's result for the probe batch.
        sentence: index of the probe sentence.
        word: the word's position in the sentence, or the positions of its word pieces (then the word is the
            mean of its pieces' embeddings, with variance ``sum_p sigma_p^2 / P^2``).
        concepts: ``{name: [words]}``, a JSON / YAML file or a shipped set's name (see :func:`load_concepts`).
        vocab: a Hugging Face tokenizer, a ``{word: id}`` mapping or a list of words indexed by id. With a
            tokenizer a concept word that splits into word pieces is averaged over them (``split="average"``)
            or left out (``split="skip"``); either way it is listed in ``WordAttributes.split``. Words the
            vocabulary lacks (or that a tokenizer maps to its unknown token) are listed in ``missing``.
        batch: the probe batch given to ``estimate``: the word's token ids are read from it (otherwise from
            ``result.tokens`` through ``vocab``). Required for ``likelihood="state"``.
        reference: for ``likelihood="state"``, the batch whose hidden states normalise each unit: the
            ``reference`` given to ``estimate``, if any (default: ``batch``). Pass it when ``batch`` holds
            few sentences, since a unit's spread over one short sentence is a poor scale.
        num_random: vocabulary words drawn for the expectation over ``X_i`` (all when the vocabulary is smaller).
        seed: seed of that draw.
        split: ``"average"`` or ``"skip"`` for concept words made of several word pieces.
        likelihood: ``"gaussian"`` (the paper: ``N(x_i, sigma_i^2 I)``) or ``"state"`` (how well the layer's
            state is reproduced with the candidate word in place of ``x_i``; ``source`` must be the estimator,
            one position only). See the module docstring.
        chunk_size: candidate words per forward for ``likelihood="state"``.

    Returns:
        A :class:`WordAttributes` with ``remaining`` and ``concept_attribute`` ``[L, C]``.

    Raises:
        ValueError: a padded or out-of-range position, a concept with no usable word, an embedding dimension
            that differs from the result's, or ``likelihood="state"`` without the estimator and batch.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> from lightning_infoflow import InfoFlowEstimator
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> words = ["<pad>", "sad", "grief", "film", "movie", "unhappiness", "tension", "and", "domestic"]
        >>> model = nn.Sequential(nn.Embedding(len(words), 8), nn.Linear(8, 8), nn.Tanh())
        >>> ids = torch.tensor([[8, 6, 7, 5]])
        >>> est = InfoFlowEstimator(model, layers=["1", "2"], embedding="0", steps=0)
        >>> res = est.estimate(ids)
        >>> attrs = word_attributes(est, res, sentence=0, word=3, batch=ids, vocab=words,
        ...                         concepts={"emotion": ["sad", "grief"], "noun": ["film", "movie"]})
        >>> attrs.concepts, tuple(attrs.remaining.shape), attrs.word
        (['emotion', 'noun'], (2, 2), 'unhappiness')
    """
    sentence, positions = _checked_word(result, sentence, word, likelihood, split, num_random)
    matrix, padding_idx = _embedding_matrix(source)
    if matrix.shape[1] != result.embedding_dim:
        raise ValueError(f"the vocabulary embeddings have dimension {matrix.shape[1]}, the result "
                         f"{result.embedding_dim}; pass the embeddings of the space where the noise was added")
    matrix = matrix.detach().cpu()
    voc = Vocabulary(vocab)
    concept_map = load_concepts(concepts)
    ids = _word_ids(result, sentence, positions, voc, batch)
    centre = matrix[ids].double().mean(0)
    vectors, used, missing, pieces = concept_vectors(concept_map, voc, matrix, split)
    sample = random_ids(matrix, voc, padding_idx, num_random, seed)
    names = list(concept_map)
    sizes = [0 if vectors[c] is None else vectors[c].shape[0] for c in names]  # type: ignore[union-attr]
    candidates = torch.cat([centre.unsqueeze(0), matrix[sample].double()]
                           + [v for v in vectors.values() if v is not None])

    sigma = result.sigma[:, sentence, positions].double()  # [L, P]
    sig2 = sigma.pow(2).sum(-1) / len(positions) ** 2
    if likelihood == "gaussian":
        log_p = _gaussian_log_p(candidates, centre, sig2)
    else:
        from lightning_infoflow.core.estimator import InfoFlowEstimator

        if not isinstance(source, InfoFlowEstimator) or batch is None:
            raise ValueError("likelihood='state' needs the estimator as `source` and the probe `batch`")
        if len(positions) != 1:
            raise ValueError("likelihood='state' replaces one word: pass one position (e.g. one word piece)")
        log_p = _state_log_p(source, result, batch, sentence, positions[0], candidates, chunk_size, reference)
    a_word, a_concept = _attributes(log_p, len(sample), sizes)
    return WordAttributes(
        layer_names=list(result.layer_names),
        concepts=names,
        word=voc.label(ids),
        sentence=sentence,
        positions=positions,
        word_attribute=a_word,
        concept_attribute=a_concept,
        remaining=a_word.unsqueeze(1) - a_concept,
        sigma=sig2.sqrt().float(),
        concept_words=used,
        missing=missing,
        split=pieces,
        split_policy=split,
        num_random=len(sample),
        likelihood=likelihood,
    )


def _checked_word(result: InfoFlowResult, sentence: int, word: Union[int, Sequence[int]], likelihood: str,
                  split: str, num_random: int) -> tuple[int, list[int]]:
    """The sentence index and the word's positions, both non-negative; a ValueError for bad arguments."""
    if likelihood not in ("gaussian", "state"):
        raise ValueError(f"`likelihood` must be 'gaussian' or 'state', got {likelihood!r}")
    if split not in ("average", "skip"):
        raise ValueError(f"`split` must be 'average' or 'skip', got {split!r}")
    if not (isinstance(num_random, int) and num_random > 0):
        raise ValueError(f"`num_random` must be a positive int, got {num_random!r}")
    n_sent, seq = result.mask.shape
    if not -n_sent <= sentence < n_sent:
        raise ValueError(f"sentence {sentence} is outside the result's {n_sent} sentences")
    sentence %= n_sent
    positions = [word] if isinstance(word, int) else [int(p) for p in word]
    if not positions or any(not -seq <= p < seq for p in positions):
        raise ValueError(f"word position(s) {positions} are outside the sentence length {seq}")
    positions = [p % seq for p in positions]
    padded = [p for p in positions if not bool(result.mask[sentence, p])]
    if padded:
        raise ValueError(f"position(s) {padded} of sentence {sentence} are padding")
    return sentence, positions


def _attributes(log_p: Tensor, n_random: int, sizes: list[int]) -> tuple[Tensor, Tensor]:
    """``A_i`` ``[L]`` and ``A_c`` ``[L, C]`` from ``log p`` of the word, the random sample and the concepts'
    words, in that order (a concept of size 0 is the random sample itself)."""
    own, rand = log_p[:, 0], log_p[:, 1:1 + n_random].mean(1)
    cols, offset = [], 1 + n_random
    for n in sizes:
        if n == 0:
            cols.append(rand)
        else:
            cols.append(log_p[:, offset:offset + n].mean(1))
            offset += n
    concept_lp = torch.stack(cols, dim=1)  # [L, C]
    return own - rand, concept_lp - rand.unsqueeze(1)


# ---------------------------------------------------------------------------------------------- figure


def attribute_figure(
    attrs: Union[WordAttributes, Sequence[WordAttributes]],
    *,
    titles: Optional[Sequence[str]] = None,
    log_scale: bool = False,
    width: float = 3.6,
    height: float = 3.0,
) -> Figure:
    """Fig. 8 of the paper: ``r_{i,c}`` against the layer, one line per concept, one panel per result.

    Pass several :class:`WordAttributes` (e.g. one per model) to get panels side by side. Built on
    ``matplotlib.figure.Figure`` without pyplot state; the caller saves or logs it.

    Example::

        >>> import torch
        >>> a = WordAttributes(["l0", "l1"], ["noun", "emotion"], "unhappiness", 0, [3],
        ...                    torch.tensor([4.0, 2.0]), torch.tensor([[1.0, 3.0], [0.5, 1.5]]),
        ...                    torch.tensor([[3.0, 1.0], [1.5, 0.5]]), torch.ones(2),
        ...                    {"noun": ["film"], "emotion": ["sad"]})
        >>> fig = attribute_figure(a)
        >>> len(fig.axes), len(fig.axes[0].lines)
        (1, 2)
    """
    from matplotlib.figure import Figure

    items = [attrs] if isinstance(attrs, WordAttributes) else list(attrs)
    if not items:
        raise ValueError("attribute_figure needs at least one WordAttributes")
    if titles is not None and len(titles) != len(items):
        raise ValueError(f"{len(titles)} titles for {len(items)} panels")
    fig = Figure(figsize=(width * len(items), height), layout="constrained")
    axes = fig.subplots(1, len(items), squeeze=False)[0]
    for k, (ax, a) in enumerate(zip(axes, items)):
        layers = range(1, len(a.layer_names) + 1)
        for c, name in enumerate(a.concepts):
            ax.plot(layers, a.remaining[:, c].numpy(), marker="o", markersize=3, label=name)
        ax.set_xticks(list(layers))
        ax.set_xlabel("layer")
        if k == 0:
            ax.set_ylabel(r"$r_{i,c}$ (nats)")
        if log_scale:
            ax.set_yscale("log")
        ax.set_title(titles[k] if titles is not None else f"'{a.word}'")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize="small", frameon=False)
    return fig
