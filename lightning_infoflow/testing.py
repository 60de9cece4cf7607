"""Tiny NLP models for tests and quick experiments: built from configs, no downloads, fast on CPU.

Every model takes token ids ``[B, T]`` (or, for :func:`tiny_bert`, ``input_ids`` and
``attention_mask`` keyword arguments) exactly as it would in training. Sizes are chosen so that no
hidden width equals a probe length used in the tests (the estimator locates the time axis of a
hidden state by its length).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

PAD = 0
VOCAB = 50


def tiny_bert(layers: int = 2, hidden: int = 32, vocab: int = VOCAB, dropout: float = 0.0,
              init_range: float = 0.2) -> nn.Module:
    """A randomly initialised Hugging Face ``BertModel``: ``layers`` blocks of width ``hidden``.

    Called as ``model(input_ids=..., attention_mask=...)``; auto-resolution finds
    ``embeddings.word_embeddings`` and ``encoder.layer.*``. ``init_range`` is the std of the initial
    weights; the default 0.2 (BERT's own is 0.02) makes attention mix words noticeably, so that padding
    handled wrongly shows in the estimates.
    """
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=PAD,
        initializer_range=init_range,
    )
    return BertModel(config)


class TransformerClassifier(nn.Module):
    """Token embedding + learned positions, an ``nn.TransformerEncoder`` and a mean-pooled classifier.

    Positions where ``input_ids == pad_id`` are masked through ``src_key_padding_mask``.
    """

    def __init__(self, vocab: int = VOCAB, dim: int = 24, layers: int = 2, classes: int = 2,
                 pad_id: int = PAD, dropout: float = 0.0) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab, dim, padding_idx=pad_id)
        self.positions = nn.Parameter(0.02 * torch.randn(64, dim))
        layer = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=2 * dim, dropout=dropout,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: Tensor) -> Tensor:
        pad = input_ids == self.pad_id
        h = self.embedding(input_ids) + self.positions[: input_ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=pad)
        real = (~pad).unsqueeze(-1).to(h.dtype)
        return self.head((h * real).sum(1) / real.sum(1).clamp_min(1.0))


class BiLSTMClassifier(nn.Module):
    """A ``layers``-deep bidirectional LSTM built from one single-layer ``nn.LSTM`` per layer, max pooled."""

    def __init__(self, vocab: int = VOCAB, dim: int = 16, hidden: int = 10, layers: int = 4, classes: int = 2,
                 pad_id: int = PAD, dropout: float = 0.0) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab, dim, padding_idx=pad_id)
        sizes = [dim] + [2 * hidden] * (layers - 1)
        self.lstms = nn.ModuleList(nn.LSTM(s, hidden, batch_first=True, bidirectional=True) for s in sizes)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, input_ids: Tensor) -> Tensor:
        h = self.embedding(input_ids)
        for lstm in self.lstms:
            h, _ = lstm(self.dropout(h))
        pad = (input_ids == self.pad_id).unsqueeze(-1)
        return self.head(h.masked_fill(pad, float("-inf")).amax(1))


class StackedLSTMClassifier(nn.Module):
    """One ``nn.LSTM(num_layers=3)``: its inner layers are hidden from forward hooks (auto warns)."""

    def __init__(self, vocab: int = VOCAB, dim: int = 16, hidden: int = 10) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, num_layers=3, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, input_ids: Tensor) -> Tensor:
        h, _ = self.lstm(self.embedding(input_ids))
        return self.head(h[:, -1])


class KimCNN(nn.Module):
    """Kim (2014) text CNN: four parallel ``Conv1d`` branches of widths 1, 3, 5 and 7, max over time.

    Each branch is padded by ``width // 2`` on both sides, so its output ``[B, C, T]`` has the input's
    length ``T`` and time step ``t`` is centred on word ``t``.
    """

    def __init__(self, vocab: int = VOCAB, dim: int = 16, channels: int = 6, widths: tuple[int, ...] = (1, 3, 5, 7),
                 classes: int = 2, pad_id: int = PAD) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab, dim, padding_idx=pad_id)
        self.convs = nn.ModuleList(nn.Conv1d(dim, channels, w, padding=w // 2) for w in widths)
        self.head = nn.Linear(channels * len(widths), classes)

    def forward(self, input_ids: Tensor) -> Tensor:
        h = self.embedding(input_ids).transpose(1, 2)  # [B, K, T]
        pad = (input_ids == self.pad_id).unsqueeze(1)
        pooled = [torch.relu(conv(h)).masked_fill(pad, float("-inf")).amax(-1) for conv in self.convs]
        return self.head(torch.cat(pooled, dim=-1))


class Seq2SeqAttention(nn.Module):
    """LSTM encoder-decoder with dot-product attention over one input sequence.

    ``input_ids[:, :src_len]`` is the source and the rest the (teacher-forced) target; both go through
    the same embedding, which is called once on the whole sequence and split inside. The decoder starts
    from the encoder's final state and attends over the encoder outputs; returns logits ``[B, T - src_len, V]``.
    """

    def __init__(self, vocab: int = VOCAB, dim: int = 16, hidden: int = 12, src_len: int = 4) -> None:
        super().__init__()
        self.src_len = src_len
        self.embedding = nn.Embedding(vocab, dim)
        self.encoder = nn.LSTM(dim, hidden, batch_first=True)
        self.decoder = nn.LSTM(dim, hidden, batch_first=True)
        self.combine = nn.Linear(2 * hidden, hidden)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, input_ids: Tensor) -> Tensor:
        emb = self.embedding(input_ids)
        src, tgt = emb[:, : self.src_len], emb[:, self.src_len :]
        enc, state = self.encoder(src)
        dec, _ = self.decoder(tgt, state)
        weights = torch.softmax(dec @ enc.transpose(1, 2), dim=-1)  # [B, T_tgt, T_src]
        context = weights @ enc
        return self.out(torch.tanh(self.combine(torch.cat([dec, context], dim=-1))))


class WeightedSum(nn.Module):
    """``Phi(x) = sum_i a_i x_i``: a fixed linear combination of the word vectors, ``[B, T, K] -> [B, K]``."""

    a: Tensor

    def __init__(self, coefficients: Tensor) -> None:
        super().__init__()
        self.register_buffer("a", coefficients.float())

    def forward(self, x: Tensor) -> Tensor:
        return (self.a[None, :, None] * x).sum(1)


class LinearModel(nn.Module):
    """Embedding followed by :class:`WeightedSum`: the closed-form test case of Eq. 7.

    With ``s = sum_i a_i x_i`` the loss is ``sum_i -log sigma_i + sum_i a_i^2 sigma_i^2 / (lam var)``, so
    the optimum is ``sigma_i = sqrt(lam var / 2) / |a_i|`` (and the bound where ``a_i = 0``).
    """

    def __init__(self, coefficients: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5, 0.0), dim: int = 64,
                 vocab: int = VOCAB) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.mix = WeightedSum(torch.tensor(coefficients))

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.mix(self.embedding(input_ids))


class GRUStack(nn.Module):
    """Unidirectional GRUs, one module per layer; optionally zeroes the embedding of one position.

    A forward GRU's state at time ``t`` depends only on words ``0..t`` (used by the position tests);
    ``drop_position`` makes the model ignore that word entirely.
    """

    def __init__(self, vocab: int = VOCAB, dim: int = 12, hidden: int = 14, layers: int = 2,
                 drop_position: Optional[int] = None, pad_id: Optional[int] = None) -> None:
        super().__init__()
        self.drop_position = drop_position
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab, dim)
        self.grus = nn.ModuleList(nn.GRU(dim if i == 0 else hidden, hidden, batch_first=True) for i in range(layers))

    def forward(self, input_ids: Tensor) -> Tensor:
        h = self.embedding(input_ids)
        if self.drop_position is not None:
            keep = torch.ones(h.shape[1], 1, device=h.device, dtype=h.dtype)
            keep[self.drop_position] = 0.0
            h = h * keep
        for gru in self.grus:
            h, _ = gru(h)
        return h


ZOO = {
    "bert": tiny_bert,
    "transformer": TransformerClassifier,
    "bilstm": BiLSTMClassifier,
    "kimcnn": KimCNN,
    "seq2seq": Seq2SeqAttention,
}
"""Constructors of the five zoo models by short name."""


def random_ids(batch: int, length: int, vocab: int = VOCAB, generator: Optional[torch.Generator] = None) -> Tensor:
    """Random non-padding token ids ``[batch, length]`` in ``[1, vocab)``."""
    return torch.randint(1, vocab, (batch, length), generator=generator)


def pad_batch(sentences: list[Tensor], pad_id: int = PAD) -> tuple[Tensor, Tensor]:
    """Right-pad 1-d id tensors into ``input_ids [B, T]`` and a bool ``attention_mask [B, T]``."""
    length = max(len(s) for s in sentences)
    ids = torch.full((len(sentences), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sentences), length, dtype=torch.bool)
    for i, s in enumerate(sentences):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = True
    return ids, mask
