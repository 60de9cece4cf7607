"""Concept sets for :func:`lightning_infoflow.word_attributes` (Sec. 3.3 of Guan et al., 2019).

``sst2_example.json`` is a small hand-made set around the paper's example, the word *unhappiness* in the
SST-2 phrase *domestic tension and unhappiness*: every word in it occurs in the SST-2 train or dev split.
Load it with ``load_concepts("sst2_example")`` or read the file from ``EXAMPLE_CONCEPTS``.
"""

from __future__ import annotations

from pathlib import Path

EXAMPLE_CONCEPTS = Path(__file__).with_name("sst2_example.json")

__all__ = ["EXAMPLE_CONCEPTS"]
