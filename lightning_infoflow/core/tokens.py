"""Token strings: which ones are a tokenizer's special tokens rather than words."""

from __future__ import annotations

import re

SPECIAL_TOKEN = re.compile(r"^(\[[^\[\]\s]+\]|<[^<>\s]+>)$")
"""A token written ``[...]`` or ``<...>`` without spaces inside: ``[CLS]``, ``[unused17]``, ``<s>``,
``<pad>``, ``<|endoftext|>``. Words never look like this (an emoticon such as ``<3`` is not closed)."""


def is_special_token(token: str) -> bool:
    """Whether ``token`` is a special token of a tokenizer rather than a word.

    >>> is_special_token("[CLS]"), is_special_token("[unused17]"), is_special_token("<s>"), is_special_token("the")
    (True, True, True, False)
    """
    return SPECIAL_TOKEN.match(token) is not None
