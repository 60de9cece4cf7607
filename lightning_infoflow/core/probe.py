"""Turning what a user passes as a probe into a fixed batch of token ids and the words to label it with."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_infoflow.core.inputs import Batch, select_rows

ProbeLike = Union[str, Sequence[str], Sequence[Sequence[int]], Tensor, Mapping[str, Any], Dataset, DataLoader]


@dataclass
class Probe:
    """A fixed probe batch: what the model's forward takes, and one word string per token."""

    batch: Batch
    tokens: list[list[str]]

    @property
    def input_ids(self) -> Tensor:
        return self.batch if isinstance(self.batch, Tensor) else self.batch["input_ids"]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, sentences: Tensor) -> Batch:
        """The batch rows of the given sentence indices (see :func:`~lightning_infoflow.core.inputs.select_rows`)."""
        return select_rows(self.batch, torch.as_tensor(sentences, dtype=torch.long), len(self))


def build_probe(
    probe: ProbeLike,
    tokenizer: Optional[Callable[..., Any]] = None,
    *,
    num_sentences: Optional[int] = None,
    max_length: Optional[int] = None,
    pad_token_id: int = 0,
) -> Probe:
    """Build a :class:`Probe` from token ids, a dict batch, strings plus a tokenizer, or a dataset.

    Args:
        probe: a LongTensor ``[B, T]``; a dict with ``input_ids`` (+ ``attention_mask``); lists of
            token ids; a list of strings (needs ``tokenizer``); the path of a text file with one
            sentence per line (a ``.tsv`` file: its first column, header skipped); or a Dataset /
            DataLoader whose first ``num_sentences`` examples are used (an example is a dict with
            ``input_ids``, a tuple whose first item is the ids, or a 1-d ids tensor).
        tokenizer: a Hugging Face tokenizer, any callable ``list[str] -> ids tensor | dict``, or the
            path of a local Hugging Face tokenizer folder (for YAML configs). Used to encode strings
            and, where it has ``convert_ids_to_tokens``, to label ids.
        num_sentences: keep at most this many sentences.
        max_length: truncate strings to this many tokens (Hugging Face tokenizers).
        pad_token_id: padding id when sentences of different lengths are stacked.

    Raises:
        ValueError: an empty probe, strings without a tokenizer, a tokenizer that returns nothing.

    Example::

        >>> p = build_probe(["a b c", "d e"], tokenizer=lambda texts: [[1, 2, 3], [4, 5]])
        >>> p.batch["input_ids"].tolist(), p.tokens
        ([[1, 2, 3], [4, 5, 0]], [['a', 'b', 'c'], ['d', 'e']])
    """
    texts: Optional[list[str]] = None
    if isinstance(tokenizer, str):
        tokenizer = _load_tokenizer(tokenizer)
    if isinstance(probe, str):
        probe = read_sentences(probe)
    if isinstance(probe, (Dataset, DataLoader)):
        batch = _from_dataset(probe, num_sentences, pad_token_id)
    elif isinstance(probe, (Tensor, Mapping)):
        batch = probe
    elif isinstance(probe, Sequence) and probe and all(isinstance(s, str) for s in probe):
        if tokenizer is None:
            raise ValueError(
                "the probe is a list of strings but no `tokenizer` was given; pass tokenizer=<a Hugging Face "
                "tokenizer or a callable list[str] -> token ids>"
            )
        strings = [str(s) for s in probe]
        texts = strings[:num_sentences] if num_sentences else strings
        batch = _encode(texts, tokenizer, max_length, pad_token_id)
    elif isinstance(probe, Sequence) and probe and all(isinstance(r, Sequence) for r in probe):
        batch = _pad([torch.as_tensor(list(r), dtype=torch.long) for r in probe], pad_token_id)
    else:
        raise ValueError(
            f"cannot use a probe of type {type(probe).__name__}: pass token ids [B, T], a dict with 'input_ids', "
            "a non-empty list of strings with a tokenizer, or a Dataset/DataLoader"
        )
    if isinstance(batch, Mapping):
        batch = dict(batch)
        if "input_ids" not in batch:
            raise ValueError(f"the probe dict has no 'input_ids' (keys: {sorted(batch)}); add the token ids")
    ids = batch if isinstance(batch, Tensor) else batch["input_ids"]
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.numel() == 0:
        shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"the probe holds no token ids (got {shape}); check the tokenizer or the probe")
    if num_sentences is not None:
        batch = ids[:num_sentences] if isinstance(batch, Tensor) else {
            k: v[:num_sentences] if isinstance(v, Tensor) and v.shape[:1] == ids.shape[:1] else v
            for k, v in batch.items()
        }
    return Probe(batch, _labels(batch, tokenizer, texts))


def read_sentences(path: str) -> list[str]:
    """Sentences of a text file, one per line; for ``.tsv`` files the first column, header skipped."""
    if not os.path.isfile(path):
        raise ValueError(f"probe file {path!r} does not exist; pass the path of a text file, one sentence per line")
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    if path.endswith(".tsv"):
        lines = [line.split("\t")[0] for line in lines]
        if lines and lines[0].strip().lower() in ("sentence", "text"):
            lines = lines[1:]
    if not lines:
        raise ValueError(f"probe file {path!r} holds no sentence")
    return lines


def _load_tokenizer(path: str) -> Callable[..., Any]:
    try:
        from transformers import AutoTokenizer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ValueError(
            "a tokenizer given by path needs transformers: pip install 'lightning-infoflow[transformers]'"
        ) from err
    return AutoTokenizer.from_pretrained(path)


def _pad(rows: list[Tensor], pad_token_id: int) -> Batch:
    """Stack rows of ids; a bare tensor when they have one length, else ids plus ``attention_mask``."""
    length = max(int(r.numel()) for r in rows)
    if all(int(r.numel()) == length for r in rows):
        return torch.stack([r.flatten().long() for r in rows])
    ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : r.numel()] = r.flatten().long()
        mask[i, : r.numel()] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _encode(texts: list[str], tokenizer: Callable[..., Any], max_length: Optional[int], pad_id: int) -> Batch:
    if hasattr(tokenizer, "convert_ids_to_tokens"):  # Hugging Face
        enc = tokenizer(texts, padding=True, truncation=max_length is not None, max_length=max_length,
                        return_tensors="pt")
        return {k: v for k, v in enc.items() if isinstance(v, Tensor)}
    out = tokenizer(texts)
    if isinstance(out, (Tensor, Mapping)):
        return out
    rows = [torch.as_tensor(r, dtype=torch.long) for r in out]
    if not rows or any(r.numel() == 0 for r in rows):
        raise ValueError("the tokenizer returned no token ids for some probe sentence; check the tokenizer")
    return _pad(rows, pad_id)


def _from_dataset(data: Union[Dataset, DataLoader], n: Optional[int], pad_id: int) -> Batch:
    n = n or 16
    rows: list[Tensor] = []
    if isinstance(data, DataLoader):
        for batch in data:
            ids = (batch["input_ids"] if isinstance(batch, Mapping)
                   else batch[0] if isinstance(batch, (tuple, list)) else batch)
            rows.extend(ids[: n - len(rows)])
            if len(rows) >= n:
                break
    else:
        for i in range(min(n, len(data))):  # type: ignore[arg-type]
            ex = data[i]
            ids = ex["input_ids"] if isinstance(ex, Mapping) else ex[0] if isinstance(ex, (tuple, list)) else ex
            rows.append(torch.as_tensor(ids))
    if not rows:
        raise ValueError("the probe dataset is empty; pass a dataset with at least one example")
    return _pad(rows, pad_id)


def _labels(batch: Batch, tokenizer: Optional[Callable[..., Any]], texts: Optional[list[str]]) -> list[list[str]]:
    ids = batch if isinstance(batch, Tensor) else batch["input_ids"]
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    lengths = mask.sum(1).tolist() if isinstance(mask, Tensor) else [ids.shape[1]] * ids.shape[0]
    out = []
    for b, row in enumerate(ids.tolist()):
        row = row[: int(lengths[b])]
        words: Optional[list[str]] = None
        if tokenizer is not None and hasattr(tokenizer, "convert_ids_to_tokens"):
            words = list(tokenizer.convert_ids_to_tokens(row))
        elif texts is not None and len(texts[b].split()) == len(row):
            words = texts[b].split()
        out.append(words if words is not None else [str(t) for t in row])
    return out
