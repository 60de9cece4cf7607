"""Fault and bad-input cases of the core: models in other dtypes, layers that break under the noise, left
padding, forwards that update buffers, per-sentence keyword lists, and concurrent use of one model."""

from __future__ import annotations

import copy
import threading
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from lightning_infoflow import InfoFlowEstimator, InfoFlowResult
from lightning_infoflow.analysis.saliency import saliency
from lightning_infoflow.testing import pad_batch, tiny_bert


class _Blocks(nn.Module):
    """Embedding, then Linear + Tanh blocks (any dtype on the CPU)."""

    def __init__(self, vocab: int = 50, dim: int = 16, blocks: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) for _ in range(blocks)])

    def forward(self, ids: Tensor) -> Tensor:
        h = self.emb(ids)
        for block in self.blocks:
            h = block(h)
        return h


def _padded() -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(7)
    ids, mask = pad_batch([torch.randint(1, 50, (n,), generator=gen) for n in (6, 3, 8)], 0)
    return {"input_ids": ids, "attention_mask": mask.long()}


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("kind", ["blocks", "bert"])
def test_models_in_other_dtypes_are_measured_close_to_float32(kind: str, dtype: torch.dtype) -> None:
    """Same weights, the model cast to ``dtype``: finite results close to float32's (measured: sigma within
    0.2% (bf16), 0.06% (fp16) and 1e-6 (float64) on the blocks; 0.6% / 0.1% / 1e-6 on the BERT; layer
    information within 0.03%)."""
    model32 = _Blocks() if kind == "blocks" else tiny_bert()
    batch: Any = _padded() if kind == "bert" else _padded()["input_ids"]
    layers = "blocks.*" if kind == "blocks" else "auto"
    ref = InfoFlowEstimator(model32, layers, steps=30, samples=4).estimate(batch)
    model = copy.deepcopy(model32).to(dtype)
    est = InfoFlowEstimator(model, layers, steps=30, samples=4)
    assert est.check(batch) == ref.layer_names
    res = est.estimate(batch)
    assert res.sigma.dtype == torch.float32 and next(model.parameters()).dtype == dtype
    real = ref.mask.expand_as(ref.sigma)
    assert torch.isfinite(res.sigma[real]).all()
    rel = ((res.sigma - ref.sigma).abs() / ref.sigma)[real]
    tol = {torch.bfloat16: 0.02, torch.float16: 0.005, torch.float64: 1e-5}[dtype]
    assert float(rel.max()) < tol
    assert torch.allclose(res.layer_information, ref.layer_information, rtol=tol / 4)


# ----------------------------------------------------------------------------- non-finite under the noise


class _Fragile(nn.Module):
    """Finite for inputs of mean square below 0.05 (the clean ones: about 0.01), NaN above, as the noise
    makes them."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, h: Tensor) -> Tensor:
        return self.lin(h) * torch.sqrt(0.05 - h.pow(2).mean(-1, keepdim=True))


class _BreaksUnderNoise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        nn.init.normal_(self.emb.weight, std=0.1)
        self.ok = nn.Linear(8, 8)
        nn.init.normal_(self.ok.weight, std=0.3)
        nn.init.zeros_(self.ok.bias)
        self.fragile = _Fragile()

    def forward(self, ids: Tensor) -> Tensor:
        return self.fragile(self.ok(self.emb(ids)))


def test_layer_not_finite_under_noise_is_flagged_warned_and_not_averaged_away(tmp_path: Any) -> None:
    ids = torch.randint(1, 50, (3, 6))
    est = InfoFlowEstimator(_BreaksUnderNoise(), layers=["ok", "fragile"], steps=5, samples=2, lam=5.0)
    with pytest.warns(RuntimeWarning, match=r"layer 'fragile' returned non-finite values under the noise for \d+ of 18"
                      r" words.*flagged in `result.unstable`"):
        res = est.estimate(ids)
    assert res.unstable is not None and res.unstable.shape == res.sigma.shape
    assert not res.unstable[0].any() and res.unstable[1].any()
    assert torch.isnan(res.sigma[1][res.unstable[1]]).all()
    assert torch.isfinite(res.layer_information[0]) and torch.isnan(res.layer_information[1])
    assert torch.isnan(res.mean_entropy[1]) and torch.isnan(res.effective_words[1])
    flagged_sentences = res.unstable[1].any(-1)
    assert torch.isnan(res.sentence_information[1][flagged_sentences]).all()
    # Saved and loaded with the flags; a file written before the field loads with none flagged.
    res.save(tmp_path / "r.pt")
    back = InfoFlowResult.load(tmp_path / "r.pt")
    assert back.unstable is not None and torch.equal(back.unstable, res.unstable)
    old = res.to_dict()
    del old["unstable"]
    legacy = InfoFlowResult.from_dict(old)
    assert legacy.unstable is not None and not legacy.unstable.any()
    assert torch.equal(res.select([0, 2]).unstable, res.unstable[:, [0, 2]])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- left padding


class _PerWord(nn.Module):
    """Each time step's state depends on its own word only."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.lin = nn.Linear(8, 8)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return torch.tanh(self.lin(self.emb(input_ids)))


def test_last_position_with_left_padding_is_the_last_real_word() -> None:
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    batch = {"input_ids": ids, "attention_mask": mask}
    model = _PerWord()
    res = InfoFlowEstimator(model, layers="lin", position=-1, steps=0).estimate(batch)
    info = res.information[0]
    assert info[0, 4] > 1.0 and info[1, 4] > 1.0  # the last word of each sentence is the state
    assert info[0, 2] == 0.0 and info[0, 3] == 0.0  # the first real words are not
    first = InfoFlowEstimator(model, layers="lin", position=0, steps=0).estimate(batch).information[0]
    assert first[0, 2] > 1.0 and first[0, 4] == 0.0  # position 0: the first real word, not padding
    sal = saliency(model, batch, layers="lin", position=-1, method="gradient").values[0]
    assert sal[0, 4] > 0 and sal[0, 2] == 0 and sal[0, 3] == 0


# ----------------------------------------------------------------------------- buffers


class _CountingNet(nn.Module):
    """Updates buffers in every forward: an in-place counter, a rebound sum, a running mean kept whatever
    the mode, and a train-mode BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.norm = nn.BatchNorm1d(8)
        self.lin = nn.Linear(8, 8)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("seen", torch.zeros(()))
        self.register_buffer("running", torch.zeros(8))

    def forward(self, ids: Tensor) -> Tensor:
        x = self.emb(ids)
        self.calls += 1
        self.seen = self.seen + ids.shape[0]
        with torch.no_grad():
            self.running.mul_(0.9).add_(0.1 * x.mean((0, 1)))
        h = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return torch.tanh(self.lin(h))


def test_buffers_updated_by_a_forward_are_restored() -> None:
    model = _CountingNet().train()
    model(torch.randint(1, 50, (4, 5)))  # some statistics already
    ids = torch.randint(1, 50, (3, 5))
    before = {n: (b, b.clone()) for n, b in model.named_buffers()}
    InfoFlowEstimator(model, layers="lin", embedding="emb", steps=2, samples=2).estimate(ids)
    after = dict(model.named_buffers())
    for name, (tensor, value) in before.items():
        assert after[name] is tensor or name == "seen", name
        assert torch.equal(after[name], value), name
    assert after["seen"] is before["seen"][0]  # the rebound buffer is the original tensor again
    saliency(model, ids, layers="lin", embedding="emb", method="gradient")
    for name, (_, value) in before.items():
        assert torch.equal(dict(model.named_buffers())[name], value), name
    assert model.training and model.norm.training


# ----------------------------------------------------------------------------- per-sentence keyword lists


class _WithLengths(nn.Module):
    """Reads each sentence's length from a ``lengths`` keyword (a list or a tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.gru = nn.GRU(8, 8, batch_first=True)

    def forward(self, input_ids: Tensor, lengths: Any) -> Tensor:
        x = self.emb(input_ids)
        keep = torch.arange(input_ids.shape[1])[None, :] < torch.as_tensor(lengths)[:, None]
        return self.gru(x * keep.unsqueeze(-1))[0]


def test_per_sentence_list_argument_is_repeated_like_a_tensor() -> None:
    ids = torch.randint(1, 50, (3, 6))
    model = _WithLengths()
    est = InfoFlowEstimator(model, layers="gru", steps=3, samples=2)
    as_list = est.estimate({"input_ids": ids, "lengths": [6, 5, 4]})
    as_tensor = est.estimate({"input_ids": ids, "lengths": torch.tensor([6, 5, 4])})
    assert torch.equal(as_list.sigma.nan_to_num(-1), as_tensor.sigma.nan_to_num(-1))
    # An entry that is not one item per sentence is passed unchanged; when copies fail, it is named.
    with pytest.raises(ValueError, match=r"copies of the probe batch.*\['lengths'\].*one item per sentence"):
        est.estimate({"input_ids": ids, "lengths": np.array([6, 5, 4])})


# ----------------------------------------------------------------------------- concurrency


def test_concurrent_use_of_one_model_is_refused_and_never_corrupts_it() -> None:
    model = _Blocks().train()
    model.blocks[0].eval()
    model.emb.weight.requires_grad_(False)
    modes = {n: m.training for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    ids = torch.randint(1, 50, (3, 5))
    inside, release = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def pause(step: int, _total: int) -> None:
        if step == 1:
            inside.set()
            release.wait(timeout=30)

    def background() -> None:
        try:
            results["res"] = InfoFlowEstimator(model, "blocks.*", steps=3).estimate(ids, on_step=pause)
        except BaseException as err:  # noqa: BLE001 - reported by the test
            results["error"] = err
            inside.set()

    worker = threading.Thread(target=background)
    worker.start()
    try:
        assert inside.wait(timeout=30)
        with pytest.raises(RuntimeError, match="being analysed by another thread"):
            InfoFlowEstimator(model, "blocks.*", steps=1).estimate(ids)
        with pytest.raises(RuntimeError, match="called from another thread.*do not train or run the model"):
            model(ids).sum().backward()  # a training step in this thread during the analysis
    finally:
        release.set()
        worker.join(timeout=60)
    assert "error" not in results and torch.isfinite(results["res"].sigma).all()
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    model(ids).sum().backward()  # training goes on afterwards
    assert model.blocks[1][0].weight.grad is not None
