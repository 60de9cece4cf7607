"""The example models and data (examples/): each builds tiny, trains two steps, and the estimator reads it."""

from __future__ import annotations

import os
import sys

import lightning as L
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples.data import GlueDataModule, WordTokenizer, load_split  # noqa: E402
from examples.models import (  # noqa: E402
    MaskedMaxPool,
    ReverseTask,
    TextClassifier,
    data_options,
    make_reverse_data,
    reverse_tokens,
)
from lightning_infoflow import InfoFlowEstimator  # noqa: E402

TINY = {
    "transformer": {"d_model": 16, "nhead": 2, "num_layers": 3, "dim_feedforward": 32},
    "lstm": {"embed_dim": 8, "hidden": 8},
    "cnn": {"embed_dim": 8, "channels": 6},
    "bert": {},
}


def _trainer() -> L.Trainer:
    return L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=0,
                     accelerator="cpu", devices=1)


def test_word_tokenizer_ids_and_tokens_line_up():
    tok = WordTokenizer.build(["The good film", "a bad film", "a film"], min_freq=1, add_cls=True, max_length=4)
    assert tok.vocab[:4] == ["[PAD]", "[UNK]", "[CLS]", "film"]
    enc = tok.encode(["a GOOD movie here too", "film"])
    assert enc["input_ids"].shape == (2, 4)
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert tok.tokens(["a GOOD movie here too"]) == [["[CLS]", "a", "good", "[UNK]"]]
    assert enc["input_ids"][0, 0] == tok.cls_token_id and enc["input_ids"][0, 3] == tok.unk_token_id
    assert WordTokenizer.from_state_dict(tok.state_dict()).encode(["film"])["input_ids"].tolist() == [[2, 3]]


def test_glue_files_and_rare_bird_sentence_are_bundled():
    sst_dev, labels = load_split("sst2", "dev")
    assert len(sst_dev) == 872 and set(labels) == {0, 1}
    assert any(s.startswith("rare birds has more than enough charm") for s in sst_dev)
    cola_dev, cola_labels = load_split("cola", "dev")
    assert len(cola_dev) == 516 and set(cola_labels) == {0, 1}


def test_masked_max_pool_ignores_padding():
    h = torch.tensor([[[1.0], [5.0], [9.0]]])
    assert MaskedMaxPool()(h, torch.tensor([[1, 1, 0]])).item() == 5.0


@pytest.mark.parametrize("name,task", [("transformer", "sst2"), ("lstm", "cola"), ("cnn", "sst2"), ("bert", "sst2")])
def test_model_trains_and_estimator_finds_its_layers(name, task):
    torch.manual_seed(0)
    dm = GlueDataModule(task, batch_size=4, train_size=8, dev_size=4, max_length=12, **data_options(name))
    dm.setup()
    module = TextClassifier(name, dm.vocab_size, lr=1e-3, model_kwargs=TINY[name])
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = _trainer()
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert {"val/acc", "val/mcc"} <= set(trainer.callback_metrics)

    sentences = ["rare birds has more than enough charm to make it memorable .", "a dull film"]
    batch = dm.tokenizer.encode(sentences)
    est = InfoFlowEstimator(module, layers="auto", steps=0)
    assert est.layer_names == module.infoflow_layers
    assert "embed" in est.embedding_name
    res = est.estimate(batch, tokens=dm.tokenizer.tokens(sentences))
    assert res.sigma.shape == (len(module.infoflow_layers), 2, batch["input_ids"].shape[1])
    assert torch.isfinite(res.layer_information).all() and (res.layer_information > 0).all()
    pad = ~batch["attention_mask"].bool()
    assert pad.any() and torch.isnan(res.sigma[:, pad]).all() and not torch.isnan(res.sigma[:, ~pad]).any()

    readout = InfoFlowEstimator(module, layers=module.infoflow_readout, steps=2).estimate(batch)
    assert readout.layer_names == [module.infoflow_readout]
    assert torch.isfinite(readout.sigma[readout.mask.expand_as(readout.sigma)]).all()


def test_lstm_padding_changes_no_real_state():
    module = TextClassifier("lstm", 20, model_kwargs=TINY["lstm"]).eval()
    ids = torch.tensor([[3, 4, 5, 0, 0]])
    alone = module(ids[:, :3], torch.ones(1, 3, dtype=torch.long))
    padded = module(ids, (ids != 0).long())
    torch.testing.assert_close(alone, padded)


def test_reverse_data_and_model():
    d = make_reverse_data(5, seq_len=4, seed=1)
    ids, y = d["input_ids"], d["labels"]
    assert ids.shape == (5, 9) and torch.equal(y, ids[:, :4].flip(1))
    assert torch.equal(ids[:, 6:], y[:, :3])  # teacher forcing: decoder inputs are y shifted right
    assert reverse_tokens(ids[:1])[0][4:6] == ["<EOS>", "<SOS>"]

    module = ReverseTask(seq_len=4, embed_dim=8, hidden=16, train_size=32, val_size=16, batch_size=16)
    trainer = _trainer()
    trainer.fit(module)
    assert trainer.global_step == 2 and "val/token_acc" in trainer.callback_metrics
    assert InfoFlowEstimator(module, layers="auto", steps=0).layer_names == [
        "model.enc0", "model.enc1", "model.dec0", "model.dec1"]
    est = InfoFlowEstimator(module, layers=module.infoflow_layers, position="each", steps=2)
    res = est.estimate({"input_ids": ids[:2], "attention_mask": d["attention_mask"][:2]})
    assert res.layer_names == [f"model.last_hidden@{t}" for t in range(9)]
    assert res.sigma.shape == (9, 2, 9) and torch.isfinite(res.sigma).all()


# --------------------------------------------------------------------------- analysis commands, tiny


def _run(tmp_path, *argv: str) -> dict:
    from examples.run import main

    out = tmp_path / argv[0]
    summary = main([*argv, "--tiny", "--out", str(out)])
    assert os.path.isfile(summary["figure"]) and os.path.getsize(summary["figure"]) > 1000
    assert (out / "summary.json").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in out.rglob("*")), "no TensorBoard log written"
    return summary


@pytest.mark.integration
def test_timestamps_command_measures_the_reverse_diagonal(tmp_path):
    s = _run(tmp_path, "timestamps")
    assert s["seq_len"] == 4 and len(s["argmax_per_step"]) == 4 and 0.0 <= s["hit_rate"] <= 1.0
    assert s["expected_per_step"] == [3, 2, 1, 0]


@pytest.mark.integration
def test_layers_and_regularization_commands(tmp_path):
    s = _run(tmp_path, "layers")
    assert len(s["layer_information"]) == 4 and s["decreasing"] in (True, False)
    s = _run(tmp_path, "regularization", "--alphas", "0", "1e-4")
    assert [r["alpha"] for r in s["runs"]] == [0.0, 1e-4]
    assert all(r["last_layer_information"] > 0 for r in s["runs"])


@pytest.mark.integration
def test_words_sentence_accuracy_commands(tmp_path):
    s = _run(tmp_path, "words", "--models", "lstm", "cnn")
    assert set(s["stop_word_fraction"]) == {"lstm", "cnn"}
    assert all(sum(c for _, c in m["top_words"]) == 2 * m["sentences"] for m in s["models"].values())
    assert all(m["stop_word_information_ratio"] > 0 for m in s["models"].values())  # stop and other words seen
    s = _run(tmp_path, "sentence", "--models", "bert", "transformer")
    assert len(s["models"]["bert"]["sentence_information"]) == 6
    assert len(s["models"]["transformer"]["sentence_information"]) == 3
    assert len(s["models"]["transformer"]["stop_word_information_ratio"]) == 3
    s = _run(tmp_path, "accuracy", "--models", "cnn", "--tasks", "sst2", "cola")
    assert set(s["results"]["cnn"]) == {"sst2", "cola"} and "| cnn |" in s["table"]


@pytest.mark.integration
def test_dynamics_command_reads_the_callback_results(tmp_path):
    s = _run(tmp_path, "dynamics", "--models", "lstm", "--every", "1")
    lstm = s["models"]["lstm"]
    assert lstm["steps"] == [0, 1, 2]  # step 0, then every scheduled step (none skipped for overhead)
    assert len(lstm["layer_names"]) == 4
    assert all(len(row) == 4 for row in lstm["information"])
    saved = list((tmp_path / "dynamics").rglob("step_*.pt"))
    assert len(saved) == len(lstm["steps"])


def test_word_positions_finds_whole_words_and_word_pieces():
    from examples.analyses.attributes import word_positions

    assert word_positions(["domestic", "tension", "and", "unhappiness"], "unhappiness") == [3]
    pieces = ["[CLS]", "and", "un", "##ha", "##pp", "##iness", "[SEP]"]
    assert word_positions(pieces, "unhappiness") == [2, 3, 4, 5]
    with pytest.raises(ValueError, match="not in the tokens"):
        word_positions(["and", "[UNK]"], "unhappiness")


@pytest.mark.integration
def test_attributes_command_handles_word_pieces(tmp_path):
    s = _run(tmp_path, "attributes", "--models", "bert", "lstm", "--num-random", "200")
    bert, lstm = s["models"]["bert"], s["models"]["lstm"]
    assert bert["tokens"][bert["positions"][0]] == "un" and len(bert["positions"]) == 4
    gauss = bert["gaussian"]
    assert "tedious" in gauss["split"]["negative adjective"]  # a split concept word is reported, not dropped
    assert "word pieces" in bert["state"]["skipped"]  # the state likelihood replaces a single position
    assert len(gauss["remaining"]) == 6
    for likelihood in ("gaussian", "state"):
        r = lstm[likelihood]
        assert len(r["remaining"]) == 4 and all(len(row) == len(r["concepts"]) == 5 for row in r["remaining"])
        assert r["num_random"] == 200 and r["most_kept_last_layer"] in r["concepts"]
    assert set(s["figures"]) == {"gaussian", "state"} and all(os.path.isfile(p) for p in s["figures"].values())
