"""A tiny text classifier LightningModule and data for callback tests."""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

VOCAB = 50


class TinyTextNet(nn.Module):
    """Embedding, two GRU layers (one module each), dropout, max pooling, linear head."""

    def __init__(self, vocab: int = VOCAB, dim: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.rnns = nn.ModuleList([nn.GRU(dim, dim, batch_first=True) for _ in range(2)])
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, 2)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids)
        for rnn in self.rnns:
            h, _ = rnn(self.drop(h))
        return self.head(h.max(dim=1).values)


class TinyClassifier(L.LightningModule):
    def __init__(self, lr: float = 0.05, dropout: float = 0.2, model: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model if model is not None else TinyTextNet(dropout=dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def training_step(self, batch, batch_idx):
        ids, y = batch
        loss = nn.functional.cross_entropy(self(ids), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        ids, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(ids), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def make_data(n: int = 64, seq: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, seq), generator=g)
    y = (ids[:, 0] > VOCAB // 2).long()  # the label lives in the first word
    return TensorDataset(ids, y)


def loaders(batch_size: int = 8, n: int = 64) -> tuple[DataLoader, DataLoader]:
    return (DataLoader(make_data(n), batch_size=batch_size, shuffle=True),
            DataLoader(make_data(16, seed=1), batch_size=batch_size))


def probe_ids() -> torch.Tensor:
    return make_data(4, seed=2).tensors[0]


class TinyDataModule(L.LightningDataModule):
    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return loaders(self.batch_size)[0]

    def val_dataloader(self) -> DataLoader:
        return loaders(self.batch_size)[1]


def tiny_checkpoint(path: str) -> str:
    """Write a checkpoint of :class:`TinyClassifier` after one optimizer step (global_step 1) to ``path``."""
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(TinyClassifier(dropout=0.0), loaders()[0])
    trainer.save_checkpoint(path)
    return path


def quick_trainer(tmp_path: Any, callbacks: list, **kw: Any) -> L.Trainer:
    """A quiet Trainer of 6 steps on the CPU: CSVLogger in ``tmp_path``, no validation, no checkpoints."""
    defaults: dict[str, Any] = {
        "max_steps": 6, "enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False,
        "logger": CSVLogger(tmp_path), "default_root_dir": tmp_path, "callbacks": callbacks,
        "num_sanity_val_steps": 0, "limit_val_batches": 0,
    }
    defaults.update(kw)
    return L.Trainer(**defaults)


def fit_tiny(trainer: L.Trainer, model: Optional[L.LightningModule] = None, **kw: Any) -> L.LightningModule:
    """Fit ``model`` (a new TinyClassifier by default) on the tiny training data; returns the model."""
    model = model if model is not None else TinyClassifier()
    trainer.fit(model, loaders()[0], **kw)
    return model
