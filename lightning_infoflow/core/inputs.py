"""The probe batch: validation, word masks, repetition and device moves; calling the model with it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

import torch
from torch import Tensor, nn

Batch = Union[Tensor, Mapping[str, Any]]


def batch_size_of(batch: Batch) -> int:
    return int(input_ids_of(batch).shape[0])


def input_ids_of(batch: Batch) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping) and isinstance(batch.get("input_ids"), Tensor):
        return batch["input_ids"]
    raise ValueError(
        "A probe batch must be a LongTensor [B, T] of token ids or a dict with 'input_ids' "
        f"(and optionally 'attention_mask'); got {type(batch).__name__}."
    )


def select_rows(batch: Batch, rows: Tensor, batch_size: int) -> Batch:
    """The batch with row ``r`` holding sentence ``rows[r]`` (copies of sentences, or a subset of them).

    Every entry that holds one item per sentence is indexed: a tensor whose first dimension is the batch,
    and a list or tuple of ``batch_size`` items (a per-sentence keyword such as ``lengths=[6, 5, 4]``).
    Other entries are passed unchanged.
    """
    if isinstance(batch, Tensor):
        return batch.index_select(0, rows.to(batch.device))
    index = rows.tolist()
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch_size:
            out[key] = value.index_select(0, rows.to(value.device))
        elif isinstance(value, (list, tuple)) and len(value) == batch_size:
            out[key] = type(value)(value[i] for i in index)
        else:
            out[key] = value
    return out


def repeat_batch(batch: Batch, times: int, batch_size: int) -> Batch:
    """``times`` copies of the batch stacked along dim 0 (copy c holds sentence c % batch_size)."""
    return select_rows(batch, torch.arange(times * batch_size) % batch_size, batch_size)


def unchanged_entries(batch: Batch, batch_size: int) -> list[str]:
    """Names of the entries :func:`select_rows` passes unchanged (not recognised as one item per sentence)."""
    if isinstance(batch, Tensor):
        return []
    return [k for k, v in batch.items()
            if not (isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == batch_size)
            and not (isinstance(v, (list, tuple)) and len(v) == batch_size)]


def call_model(model: nn.Module, batch: Batch) -> Any:
    """Call the model exactly as in training: ``model(tensor)`` or ``model(**dict)``."""
    return model(batch) if isinstance(batch, Tensor) else model(**batch)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch with every tensor moved to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def word_mask(batch: Batch, pad_token_id: Any = None) -> Tensor:
    """Validate the token ids of ``batch`` and return its ``[B, T]`` mask of real (non-padded) words.

    The mask is ``attention_mask`` where the batch has one, else ``ids != pad_token_id``, else all True.

    Raises:
        ValueError: non-integer ids, a shape other than ``[B, T]``, an empty batch, a mask of another
            shape, or a sentence that is all padding (each with the fix).
    """
    ids = input_ids_of(batch)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"token ids must be an integer tensor, got dtype {ids.dtype}; pass ids.long()")
    if ids.dim() != 2:
        raise ValueError(f"token ids must have shape [B, T], got {tuple(ids.shape)}; add a batch dimension")
    if ids.numel() == 0:
        raise ValueError(f"the probe batch is empty (shape {tuple(ids.shape)}); pass at least one sentence")
    attn = batch.get("attention_mask") if isinstance(batch, Mapping) else None  # also BatchEncoding
    if isinstance(attn, Tensor):
        if attn.shape != ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attn.shape)} but input_ids {tuple(ids.shape)}; pass the "
                "tokenizer's [B, T] mask of 1 (word) and 0 (padding)"
            )
        mask = attn.bool()
    elif pad_token_id is not None:
        mask = ids != pad_token_id
    else:
        mask = torch.ones_like(ids, dtype=torch.bool)
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"probe sentence(s) {empty} are all padding; remove them from the batch")
    return mask
