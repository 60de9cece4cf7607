"""Correctness of InfoFlowEstimator (issue 2): closed form, bounds, padding, determinism, positions,
model-state guarantees, warm start, near-constant units, and errors raised before any optimisation."""

from __future__ import annotations

import copy
from typing import Any, Optional

import pytest
import torch
from torch import Tensor, nn

from lightning_infoflow import InfoFlowEstimator, InfoFlowResult
from lightning_infoflow.testing import (
    PAD,
    ZOO,
    BiLSTMClassifier,
    GRUStack,
    KimCNN,
    LinearModel,
    pad_batch,
    random_ids,
    tiny_bert,
)

# ----------------------------------------------------------------------------- helpers


def _zoo_batch(name: str, sentences: list[Tensor]) -> Any:
    """The padded probe as each zoo model takes it: BERT a dict with attention_mask, the rest bare ids."""
    ids, mask = pad_batch(sentences)
    return {"input_ids": ids, "attention_mask": mask.long()} if name == "bert" else ids


def _log_gap(a: Tensor, b: Tensor, reduce: str = "max") -> float:
    """Largest (or mean) |log a - log b| over positions where both are real (not NaN)."""
    gap = (a.log() - b.log()).abs()
    gap = gap[~gap.isnan()]
    return float(gap.max() if reduce == "max" else gap.mean())


# ----------------------------------------------------------------------------- closed form


def test_linear_model_matches_closed_form_after_adam() -> None:
    """Phi(x) = sum_i a_i x_i, K = 64: the optimum of Eq. 7 is sigma_i = sqrt(K lam / (2 a_i^2 sum_e 1/var_e))."""
    a = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.0])
    model = LinearModel(tuple(a.tolist()), dim=64)
    ids = random_ids(8, 5)
    lam = 0.1
    est = InfoFlowEstimator(model, layers="mix", lam=lam, steps=50, samples=4)
    res = est.estimate(ids)
    assert res.meta["steps_run"] == 50  # a fixed number of steps runs exactly

    with torch.no_grad():
        var = model(ids).var(dim=0, unbiased=False)  # per-unit variance over the probe
    optimum = (64 * lam / (2 * a[:4] ** 2 * (1 / var).sum())).sqrt()
    sigma = res.sigma[0]  # [B, T]
    assert sigma.shape == (8, 5)
    # Ratios: sigma_i * |a_i| is the same for the four used words of every sentence.
    scaled = sigma[:, :4] * a[:4]
    assert torch.allclose(scaled / scaled.mean(dim=1, keepdim=True), torch.ones(8, 4), rtol=0.1, atol=0)
    # Absolute values: the optimum itself, within 10%.
    assert torch.allclose(sigma[:, :4], optimum.expand(8, 4), rtol=0.1, atol=0)
    # The ignored word (a_i = 0): at the bound, flagged, zero information.
    assert torch.allclose(sigma[:, 4], torch.full((8,), res.sigma_max))
    assert res.at_bound[0, :, 4].all() and not res.at_bound[0, :, :4].any()
    assert (res.information[0, :, 4] == 0).all()
    assert (res.information[0, :, :4] > 0).all()
    for t in (res.sigma, res.information, res.entropy):
        assert torch.isfinite(t).all()


def test_closed_form_start_is_exact_for_a_linear_model() -> None:
    """steps=0 returns the linearised optimum; for a linear Phi the ratios are exact (one projection per copy)
    and the values are the optimum up to the noise of the random projections (32 x 64 dimensions: ~2%)."""
    a = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.0])
    model = LinearModel(tuple(a.tolist()))
    ids = random_ids(4, 5)
    res = InfoFlowEstimator(model, layers="mix", steps=0, samples=32).estimate(ids)
    scaled = res.sigma[0, :, :4] * a[:4]
    assert torch.allclose(scaled, scaled[:, :1].expand(4, 4), rtol=1e-4)
    with torch.no_grad():
        var = model(ids).var(dim=0, unbiased=False)
    optimum = (64 * 0.1 / (2 * a[:4] ** 2 * (1 / var).sum())).sqrt()
    assert torch.allclose(res.sigma[0, :, :4], optimum.expand(4, 4), rtol=0.1, atol=0)
    assert res.at_bound[0, :, 4].all()
    assert res.meta["steps_run"] == 0 and torch.isnan(res.loss).all()


def test_word_the_layer_ignores_ends_at_the_bound() -> None:
    model = GRUStack(drop_position=2)  # the embedding of word 2 is multiplied by 0
    res = InfoFlowEstimator(model, layers="grus.*", steps=10, samples=2).estimate(random_ids(3, 6))
    assert res.layer_names == ["grus.0", "grus.1"]
    assert res.at_bound[:, :, 2].all()
    assert torch.allclose(res.sigma[:, :, 2], torch.full((2, 3), res.sigma_max))
    assert (res.information[:, :, 2] == 0).all()
    others = [0, 1, 3, 4, 5]
    assert not res.at_bound[:, :, others].any()
    assert (res.information[:, :, others] > 0).all()
    assert torch.isfinite(res.information).all() and torch.isfinite(res.entropy).all()


# ----------------------------------------------------------------------------- padding, order, determinism


def test_sentence_alone_equals_sentence_in_padded_batch(padded: dict[str, Tensor]) -> None:
    model = tiny_bert()
    est = InfoFlowEstimator(model, steps=60, samples=8)
    short = padded["input_ids"][1, :3]  # the 3-word sentence, padded to 8 inside the batch
    alone = {"input_ids": short[None], "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    in_batch = est.estimate(padded, reference=padded)
    by_itself = est.estimate(alone, reference=padded)  # same normalisation var_e for both
    assert torch.isnan(in_batch.sigma[:, 1, 3:]).all() and not torch.isnan(in_batch.sigma[:, 1, :3]).any()
    gap = _log_gap(in_batch.sigma[:, 1, :3], by_itself.sigma[:, 0])
    assert gap < 0.2
    # Control: the same comparison with the padding treated as words is clearly off, so the
    # tolerance above separates right from wrong.
    unmasked = dict(padded, attention_mask=torch.ones_like(padded["attention_mask"]))
    wrong = est.estimate(unmasked, reference=padded)
    assert _log_gap(wrong.sigma[:, 1, :3], by_itself.sigma[:, 0]) > 2 * gap


def test_reordering_the_batch_reorders_the_output(padded: dict[str, Tensor]) -> None:
    est = InfoFlowEstimator(tiny_bert(), steps=60, samples=8)
    perm = torch.tensor([2, 0, 1])
    res = est.estimate(padded)
    res_perm = est.estimate({k: v[perm] for k, v in padded.items()})
    assert torch.equal(res_perm.mask, res.mask[perm])
    assert torch.equal(res_perm.sigma.isnan(), res.sigma[:, perm].isnan())
    # Same values up to optimiser noise (the noise draws land on other sentences).
    assert _log_gap(res_perm.sigma, res.sigma[:, perm], "mean") < 0.06
    assert _log_gap(res_perm.sigma, res.sigma[:, perm]) < 0.2


def test_seeded_runs_repeat_bitwise(padded: dict[str, Tensor]) -> None:
    model = tiny_bert()
    first = InfoFlowEstimator(model, steps=5, samples=2, seed=3).estimate(padded)
    again = InfoFlowEstimator(model, steps=5, samples=2, seed=3).estimate(padded)
    other = InfoFlowEstimator(model, steps=5, samples=2, seed=4).estimate(padded)
    torch.testing.assert_close(again.sigma, first.sigma, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(again.loss, first.loss, rtol=0, atol=0)
    assert not torch.equal(other.sigma.nan_to_num(), first.sigma.nan_to_num())


def test_chunking_does_not_change_the_result() -> None:
    """The chunking (``chunk_size``, or the memory budget) changes how copies are batched, never the noise
    drawn for them: one copy per forward, 7 per forward and all at once give the same result."""
    model = GRUStack(dim=12, hidden=14, layers=3)
    ids = random_ids(3, 5)
    whole = InfoFlowEstimator(model, layers="grus.*", steps=4, samples=2, chunk_size=10_000).estimate(ids)
    assert whole.meta["chunk_size"] == 3 * 2 * 3
    for chunk in (1, 7):
        split = InfoFlowEstimator(model, layers="grus.*", steps=4, samples=2, chunk_size=chunk).estimate(ids)
        assert split.meta["chunk_size"] == chunk
        torch.testing.assert_close(split.sigma, whole.sigma, rtol=1e-4, atol=0)
    budget = InfoFlowEstimator(model, layers="grus.*", steps=4, samples=2, memory_budget=40_000).estimate(ids)
    assert 1 <= budget.meta["chunk_size"] < 3 * 2 * 3
    torch.testing.assert_close(budget.sigma, whole.sigma, rtol=1e-4, atol=0)


def test_memory_budget_too_small_is_an_error() -> None:
    est = InfoFlowEstimator(GRUStack(), layers="grus.*", steps=1, memory_budget=1000)
    with pytest.raises(ValueError, match=r"KiB of activations .* than memory_budget=1000 B; raise `memory_budget`"):
        est.estimate(random_ids(3, 5))


def test_reference_batch_sets_the_normalisation(padded: dict[str, Tensor]) -> None:
    model = tiny_bert()
    est = InfoFlowEstimator(model, steps=0, samples=2)
    default = est.estimate(padded)
    same = est.estimate(padded, reference=padded)
    torch.testing.assert_close(same.sigma, default.sigma, rtol=0, atol=0, equal_nan=True)
    other_ref = {"input_ids": random_ids(6, 10), "attention_mask": torch.ones(6, 10, dtype=torch.long)}
    assert not torch.allclose(est.estimate(padded, reference=other_ref).sigma.nan_to_num(),
                              default.sigma.nan_to_num())


# ----------------------------------------------------------------------------- the zoo end to end


@pytest.mark.parametrize(
    ("name", "layers"),
    [
        ("bert", ["encoder.layer.0", "encoder.layer.1"]),
        ("transformer", ["encoder.layers.0", "encoder.layers.1"]),
        ("bilstm", ["lstms.0", "lstms.1", "lstms.2", "lstms.3"]),
        ("kimcnn", ["convs.0", "convs.1", "convs.2", "convs.3"]),
        ("seq2seq", ["encoder", "decoder"]),
    ],
)
def test_zoo_model_end_to_end(name: str, layers: list[str], sentences: list[Tensor]) -> None:
    model = ZOO[name]()
    est = InfoFlowEstimator(model, steps=3, samples=2, pad_token_id=PAD)
    batch = _zoo_batch(name, sentences)
    res = est.estimate(batch)
    assert res.layer_names == layers
    mask = res.mask
    assert res.sigma.shape == (len(layers), *mask.shape) and res.sigma.dtype == torch.float32
    assert torch.equal(mask, torch.tensor([[i < len(s) for i in range(8)] for s in sentences]))
    assert torch.isnan(res.sigma[:, ~mask]).all()
    real = res.sigma[:, mask]
    assert torch.isfinite(real).all() and (real > 0).all() and (real <= res.sigma_max * (1 + 1e-5)).all()
    assert torch.isfinite(res.information[:, mask]).all() and (res.information[:, mask] >= 0).all()
    assert torch.isfinite(res.layer_information).all() and res.layer_information.shape == (len(layers),)
    assert torch.isfinite(res.loss).all()


def test_nested_tensor_transformer_encoder_is_supported() -> None:
    """nn.TransformerEncoder's default nested-tensor fast path (eval, no grad, padding mask) is avoided."""
    model = ZOO["transformer"]()
    model.encoder.enable_nested_tensor = True
    model.encoder.use_nested_tensor = True
    ids, _ = pad_batch([random_ids(1, 6)[0], random_ids(1, 3)[0]])
    res = InfoFlowEstimator(model, steps=2, samples=2, pad_token_id=PAD).estimate(ids)
    assert torch.isfinite(res.sigma[:, res.mask]).all()


# ----------------------------------------------------------------------------- position selectors


def test_position_zero_of_a_forward_rnn_keeps_only_the_first_word() -> None:
    ids = random_ids(2, 5)
    res = InfoFlowEstimator(GRUStack(), layers="grus.*", position=0, steps=0).estimate(ids)
    assert res.layer_names == ["grus.0@0", "grus.1@0"]
    assert res.sigma.shape == (2, 2, 5)
    assert not res.at_bound[:, :, 0].any() and res.at_bound[:, :, 1:].all()


def test_negative_position_counts_from_each_sentences_last_word() -> None:
    ids, _ = pad_batch([random_ids(1, 5)[0], random_ids(1, 3)[0]])
    res = InfoFlowEstimator(GRUStack(), layers="grus.1", position=-1, steps=0, pad_token_id=PAD).estimate(ids)
    assert res.layer_names == ["grus.1@-1"]
    # The last real word's state depends on every real word of its sentence, and padding is NaN.
    assert not res.at_bound.any()
    assert torch.isfinite(res.sigma[0, 0]).all()
    assert torch.isfinite(res.sigma[0, 1, :3]).all() and torch.isnan(res.sigma[0, 1, 3:]).all()
    # position=-2 of the 3-word sentence is word 1: word 2 is not used.
    res2 = InfoFlowEstimator(GRUStack(), layers="grus.1", position=-2, steps=0, pad_token_id=PAD).estimate(ids)
    assert res2.at_bound[0, 1, 2] and not res2.at_bound[0, 1, :2].any()


def test_list_of_positions_gives_one_row_per_layer_and_position() -> None:
    res = InfoFlowEstimator(GRUStack(), layers="grus.*", position=[0, -1], steps=0).estimate(random_ids(2, 4))
    assert res.layer_names == ["grus.0@0", "grus.0@-1", "grus.1@0", "grus.1@-1"]
    assert res.sigma.shape == (4, 2, 4)


def test_each_position_is_one_row_per_time_step() -> None:
    ids, _ = pad_batch([random_ids(1, 4)[0], random_ids(1, 2)[0]])
    res = InfoFlowEstimator(GRUStack(), layers="grus.0", position="each", steps=0, pad_token_id=PAD).estimate(ids)
    assert res.layer_names == [f"grus.0@{t}" for t in range(4)]
    assert res.sigma.shape == (4, 2, 4)
    for t in range(4):
        # State at time t of a forward GRU: words 0..t are used, later words are at the bound.
        assert not res.at_bound[t, 0, : t + 1].any() and res.at_bound[t, 0, t + 1 :].all()
    # Time steps 2 and 3 are padding for the 2-word sentence: it has no state there (NaN rows).
    assert torch.isnan(res.sigma[2:, 1]).all() and torch.isfinite(res.sigma[:2, 1, :2]).all()
    assert not res.at_bound[2:, 1].any()
    assert torch.isnan(res.sentence_information[2:, 1]).all()
    # Aggregates skip the missing rows instead of counting them as "keeps nothing".
    assert torch.isfinite(res.layer_information).all() and (res.effective_words > 0).all()


def test_position_outside_the_sequence_is_an_error() -> None:
    est = InfoFlowEstimator(GRUStack(), layers="grus.0", position=7, steps=0)
    with pytest.raises(ValueError, match="position 7 is outside"):
        est.estimate(random_ids(2, 4))


# ----------------------------------------------------------------------------- the model is left as found


class _RandomTap(nn.Module):
    """Draws from the global RNG on every call (in eval too): the estimator must restore its state."""

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.0 * torch.randn_like(x)


class _Fragile(nn.Module):
    """A BiLSTM classifier that raises when its batch is larger than ``limit``."""

    def __init__(self, limit: Optional[int], error: type[Exception] = RuntimeError) -> None:
        super().__init__()
        self.limit = limit
        self.error = error
        self.inner = BiLSTMClassifier(dropout=0.3)
        self.tap = _RandomTap()

    def forward(self, ids: Tensor) -> Tensor:
        if self.limit is not None and ids.shape[0] > self.limit:
            raise self.error("boom")
        return self.inner.head(self.tap(self.inner.lstms[0](self.inner.embedding(ids))[0]).amax(1))


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "grad_ids": {n: None if p.grad is None else id(p.grad) for n, p in model.named_parameters()},
        "values": {n: t.clone() for n, t in model.state_dict().items()},
        "hooks": {n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                  for n, m in model.named_modules()},
        "rng": torch.get_rng_state(),
    }


def _prepare_messy_state(model: nn.Module) -> None:
    """A mix of train/eval, frozen parameters, existing and missing grads, and a user hook."""
    model.train()
    model.inner.lstms[0].eval()
    model.inner.head.eval()
    model.inner.embedding.weight.requires_grad_(False)
    model.inner.lstms[0].weight_ih_l0.grad = torch.randn_like(model.inner.lstms[0].weight_ih_l0)
    model.inner.head.bias.grad = torch.zeros_like(model.inner.head.bias)
    model.inner.head.register_forward_hook(lambda *_: None)


def _assert_same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["grad_ids"] == before["grad_ids"]
    for name, grad in before["grad"].items():
        if grad is None:
            assert after["grad"][name] is None, name
        else:
            assert torch.equal(after["grad"][name], grad), name
    for name, value in before["values"].items():
        assert torch.equal(after["values"][name], value), name
    assert after["hooks"] == before["hooks"]
    assert torch.equal(after["rng"], before["rng"])


def test_model_left_exactly_as_found() -> None:
    model = _Fragile(limit=None)
    _prepare_messy_state(model)
    ids = random_ids(3, 5)
    before = _snapshot(model)
    res = InfoFlowEstimator(model, layers="inner.lstms.0", embedding="inner.embedding", steps=3,
                            samples=2).estimate(ids)
    assert torch.isfinite(res.sigma).all()
    _assert_same_state(before, _snapshot(model))


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (3, ValueError),  # raises on the 2B-sentence dependency check: reported as a ValueError
        (6, RuntimeError),  # raises on the first perturbed forward: escapes as is
    ],
)
def test_model_left_as_found_when_an_exception_escapes(limit: int, expected: type[Exception]) -> None:
    model = _Fragile(limit=limit)
    _prepare_messy_state(model)
    ids = random_ids(3, 5)
    before = _snapshot(model)
    # 3 sentences x 4 samples = 12 perturbed copies per forward.
    est = InfoFlowEstimator(model, layers="inner.lstms.0", embedding="inner.embedding", steps=3, samples=4)
    with pytest.raises(expected, match="boom"):
        est.estimate(ids)
    _assert_same_state(before, _snapshot(model))


def test_dropout_is_off_during_estimation() -> None:
    noisy = BiLSTMClassifier(dropout=0.9)
    clean = BiLSTMClassifier(dropout=0.0)
    clean.load_state_dict(noisy.state_dict())
    noisy.train()
    clean.train()
    ids = random_ids(2, 5)
    a = InfoFlowEstimator(noisy, steps=3, samples=2).estimate(ids)
    b = InfoFlowEstimator(clean, steps=3, samples=2).estimate(ids)
    torch.testing.assert_close(a.sigma, b.sigma, rtol=0, atol=0)
    assert noisy.training and noisy.dropout.training


# ----------------------------------------------------------------------------- warm start


def test_warm_start_continues_from_a_previous_result() -> None:
    model = GRUStack()
    ids = random_ids(3, 5)
    cold = InfoFlowEstimator(model, layers="grus.*", steps=30, samples=4).estimate(ids)
    frozen = InfoFlowEstimator(model, layers="grus.*", steps=0).estimate(ids, init=cold)
    torch.testing.assert_close(frozen.sigma, cold.sigma, rtol=1e-6, atol=0)
    assert frozen.meta["warm_start"] and not cold.meta["warm_start"]
    warm = InfoFlowEstimator(model, layers="grus.*", steps=5, samples=4, lr=0.01).estimate(ids, init=cold)
    assert _log_gap(warm.sigma, cold.sigma) < 0.1  # a few small steps from the converged point stay near it


def test_warm_start_with_another_shape_or_layers_is_an_error() -> None:
    model = GRUStack()
    est = InfoFlowEstimator(model, layers="grus.*", steps=0)
    previous = est.estimate(random_ids(3, 5))
    with pytest.raises(ValueError, match="`init` holds layers .* same estimator and probe"):
        est.estimate(random_ids(3, 6), init=previous)
    with pytest.raises(ValueError, match="`init` holds layers"):
        InfoFlowEstimator(model, layers="grus.0", steps=0).estimate(random_ids(3, 5), init=previous)


# ----------------------------------------------------------------------------- numerics


def test_near_constant_units_give_finite_results(padded: dict[str, Tensor]) -> None:
    """all-MiniLM-L6-v2's last LayerNorm has weights ~1e-33 on some units: their variance underflows to 0."""
    tiny = tiny_bert()
    zero = copy.deepcopy(tiny)
    with torch.no_grad():
        for model, value in ((tiny, 1e-33), (zero, 0.0)):
            norm = model.encoder.layer[-1].output.LayerNorm
            norm.weight[:16] = value
            norm.bias[:16] = 0.0
    res = InfoFlowEstimator(tiny, steps=5, samples=2).estimate(padded)
    real = res.mask
    assert torch.isfinite(res.sigma[:, real]).all() and torch.isfinite(res.information[:, real]).all()
    assert (res.information[1, real] > 0).all()  # the other units still carry information
    # The near-zero units neither dominate nor poison the estimate: same as exactly-zero units.
    ref = InfoFlowEstimator(zero, steps=5, samples=2).estimate(padded)
    torch.testing.assert_close(res.sigma, ref.sigma, rtol=1e-4, atol=0, equal_nan=True)


def test_progress_callback_is_called_every_step() -> None:
    calls: list[tuple[int, int]] = []
    InfoFlowEstimator(GRUStack(), layers="grus.0", steps=4, samples=1).estimate(
        random_ids(2, 3), on_step=lambda step, total: calls.append((step, total))
    )
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_result_round_trips_through_disk(tmp_path: Any) -> None:
    res = InfoFlowEstimator(GRUStack(), layers="grus.*", steps=2, samples=1).estimate(random_ids(2, 3),
                                                                                    tokens=[["a"] * 3] * 2)
    res.save(tmp_path / "r.pt")
    back = InfoFlowResult.load(tmp_path / "r.pt")
    assert back.layer_names == res.layer_names and back.tokens == res.tokens and back.meta == res.meta
    torch.testing.assert_close(back.sigma, res.sigma, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(back.information, res.information, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(back.at_bound, res.at_bound)


# ----------------------------------------------------------------------------- bad input


class _WithConstantBranch(nn.Module):
    """``const`` sees only zeros (its output does not depend on the input); ``bad`` divides by zero;
    ``twice`` is called twice and ``unused`` never."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 8)
        self.const = nn.Linear(8, 8)
        self.good = nn.Linear(8, 8)
        self.bad = nn.Identity()
        self.twice = nn.Linear(8, 8)
        self.unused = nn.Linear(8, 8)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embedding(ids)
        c = self.const(torch.zeros_like(x))
        h = self.good(x)
        b = self.bad(h / torch.zeros_like(h))
        return c + h + 0 * b.nan_to_num() + self.twice(self.twice(h))


@pytest.fixture
def no_optimisation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any call into the optimisation fails the test: errors must come before it."""

    def fail(*_: Any, **__: Any) -> None:
        raise AssertionError("the optimisation started before the input was rejected")

    monkeypatch.setattr(InfoFlowEstimator, "_optimise", fail)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lam": 0.0}, "`lam` must be a positive number"),
        ({"lam": -1.0}, "`lam` must be a positive number"),
        ({"lam": float("nan")}, "`lam` must be a positive number"),
        ({"steps": -1}, "`steps` must be 'auto' .*or a non-negative int"),
        ({"steps": 2.5}, "`steps` must be 'auto' .*or a non-negative int"),
        ({"steps": "automatic"}, "`steps` must be 'auto'"),
        ({"max_steps": 0}, "`max_steps` must be a positive int"),
        ({"target_error": 0.0}, "`target_error` must be in \\(0, 1\\)"),
        ({"target_error": 1.5}, "`target_error` must be in \\(0, 1\\)"),
        ({"samples": 0}, "`samples` must be a positive int"),
        ({"lr": 0.0}, "`lr` must be positive"),
        ({"sigma_max": -1.0}, "`sigma_max` must be a positive number"),
        ({"chunk_size": 0}, "`chunk_size` must be a positive int or 'auto'"),
        ({"memory_budget": 0}, "`memory_budget` must be a positive number of bytes"),
        ({"check_every": 0}, "`check_every` must be a positive int"),
        ({"position": "first"}, "`position` must be 'all', 'each', an int or a list of ints"),
        ({"position": []}, "`position` must be"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InfoFlowEstimator(GRUStack(), layers="grus.0", **kwargs)


def test_unknown_layer_lists_close_matches() -> None:
    with pytest.raises(ValueError, match=r"Unknown layer module 'encoder\.layr\.1'.*'encoder\.layer\.1'"):
        InfoFlowEstimator(tiny_bert(), layers="encoder.layr.1")
    with pytest.raises(ValueError, match=r"pattern 'grus\.x\*' matches no module"):
        InfoFlowEstimator(GRUStack(), layers="grus.x*")


def test_unknown_embedding_lists_close_matches() -> None:
    with pytest.raises(ValueError, match=r"Unknown embedding module 'embeding'.*'embedding'"):
        InfoFlowEstimator(GRUStack(), layers="grus.0", embedding="embeding")


def test_embedding_cannot_be_a_layer() -> None:
    with pytest.raises(ValueError, match="cannot also be a watched layer"):
        InfoFlowEstimator(GRUStack(), layers=["grus.0", "embedding"])


@pytest.mark.parametrize(
    ("layers", "batch", "match"),
    [
        ("good", torch.zeros(0, 4, dtype=torch.long), "empty"),
        ("good", torch.zeros(2, 0, dtype=torch.long), "empty"),
        ("good", torch.ones(2, 4), "integer tensor.*ids.long()"),
        ("good", torch.ones(4, dtype=torch.long), r"shape \[B, T\]"),
        ("good", {"input_ids": torch.ones(2, 4, dtype=torch.long),
                  "attention_mask": torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])},
         r"sentence\(s\) \[1\] are all padding"),
        ("good", [[1, 2, 3]], "LongTensor"),
        ("const", torch.ones(2, 4, dtype=torch.long), "'const' does not depend on the input.*downstream"),
        ("bad", torch.ones(2, 4, dtype=torch.long), "'bad' returned non-finite values"),
        ("twice", torch.ones(2, 4, dtype=torch.long), "called more than once"),
        ("unused", torch.ones(2, 4, dtype=torch.long), r"\['unused'\] were not called.*check `layers`"),
    ],
)
def test_bad_input_is_rejected_before_optimisation(
    no_optimisation: None, layers: str, batch: Any, match: str
) -> None:
    est = InfoFlowEstimator(_WithConstantBranch(), layers=layers, steps=5)
    with pytest.raises(ValueError, match=match):
        est.estimate(batch)


def test_attention_mask_of_the_wrong_shape(no_optimisation: None) -> None:
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 1, 1, 4)}
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 1, 1, 4\).*\[B, T\] mask"):
        InfoFlowEstimator(tiny_bert()).estimate(batch)


def test_tokenizer_batch_encoding_is_a_batch(padded: dict[str, Tensor]) -> None:
    """A tokenizer's BatchEncoding (a Mapping, not a dict): its attention_mask marks the padding."""
    from transformers import BatchEncoding

    res = InfoFlowEstimator(tiny_bert(), steps=0).estimate(BatchEncoding(dict(padded)))
    assert torch.equal(res.mask, padded["attention_mask"].bool())
    assert torch.isnan(res.sigma[:, ~res.mask]).all() and torch.isfinite(res.sigma[:, res.mask]).all()


def test_all_padding_sentence_with_pad_token_id(no_optimisation: None) -> None:
    ids = torch.tensor([[3, 4, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match=r"\[1\] are all padding; remove them"):
        InfoFlowEstimator(GRUStack(), layers="grus.0", pad_token_id=0).estimate(ids)


def test_embedding_called_twice_is_rejected(no_optimisation: None) -> None:
    class TwoCalls(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(20, 8)
            self.rnn = nn.GRU(8, 8, batch_first=True)

        def forward(self, ids: Tensor) -> Tensor:
            x = torch.cat([self.embedding(ids[:, :2]), self.embedding(ids[:, 2:])], dim=1)
            return self.rnn(x)[0]

    with pytest.raises(ValueError, match="called 2 times per forward.*Embed the whole input in one call"):
        InfoFlowEstimator(TwoCalls(), layers="rnn").estimate(torch.ones(2, 4, dtype=torch.long))


def test_check_rejects_bad_input_before_optimising(no_optimisation: None) -> None:
    est = InfoFlowEstimator(KimCNN(), pad_token_id=PAD)
    with pytest.raises(ValueError, match="all padding"):
        est.check(torch.tensor([[1, 2], [0, 0]]))


def test_check_runs_one_real_step_and_returns_the_row_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """check() runs the analysis' own code path (closed-form start and one step, one sample per word)."""
    est = InfoFlowEstimator(KimCNN(), pad_token_id=PAD)
    calls: list[tuple[int, int]] = []
    optimise = InfoFlowEstimator._optimise

    def spy(self: InfoFlowEstimator, *args: Any, **kwargs: Any) -> InfoFlowResult:
        res = optimise(self, *args, **kwargs)
        calls.append((int(res.meta["steps_run"]), int(res.meta["samples"])))
        return res

    monkeypatch.setattr(InfoFlowEstimator, "_optimise", spy)
    assert est.check(random_ids(2, 9)) == ["convs.0", "convs.1", "convs.2", "convs.3"]
    assert calls == [(1, 1)]
