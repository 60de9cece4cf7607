"""Scale: mixed precision, compiled modules, bounded memory, long sentences and large vocabularies.

Each test is small enough for a 2-core CPU; the measured numbers these bounds come from are in the
README (precision tolerance) and ``benchmarks/results/memory*.json`` (memory).
"""

from __future__ import annotations

import gc
import os
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_infoflow import EstimatorConfig, InfoFlowCallback, InfoFlowEstimator
from lightning_infoflow.testing import tiny_bert

# Median relative difference of sigma between float32 and bf16 autocast: measured at most 1e-4 on tiny BERTs
# (2x32 and 4x64, steps 0 and 20; seed-to-seed optimiser noise is 0.01-0.07). The tests allow 1e-2.
BF16_TOLERANCE = 0.01


def _median_rel(a: Tensor, b: Tensor) -> float:
    keep = ~torch.isnan(b)
    return float((a[keep] / b[keep] - 1).abs().median())


def _bert_batch(bsz: int = 4, seq: int = 10, vocab: int = 50, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (bsz, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, seq - 3:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


# ----------------------------------------------------------------------------- precision


class _BlockNet(nn.Module):
    """Embedding and a list of tanh(Linear) blocks: traces with torch.compile in a second on CPU."""

    def __init__(self, vocab: int = 50, dim: int = 16, blocks: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) for _ in range(blocks)])
        self.head = nn.Linear(dim, 2)

    def forward(self, input_ids: Tensor) -> Tensor:
        h = self.emb(input_ids)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h.mean(dim=1))


class _Classifier(L.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.net(input_ids)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        ids, y = batch
        return nn.functional.cross_entropy(self(ids), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data(n: int = 32, seq: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (n, seq), generator=g)
    return DataLoader(TensorDataset(ids, (ids[:, 0] > 25).long()), batch_size=8)


def _probe() -> Tensor:
    return torch.randint(1, 50, (3, 8), generator=torch.Generator().manual_seed(2))


def _fit(tmp_path: Any, module: L.LightningModule, callbacks: list, **kw: Any) -> L.Trainer:
    trainer = L.Trainer(max_steps=4, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        logger=CSVLogger(tmp_path), default_root_dir=tmp_path, callbacks=callbacks,
                        num_sanity_val_steps=0, limit_val_batches=0, **kw)
    trainer.fit(module, _data())
    return trainer


def test_bf16_autocast_agrees_with_float32() -> None:
    """The estimator under bf16 autocast gives sigma within the measured tolerance of float32."""
    model = tiny_bert(layers=2, hidden=32, init_range=0.05)
    batch = _bert_batch()
    est = InfoFlowEstimator(model, steps=5, samples=4)
    full = est.estimate(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = est.estimate(batch)
    assert torch.isfinite(half.sigma[~torch.isnan(full.sigma)]).all()
    assert torch.equal(torch.isnan(half.sigma), torch.isnan(full.sigma))
    gap = _median_rel(half.sigma, full.sigma)
    assert 0 < gap < BF16_TOLERANCE  # bf16 really ran (not identical) and stays close


@pytest.mark.parametrize("precision", ["32", "training"])
def test_callback_in_bf16_mixed_training(tmp_path: Any, precision: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training in bf16-mixed: ``precision="32"`` analyses in float32, ``"training"`` under bf16 autocast;
    both give finite results within the measured tolerance of float32 from the same start point."""
    calls: list[dict[str, Any]] = []
    estimate = InfoFlowEstimator.estimate

    def recording(self: InfoFlowEstimator, batch: Any, **kw: Any) -> Any:
        result = estimate(self, batch, **kw)
        calls.append({"autocast": torch.is_autocast_enabled("cpu"), "init": kw.get("init"), "batch": batch,
                      "steps": kw.get("steps", self.steps), "result": result})
        return result

    monkeypatch.setattr(InfoFlowEstimator, "estimate", recording)
    torch.manual_seed(0)
    module = _Classifier(_BlockNet())
    cb = InfoFlowCallback(probe=_probe(), every_n_train_steps=1000, max_overhead=None, heatmaps=0,
                          estimator=EstimatorConfig(steps=4, warm_steps=3, samples=4, precision=precision))
    _fit(tmp_path, module, [cb], precision="bf16-mixed")
    assert [c["autocast"] for c in calls] == [precision == "training"] * len(calls) and len(calls) >= 2
    last = calls[-1]
    result = last["result"]
    assert result.meta["step"] == 4 and last["init"] is not None
    keep = ~torch.isnan(result.sigma)
    assert torch.isfinite(result.sigma[keep]).all() and torch.isfinite(result.layer_information).all()
    # The same analysis (same weights, start point and seed) in float32.
    monkeypatch.setattr(InfoFlowEstimator, "estimate", estimate)
    reference = InfoFlowEstimator(module, cb.state.layer_names, steps=last["steps"], samples=4).estimate(
        last["batch"], init=last["init"])
    gap = _median_rel(result.sigma, reference.sigma)
    if precision == "32":
        assert gap < 1e-5
    else:
        assert 0 < gap < BF16_TOLERANCE


# ----------------------------------------------------------------------------- torch.compile


class _CountingBackend:
    """A torch.compile backend that counts the graphs it is asked to compile and runs them eagerly."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> Any:
        self.graphs += 1
        return gm.forward


def test_estimating_a_compiled_module_compiles_nothing() -> None:
    torch._dynamo.reset()
    backend = _CountingBackend()
    net = _BlockNet()
    compiled = torch.compile(net, backend=backend)
    ids = _probe()
    compiled.train()
    compiled(ids).sum().backward()
    after_training = backend.graphs
    assert after_training >= 1
    res = InfoFlowEstimator(compiled, layers="_orig_mod.blocks.*", steps=3, samples=2).estimate(ids)
    plain = InfoFlowEstimator(net, layers="blocks.*", steps=3, samples=2).estimate(ids)
    torch.testing.assert_close(res.sigma, plain.sigma)
    assert backend.graphs == after_training  # nothing compiled for the analysis
    compiled(ids).sum().backward()
    assert backend.graphs == after_training  # and the training graph's guards still pass
    torch._dynamo.reset()


def test_callback_on_a_compiled_network_adds_no_compilation(tmp_path: Any) -> None:
    counts = []
    for with_callback in (False, True):
        torch._dynamo.reset()
        backend = _CountingBackend()
        torch.manual_seed(0)
        module = _Classifier(torch.compile(_BlockNet(), backend=backend))
        cbs = [InfoFlowCallback(probe=_probe(), every_n_train_steps=2, estimator=EstimatorConfig(steps=2, warm_steps=1,
                                samples=2), max_overhead=None, heatmaps=0)]
        _fit(tmp_path, module, cbs if with_callback else [])
        if with_callback:
            assert cbs[0].state.steps == [0, 1, 2, 4]  # the analyses ran
        counts.append(backend.graphs)
    torch._dynamo.reset()
    assert counts[0] >= 1
    assert counts[1] == counts[0]


# ----------------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.memory
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="resident memory is read from /proc (Linux)")
def test_two_hundred_analyses_keep_resident_memory_flat() -> None:
    model = tiny_bert(layers=2, hidden=32)
    batch = _bert_batch()
    est = InfoFlowEstimator(model, steps=1, samples=1)
    previous = None
    rss = []
    for i in range(200):
        previous = est.estimate(batch, init=previous if i % 2 else None)
        if i % 10 == 9:
            gc.collect()
            rss.append(_rss_bytes())
    growth = rss[-1] - rss[1]  # after 20 analyses of warm-up
    assert growth < 4 * 1024**2, f"resident memory grew by {growth / 1024**2:.1f} MiB over 180 analyses"


# ----------------------------------------------------------------------------- size


def test_probe_that_can_never_fit_names_the_knobs() -> None:
    est = InfoFlowEstimator(tiny_bert(), steps=0, memory_budget=10_000)
    with pytest.raises(ValueError, match=r"memory_budget=9.8 KiB.*raise `memory_budget`.*chunk_size"):
        est.estimate(_bert_batch())


def test_sentences_of_512_tokens() -> None:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    model = BertModel(config)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 100, (2, 512), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 300:] = 0
    res = InfoFlowEstimator(model, steps=0, samples=1).estimate({"input_ids": ids, "attention_mask": mask})
    assert res.sigma.shape == (2, 2, 512)
    assert torch.isfinite(res.sigma[:, 0]).all() and torch.isfinite(res.sigma[:, 1, :300]).all()
    assert torch.isnan(res.sigma[:, 1, 300:]).all()
    assert torch.isfinite(res.layer_information).all()


def test_vocabulary_of_250k_words() -> None:
    model = _BlockNet(vocab=250_000, dim=16)
    ids = torch.tensor([[3, 249_999, 125_000, 7, 200_001]])
    est = InfoFlowEstimator(model, layers="blocks.*", steps=0, samples=2)
    res = est.estimate(ids)
    assert res.sigma.shape == (2, 1, 5) and torch.isfinite(res.sigma).all()
    assert est.sigma_max == pytest.approx(10 * float(model.emb.weight.std()))


# ----------------------------------------------------------------------------- warm start


def test_warm_start_keeps_a_good_start_point() -> None:
    """Ten warm steps from a well converged result stay close to it (the first steps do not shake every
    word by about ``lr``, as Adam's did): closer than the closed form, and closer than with warm_lr = lr."""
    model = tiny_bert(layers=2, hidden=32, init_range=0.05)
    batch = _bert_batch()
    good = InfoFlowEstimator(model, steps=150, samples=8).estimate(batch)
    warm = InfoFlowEstimator(model, steps=10, samples=4, seed=1).estimate(batch, init=good)
    closed_form = InfoFlowEstimator(model, steps=0, samples=4, seed=1).estimate(batch)
    assert _median_rel(warm.sigma, good.sigma) < 0.5 * _median_rel(closed_form.sigma, good.sigma)
    assert _median_rel(warm.sigma, good.sigma) < 0.02
