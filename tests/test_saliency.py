"""Baseline saliency (gradient, integrated gradients, mask perturbation, LRP) and the coherency check."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import pytest
import torch
from torch import Tensor, nn

from lightning_infoflow import InfoFlowEstimator
from lightning_infoflow.analysis.saliency import METHODS, SaliencyResult, saliency

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lightning_infoflow.testing import BiLSTMClassifier, TransformerClassifier, tiny_bert  # noqa: E402

DIM, SEQ, LAYERS = 12, 7, 4


class Truncate(nn.Module):
    """``W h`` with ``W`` = scale x an orthogonal matrix, then every time step from ``T - drop`` on set to 0."""

    def __init__(self, dim: int, drop: int, scale: float = 1.0) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim, bias=False)
        nn.init.orthogonal_(self.lin.weight)
        with torch.no_grad():
            self.lin.weight.mul_(scale)
        self.drop = drop

    def forward(self, h: Tensor) -> Tensor:
        keep = (torch.arange(h.shape[1], device=h.device) < h.shape[1] - self.drop).to(h.dtype)
        return self.lin(h) * keep[None, :, None]


class Shrinking(nn.Module):
    """Layer k keeps the first T - k - 1 words (and loses nothing else): information decreases by construction."""

    def __init__(self, scales: Optional[list[float]] = None, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(30, DIM)
        scales = scales or [1.0] * LAYERS
        self.layers = nn.ModuleList(Truncate(DIM, k + 1, scales[k]) for k in range(LAYERS))

    def forward(self, ids: Tensor) -> Tensor:
        h = self.emb(ids)
        for layer in self.layers:
            h = layer(h)
        return h.sum(dim=(1, 2))


def _ids(batch: int = 3, seed: int = 1) -> Tensor:
    return torch.randint(1, 30, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


FAST = {"ig_steps": 16, "mask_steps": 120}


class ChannelsEqualWords(nn.Module):
    """A Conv1d whose output ``[B, C, T]`` has as many channels as the sentences have words."""

    def __init__(self, words: int = SEQ, dim: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(30, dim)
        self.conv = nn.Conv1d(dim, words, kernel_size=3, padding=1)

    def forward(self, ids: Tensor) -> Tensor:
        return self.conv(self.emb(ids).transpose(1, 2))


# ---------------------------------------------------------------------------------------------- methods


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_layers_x_sentences_x_words_and_zero_for_dropped_words(method: str) -> None:
    model = Shrinking()
    out = saliency(model, _ids(), "layers.*", method, **FAST)
    assert isinstance(out, SaliencyResult) and out.method == method
    assert out.layer_names == [f"layers.{k}" for k in range(LAYERS)]
    assert out.values.shape == (LAYERS, 3, SEQ) and out.values.dtype == torch.float32
    assert torch.isfinite(out.values).all() and (out.values >= 0).all()
    for k in range(LAYERS):
        kept, dropped = out.values[k, :, : SEQ - k - 1], out.values[k, :, SEQ - k - 1 :]
        assert (kept > 0).float().mean() > 0.9
        if method in ("gradient", "perturbation"):  # no signed sums: every kept word counts about equally
            assert kept.min() > 0.3 * kept.max()
        assert dropped.max() <= (0.05 if method == "perturbation" else 1e-6) * kept.max()


def test_padding_is_nan_and_dict_batches_with_attention_mask_work() -> None:
    model = tiny_bert(layers=2, hidden=16)
    ids = torch.randint(1, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    attn = torch.ones_like(ids)
    attn[1, 4:] = 0
    ids[1, 4:] = 0
    out = saliency(model, {"input_ids": ids, "attention_mask": attn}, method="gradient")
    assert out.layer_names == ["encoder.layer.0", "encoder.layer.1"]
    assert torch.isnan(out.values[:, 1, 4:]).all() and torch.isfinite(out.values[:, 0]).all()
    assert torch.isfinite(out.values[:, 1, :4]).all()
    assert out.mask.tolist() == attn.bool().tolist()


def test_model_is_left_as_found() -> None:
    model = BiLSTMClassifier(layers=2, dropout=0.3)
    model.train()
    model.lstms[0].eval()  # a mixed state must come back as it was
    modes = [m.training for m in model.modules()]
    params = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    for method in ("gradient", "integrated_gradients", "perturbation"):
        saliency(model, _ids(), method=method, pad_token_id=0, ig_steps=4, mask_steps=3)
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert torch.equal(torch.get_rng_state(), rng)
    assert not any(h for m in model.modules() for h in (m._forward_hooks, m._forward_pre_hooks))


def test_linear_model_integrated_gradients_and_lrp_equal_gradient_times_input() -> None:
    """Bias-free linear network: IG (target='sum') and LRP-epsilon (target='norm', relevance s_j at unit j)
    both reduce to x * d(sum s)/dx."""
    model = Shrinking()
    ids = _ids()
    x = model.emb(ids).detach().requires_grad_(True)
    h = x
    for layer in model.layers[:2]:
        h = layer(h)
    (grad,) = torch.autograd.grad(h.sum(), x)
    expected = (x * grad).sum(-1).abs().detach()
    for method, target in (("integrated_gradients", "sum"), ("lrp", "norm")):
        out = saliency(model, ids, ["layers.1"], method, target=target, ig_steps=8)
        torch.testing.assert_close(out.values[0], expected, rtol=1e-4, atol=1e-4)
    grad_out = saliency(model, ids, ["layers.1"], "gradient", target="sum")
    torch.testing.assert_close(grad_out.values[0], grad.abs().mean(-1))


def test_callable_target_and_positions() -> None:
    model = Shrinking()
    ids = _ids()
    by_name = saliency(model, ids, "layers.*", "gradient", target="sum")
    by_fn = saliency(model, ids, "layers.*", "gradient", target=lambda s, m: (s * m.unsqueeze(-1)).sum(dim=(1, 2)))
    torch.testing.assert_close(by_name.values, by_fn.values)
    assert by_fn.target == "callable"
    first = saliency(model, ids, ["layers.0", "layers.1"], "gradient", position=[0, 2])
    assert first.layer_names == ["layers.0@0", "layers.0@2", "layers.1@0", "layers.1@2"]
    # time step 2 of an orthogonal per-word layer depends only on word 2
    assert (first.values[1, :, [0, 1, 3, 4, 5, 6]] == 0).all() and (first.values[1, :, 2] > 0).all()


def test_lrp_refuses_layers_captum_has_no_rule_for() -> None:
    with pytest.raises(ValueError, match=r"lstms\.0 \(LSTM\)"):
        saliency(BiLSTMClassifier(layers=2), _ids(), method="lrp", pad_token_id=0)
    with pytest.raises(ValueError, match="MultiheadAttention"):
        saliency(TransformerClassifier(), _ids(), method="lrp", pad_token_id=0)


def test_lrp_leaves_rules_and_attributes_as_found() -> None:
    from captum.attr._utils.lrp_rules import EpsilonRule

    model = Shrinking()
    rule = EpsilonRule(epsilon=1e-6)
    model.layers[0].lin.rule = rule
    saliency(model, _ids(), "layers.*", "lrp")
    assert model.layers[0].lin.rule is rule
    assert not any(hasattr(m, "activations") for m in model.modules())
    assert not any(hasattr(m, "rule") for m in model.layers[1:].modules())


def test_bad_arguments_raise() -> None:
    model = Shrinking()
    with pytest.raises(ValueError, match="method"):
        saliency(model, _ids(), method="shap")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target"):
        saliency(model, _ids(), method="gradient", target="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mask_fill"):
        saliency(model, _ids(), method="perturbation", mask_fill="noise", mask_steps=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="all padding"):
        saliency(model, torch.zeros(2, 3, dtype=torch.long), method="gradient", pad_token_id=0)


# ---------------------------------------------------------------------------------------------- coherency


def test_our_measure_decreases_monotonically_through_layers_that_drop_words() -> None:
    ids = _ids(batch=4)
    results = {}
    for name, scales in {"unit": None, "rescaled": [1.0, 3.0, 3.0, 3.0]}.items():
        res = InfoFlowEstimator(Shrinking(scales), "layers.*", steps=30, seed=0).estimate(ids)
        info = res.sentence_information.mean(-1)
        assert (info[1:] < info[:-1]).all(), info
        for k in range(LAYERS):
            assert (res.information[k, :, SEQ - k - 1 :] == 0).all()  # dropped words: no information
            assert (res.information[k, :, : SEQ - k - 1] > 0).all()
        results[name] = info
    # rescaling a layer's state does not change the information it carries ...
    torch.testing.assert_close(results["rescaled"], results["unit"], rtol=0.02, atol=0.0)
    # ... but it changes the gradient baseline by the scale factor (3x per layer from the second on)
    grads = {n: saliency(Shrinking(s), ids, "layers.*", "gradient").layer_total
             for n, s in {"unit": None, "rescaled": [1.0, 3.0, 3.0, 3.0]}.items()}
    torch.testing.assert_close(grads["rescaled"] / grads["unit"], torch.tensor([1.0, 3.0, 9.0, 27.0]))


# ---------------------------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (cuDNN refuses RNN backward in eval mode)")
@pytest.mark.parametrize("method", ["gradient", "integrated_gradients", "perturbation"])
def test_lstm_under_cudnn_in_eval_mode(method: str) -> None:
    model = BiLSTMClassifier(layers=2)
    ids = _ids()
    cpu = saliency(model, ids, method=method, pad_token_id=0, ig_steps=8, mask_steps=20)
    model.cuda().eval()
    gpu = saliency(model, ids.cuda(), method=method, pad_token_id=0, ig_steps=8, mask_steps=20)
    assert torch.backends.cudnn.enabled and not model.training
    torch.testing.assert_close(gpu.values, cpu.values, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("method", ["gradient", "integrated_gradients"])
def test_conv1d_with_as_many_channels_as_words_uses_the_time_axis(method: str) -> None:
    """Time step 0 of a kernel-3 convolution sees words 0 and 1 only (the channel axis has the same length)."""
    out = saliency(ChannelsEqualWords(), _ids(), layers="conv", position=0, method=method, **FAST)
    assert (out.values[0, :, :2] > 0).all() and (out.values[0, :, 2:] == 0).all()


def test_saliency_runs_the_estimators_checks() -> None:
    """The hooked forward is the estimator's: a layer that does not depend on the embeddings is refused."""

    class ConstantBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(30, 8)
            self.lin = nn.Linear(8, 8)
            self.const = nn.Linear(1, 8)

        def forward(self, ids: Tensor) -> Tensor:
            return self.lin(self.emb(ids)) + self.const(torch.ones(ids.shape[0], ids.shape[1], 1))

    with pytest.raises(ValueError, match="'const' does not depend on the input embeddings"):
        saliency(ConstantBranch(), _ids(), layers=["lin", "const"], embedding="emb")
