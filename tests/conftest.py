"""Shared fixtures: a fixed global seed per test (models are initialised from it) and small probe batches."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # `import lit_helpers` from any rootdir / import mode

from lightning_infoflow.testing import PAD, pad_batch  # noqa: E402

# The test models are tiny: one intra-op thread is as fast as two, and far faster when other processes
# share the cores (spinning worker threads then fight over them).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same global RNG state, so model initialisations repeat."""
    torch.manual_seed(1234)


@pytest.fixture
def sentences() -> list[torch.Tensor]:
    """Three sentences of lengths 6, 3 and 8 (ids in [1, 50); 0 is padding)."""
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(1, 50, (n,), generator=gen) for n in (6, 3, 8)]


@pytest.fixture
def padded(sentences: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The three sentences right-padded with id ``PAD`` into ``input_ids`` and ``attention_mask``."""
    ids, mask = pad_batch(sentences, PAD)
    return {"input_ids": ids, "attention_mask": mask.long()}
