"""Concepts (named sets of words) and the vocabulary they are looked up in, for the word attributes.

:func:`load_concepts` reads concepts from a dict, a JSON / YAML file or a shipped set;
:class:`Vocabulary` maps words to token ids (a Hugging Face tokenizer, a ``{word: id}`` mapping or an
``id -> word`` list) and knows the special tokens; :func:`concept_vectors` and :func:`random_ids` give
the embeddings that Eqs. 8-9 average over.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor

from lightning_infoflow.core.tokens import is_special_token

ConceptSpec = Union[Mapping[str, Union[Sequence[str], str]], str, "os.PathLike[str]"]
ALL_WORDS = "*"

__all__ = ["ALL_WORDS", "ConceptSpec", "Vocabulary", "concept_vectors", "load_concepts", "random_ids"]


# ---------------------------------------------------------------------------------------------- concepts


def load_concepts(source: ConceptSpec) -> dict[str, Union[list[str], str]]:
    """Read concepts: a dict, a JSON / YAML file, or the name of a shipped set (``"sst2_example"``).

    A file holds either ``{name: [words]}`` or ``{"concepts": {name: [words]}, ...}`` (other keys, e.g. a
    description, are ignored). The value ``"*"`` (:data:`ALL_WORDS`) stands for the random vocabulary
    sample itself, the baseline of Eqs. 8-9.

    Raises:
        ValueError: a malformed file, an empty concept, or words that are not strings.
        FileNotFoundError: no such file or shipped set.

    Example::

        >>> concepts = load_concepts("sst2_example")
        >>> sorted(concepts)[:2], "grief" in concepts["negative emotion"]
        (['all words', 'negative adjective'], True)
    """
    if isinstance(source, Mapping):
        data: Any = dict(source)
    else:
        path = os.fspath(source)
        if not os.path.exists(path) and os.sep not in path and "." not in path:
            from lightning_infoflow.analysis.concepts import EXAMPLE_CONCEPTS

            shipped = EXAMPLE_CONCEPTS.with_name(f"{path}.json")
            if not shipped.is_file():
                raise FileNotFoundError(f"no concept file {path!r} and no shipped concept set of that name")
            path = str(shipped)
        with open(path, encoding="utf-8") as fh:
            if path.endswith((".yaml", ".yml")):
                try:
                    import yaml
                except ImportError as err:  # pragma: no cover - depends on the environment
                    raise ImportError("reading YAML concepts needs PyYAML: pip install pyyaml") from err
                data = yaml.safe_load(fh)
            else:
                data = json.load(fh)
    if isinstance(data, Mapping) and isinstance(data.get("concepts"), Mapping):
        data = data["concepts"]
    if not isinstance(data, Mapping) or not data:
        raise ValueError("concepts must be a non-empty mapping {name: [words]} (or {'concepts': {...}})")
    out: dict[str, Union[list[str], str]] = {}
    for name, words in data.items():
        if words == ALL_WORDS:
            out[str(name)] = ALL_WORDS
            continue
        if isinstance(words, str) or not isinstance(words, Sequence) or not words:
            raise ValueError(f"concept {name!r} must be a non-empty list of words or {ALL_WORDS!r}, got {words!r}")
        if not all(isinstance(w, str) and w.strip() for w in words):
            raise ValueError(f"concept {name!r} holds entries that are not non-empty strings: {words!r}")
        out[str(name)] = [w.strip() for w in words]
    return out


# ---------------------------------------------------------------------------------------------- vocabulary


class Vocabulary:
    """Word -> token ids for a Hugging Face tokenizer, a ``{word: id}`` mapping or an ``id -> word`` list."""

    def __init__(self, vocab: Any) -> None:
        self.tokenizer = vocab if hasattr(vocab, "tokenize") and hasattr(vocab, "convert_tokens_to_ids") else None
        if self.tokenizer is not None:
            self.table: dict[str, int] = dict(self.tokenizer.get_vocab())
            self.unk = getattr(self.tokenizer, "unk_token_id", None)
            self.special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        elif isinstance(vocab, Mapping):
            self.table, self.unk, self.special = {str(k): int(v) for k, v in vocab.items()}, None, set()
        elif isinstance(vocab, Sequence) and not isinstance(vocab, str):
            self.table, self.unk, self.special = {str(w): i for i, w in enumerate(vocab)}, None, set()
        else:
            raise ValueError(
                "`vocab` must be a Hugging Face tokenizer, a {word: id} mapping or a list of words indexed by id, "
                f"got {type(vocab).__name__}"
            )
        self.special |= {i for w, i in self.table.items() if is_special_token(w)}
        self.inverse = {i: w for w, i in self.table.items()}

    def encode(self, word: str) -> Optional[list[int]]:
        """Token ids of ``word`` (several for a split word), or None when the vocabulary lacks it."""
        if self.tokenizer is None:
            return [self.table[word]] if word in self.table else None
        pieces = self.tokenizer.tokenize(word)
        ids = [int(i) for i in self.tokenizer.convert_tokens_to_ids(pieces)]
        if not ids or (self.unk is not None and self.unk in ids):
            return None
        return ids

    def token_id(self, token: str) -> Optional[int]:
        """Id of one token string exactly as the vocabulary writes it (a word piece such as ``##ness``)."""
        return self.table.get(token)

    def label(self, ids: Sequence[int]) -> str:
        pieces = [self.inverse.get(int(i), f"<{int(i)}>") for i in ids]
        return "".join(p[2:] if p.startswith("##") and k else (" " + p if k else p) for k, p in enumerate(pieces))


def concept_vectors(concepts: dict[str, Union[list[str], str]], vocab: Vocabulary, matrix: Tensor, split: str
                     ) -> tuple[dict[str, Optional[Tensor]], dict[str, list[str]], dict[str, list[str]],
                                dict[str, dict[str, list[str]]]]:
    vectors: dict[str, Optional[Tensor]] = {}
    used: dict[str, list[str]] = {}
    missing: dict[str, list[str]] = {}
    pieces: dict[str, dict[str, list[str]]] = {}
    for name, words in concepts.items():
        if words == ALL_WORDS:
            vectors[name], used[name] = None, [ALL_WORDS]
            continue
        rows, ok = [], []
        for w in words:
            ids = vocab.encode(w)
            if ids is None or any(i >= matrix.shape[0] for i in ids):
                missing.setdefault(name, []).append(w)
                continue
            if len(ids) > 1:
                pieces.setdefault(name, {})[w] = [vocab.inverse.get(i, str(i)) for i in ids]
                if split == "skip":
                    continue
            rows.append(matrix[ids].double().mean(0))
            ok.append(w)
        if not rows:
            raise ValueError(
                f"concept {name!r} has no usable word: not in the vocabulary {missing.get(name, [])}, "
                f"split and skipped {list(pieces.get(name, {}))}"
            )
        vectors[name], used[name] = torch.stack(rows), ok
    return vectors, used, missing, pieces


def random_ids(matrix: Tensor, vocab: Vocabulary, padding_idx: Optional[int], num_random: int, seed: int) -> Tensor:
    allowed = torch.ones(matrix.shape[0], dtype=torch.bool)
    for i in vocab.special | ({padding_idx} if padding_idx is not None else set()):
        if 0 <= i < matrix.shape[0]:
            allowed[i] = False
    pool = allowed.nonzero().flatten()
    if len(pool) <= num_random:
        return pool
    gen = torch.Generator().manual_seed(seed)
    return pool[torch.randperm(len(pool), generator=gen)[:num_random]].sort().values
