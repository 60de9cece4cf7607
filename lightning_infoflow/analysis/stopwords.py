"""Stop words: a default English list, token normalisation, and the stop-word and content-word positions of a probe."""

from __future__ import annotations

from collections.abc import Collection
from typing import Optional

import torch
from torch import Tensor

from lightning_infoflow.core.tokens import is_special_token

#: A default English stop-word list (function words); replace it with your own for other languages.
STOP_WORDS: frozenset[str] = frozenset("""
a about above after again against all am an and any are aren't as at be because been before being below
between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each
few for from further had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers
herself him himself his how how's i i'd i'll i'm i've if in into is isn't it it's its itself let's me more
most mustn't my myself no nor not of off on once only or other ought our ours ourselves out over own same
shan't she she'd she'll she's should shouldn't so some such than that that's the their theirs them
themselves then there there's these they they'd they'll they're they've this those through to too under
until up very was wasn't we we'd we'll we're we've were weren't what what's when when's where where's which
while who who's whom why why's with won't would wouldn't you you'd you'll you're you've your yours yourself
yourselves 's 're 've 'll 'd n't 'm
""".split())  # noqa: SIM905 - the list reads as text

_SUBWORD_MARKS = ("##", "\u0120", "\u2581")  # WordPiece, byte-level BPE (Ġ), SentencePiece (▁)



def word_kinds(tokens: list[list[str]], mask: Tensor,
               stop_words: Collection[str] = STOP_WORDS) -> tuple[Tensor, Tensor]:
    """Bool ``[B, T]`` masks of the stop-word and the content-word tokens of a probe (special tokens and
    punctuation are neither).

    >>> stop, content = word_kinds([["[CLS]", "the", "film", "."]], torch.ones(1, 4, dtype=torch.bool))
    >>> stop.tolist(), content.tolist()
    ([[False, True, False, False]], [[False, False, True, False]])
    """
    stops = {w.lower() for w in stop_words}
    stop = torch.zeros_like(mask)
    content = torch.zeros_like(mask)
    for b, words in enumerate(tokens):
        for t, token in enumerate(words[: mask.shape[1]]):
            word = normalise_token(token) if bool(mask[b, t]) else None
            if word is not None:
                stop[b, t] = word in stops
                content[b, t] = word not in stops
    return stop, content


def normalise_token(token: str) -> Optional[str]:
    """A token as a lower-case word for stop-word matching; ``None`` for special tokens and punctuation.

    >>> normalise_token("The"), normalise_token("\u0120the"), normalise_token("[CLS]"), normalise_token(",")
    ('the', 'the', None, None)
    """
    if is_special_token(token):
        return None
    for mark in _SUBWORD_MARKS:
        token = token.removeprefix(mark)
    word = token.strip().lower()
    if not any(ch.isalnum() for ch in word):
        return None
    return word
