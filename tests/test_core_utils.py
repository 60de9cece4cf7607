"""Module resolution ("auto", names, globs), hidden-state layout and batch utilities (lightning_infoflow.taps)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from lightning_infoflow import InfoFlowEstimator
from lightning_infoflow.core import hidden, inputs, resolve
from lightning_infoflow.testing import (
    ZOO,
    GRUStack,
    KimCNN,
    LinearModel,
    StackedLSTMClassifier,
)


@pytest.mark.parametrize(
    ("name", "embedding", "layers", "why"),
    [
        ("bert", "embeddings.word_embeddings", ["encoder.layer.0", "encoder.layer.1"], "largest list"),
        ("transformer", "embedding", ["encoder.layers.0", "encoder.layers.1"], "largest list"),
        ("bilstm", "embedding", ["lstms.0", "lstms.1", "lstms.2", "lstms.3"], "largest list"),
        ("kimcnn", "embedding", ["convs.0", "convs.1", "convs.2", "convs.3"], "largest list"),
        ("seq2seq", "embedding", ["encoder", "decoder"], "recurrent modules"),
    ],
)
def test_auto_finds_embedding_and_layers_of_the_zoo(
    name: str, embedding: str, layers: list[str], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = ZOO[name]()
    with caplog.at_level(logging.INFO, logger="lightning_infoflow"):
        est = InfoFlowEstimator(model, steps=0)
    assert est.embedding_name == embedding
    assert est.layer_names == layers
    # "auto" says what it chose and why.
    text = caplog.text
    assert f"embedding={embedding!r}" in text and why in text


def test_auto_embedding_prefers_get_input_embeddings() -> None:
    class WithGetter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.positions = nn.Embedding(16, 8)  # registered first, but not the token lookup
            self.tokens = nn.Embedding(50, 8)
            self.rnn = nn.GRU(8, 8)

        def get_input_embeddings(self) -> nn.Module:
            return self.tokens

    name, module = resolve.resolve_embedding(WithGetter(), "auto")
    assert name == "tokens" and isinstance(module, nn.Embedding) and module.num_embeddings == 50


def test_auto_without_candidates_asks_for_names() -> None:
    with pytest.raises(ValueError, match="layers='auto' found no block list.*Pass layers="):
        InfoFlowEstimator(LinearModel())
    with pytest.raises(ValueError, match="embedding='auto' found no nn.Embedding.*Pass embedding="):
        InfoFlowEstimator(nn.Sequential(nn.Linear(4, 4), nn.GRU(4, 4)))


def test_stacked_lstm_warns_and_explains(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lightning_infoflow"):
        est = InfoFlowEstimator(StackedLSTMClassifier(), steps=0)
    assert est.layer_names == ["lstm"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "num_layers=3" in warnings[0].getMessage() and "one module per layer" in warnings[0].getMessage()


def test_stacked_lstm_named_explicitly_warns_too(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lightning_infoflow"):
        InfoFlowEstimator(StackedLSTMClassifier(), layers="lstm", steps=0)
    assert any("stacked LSTM" in r.getMessage() for r in caplog.records)


def test_single_layer_rnns_do_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lightning_infoflow"):
        InfoFlowEstimator(ZOO["bilstm"](), steps=0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_glob_patterns_stay_within_one_name_component() -> None:
    bert = ZOO["bert"](layers=3)
    assert resolve.resolve_layers(bert, "encoder.layer.*", "embeddings.word_embeddings") == [
        "encoder.layer.0", "encoder.layer.1", "encoder.layer.2"
    ]
    assert resolve.resolve_layers(bert, "encoder.layer.[02]", "") == ["encoder.layer.0", "encoder.layer.2"]
    assert resolve.resolve_layers(bert, "encoder.**.output.LayerNorm", "") == [
        "encoder.layer.0.attention.output.LayerNorm", "encoder.layer.0.output.LayerNorm",
        "encoder.layer.1.attention.output.LayerNorm", "encoder.layer.1.output.LayerNorm",
        "encoder.layer.2.attention.output.LayerNorm", "encoder.layer.2.output.LayerNorm",
    ]
    # A list mixes names and patterns, keeps the order given and drops duplicates.
    assert resolve.resolve_layers(bert, ["encoder.layer.2", "encoder.layer.*"], "") == [
        "encoder.layer.2", "encoder.layer.0", "encoder.layer.1"
    ]


def test_glob_match() -> None:
    assert resolve.glob_match("convs.3", "convs.?")
    assert not resolve.glob_match("convs.3.weight", "convs.?")
    assert resolve.glob_match("a.b.c", "**")
    assert resolve.glob_match("a.b.c", "a.**.c") and resolve.glob_match("a.c", "a.**.c")
    assert not resolve.glob_match("a.b.d", "a.**.c")


def test_empty_layer_list_is_an_error() -> None:
    with pytest.raises(ValueError, match="`layers` is empty"):
        InfoFlowEstimator(GRUStack(), layers=[])


def test_unknown_names_list_close_matches() -> None:
    with pytest.raises(ValueError, match=r"'grus\.0'.*named_modules"):
        resolve.find_module(GRUStack(), "gru.0", "layer")
    with pytest.raises(ValueError, match="Close matches: none"):
        resolve.find_module(GRUStack(), "zzzzzz", "layer")


def test_batch_and_time_dims() -> None:
    b, t = 3, 5
    # [B, T, H], [T, B, H], pooled [B, H] and a Conv1d's [B, C, T] whose C equals T.
    assert hidden.find_batch_and_time_dims(torch.zeros(b, t, 7), torch.zeros(2 * b, t, 7), t) == (0, 1)
    assert hidden.find_batch_and_time_dims(torch.zeros(t, b, 7), torch.zeros(t, 2 * b, 7), t) == (1, 0)
    assert hidden.find_batch_and_time_dims(torch.zeros(b, 7), torch.zeros(2 * b, 7), t) == (0, None)
    conv = nn.Conv1d(4, t, 3, padding=1)
    assert hidden.find_batch_and_time_dims(torch.zeros(b, t, t), torch.zeros(2 * b, t, t), t, conv) == (0, 2)
    assert hidden.find_batch_and_time_dims(torch.zeros(b, t, t), torch.zeros(2 * b, t, t), t) == (0, 1)
    with pytest.raises(ValueError, match="cannot tell the batch dimension"):
        hidden.find_batch_and_time_dims(torch.zeros(b, 4), torch.zeros(b, 4), t)


def test_kim_cnn_with_as_many_channels_as_words_uses_the_time_axis() -> None:
    """Channels == sentence length: the Conv1d's time axis is still its last one."""
    model = KimCNN(channels=6)
    ids = torch.randint(1, 50, (2, 6))
    res = InfoFlowEstimator(model, layers="convs.0", position=0, steps=0).estimate(ids)
    # A width-1 convolution at time step 0 sees word 0 only.
    assert not res.at_bound[0, :, 0].any() and res.at_bound[0, :, 1:].all()


def test_output_containers() -> None:
    x, y = torch.zeros(2), torch.ones(2)
    assert hidden.first_tensor(x) is x
    assert hidden.first_tensor((x, y)) is x and hidden.first_tensor([y, x]) is y
    assert hidden.first_tensor({"h": y}) is y
    assert hidden.replace_first_tensor((x, 1), y) == (y, 1)
    assert hidden.replace_first_tensor([x, 1], y) == [y, 1]
    with pytest.raises(TypeError):
        hidden.first_tensor("nothing")


def test_batch_utilities() -> None:
    batch = {"input_ids": torch.arange(6).view(2, 3), "attention_mask": torch.ones(2, 3), "flag": True,
             "weights": torch.ones(3)}
    rep = inputs.repeat_batch(batch, 3, 2)
    assert rep["input_ids"].shape == (6, 3) and torch.equal(rep["input_ids"][4], batch["input_ids"][0])
    assert rep["flag"] is True and rep["weights"].shape == (3,)  # not batch-shaped: untouched
    assert inputs.batch_size_of(batch) == 2
    with pytest.raises(ValueError, match="LongTensor"):
        inputs.input_ids_of({"ids": torch.zeros(1, 1)})


def test_select_rows_indexes_per_sentence_lists_and_names_what_it_leaves() -> None:
    batch = {"input_ids": torch.arange(6).view(3, 2), "lengths": [2, 1, 2], "tags": ("a", "b", "c"),
             "scale": 0.5, "other": [1, 2]}
    rows = inputs.select_rows(batch, torch.tensor([2, 0, 2]), 3)
    assert rows["lengths"] == [2, 2, 2] and rows["tags"] == ("c", "a", "c") and rows["other"] == [1, 2]
    assert torch.equal(rows["input_ids"], torch.tensor([[4, 5], [0, 1], [4, 5]]))
    assert inputs.unchanged_entries(batch, 3) == ["scale", "other"]


def test_state_mask_counts_integer_positions_over_real_words() -> None:
    left = torch.tensor([[False, False, True, True], [True, True, True, True]])
    last = hidden.state_mask(4, -1, True, left)
    first = hidden.state_mask(4, 0, True, left)
    second_last = hidden.state_mask(4, -2, True, left)
    assert last.tolist() == [[0, 0, 0, 1], [0, 0, 0, 1]]
    assert first.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0]]
    assert second_last.tolist() == [[0, 0, 1, 0], [0, 0, 1, 0]]
    assert hidden.state_mask(4, -3, True, left)[0].sum() == 0  # the sentence has two words: no state there
    assert hidden.state_mask(4, 1, False, left).tolist() == [[0, 1, 0, 0]] * 2  # not the word axis: time step 1


def test_special_tokens_are_one_pattern() -> None:
    from lightning_infoflow.core.tokens import is_special_token

    assert all(is_special_token(t) for t in ["[CLS]", "[unused17]", "<s>", "<pad>", "<|endoftext|>"])
    assert not any(is_special_token(t) for t in ["the", "<3", "[", "a [b] c", "##ing"])
