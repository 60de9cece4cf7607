"""What a new user meets first: the README's Quick start as written, the model contract, the examples' command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lit_helpers import TinyTextNet, loaders, probe_ids
from torch import nn

from lightning_infoflow import EstimatorConfig, InfoFlowCallback
from lightning_infoflow.testing import tiny_bert

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(estimator=EstimatorConfig(steps=3, warm_steps=1, samples=1), max_overhead=None)


def _quick_start_code() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quick start"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the Quick start has no python block"
    return match.group(1)


def _tiny_hf() -> tuple[Any, Any]:
    """A WordPiece tokenizer over the Quick start's words and a tiny random BertForSequenceClassification."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = sorted(set(re.findall(r"[a-z]+|[.,]", _quick_start_code().lower())))
    vocab = {word: i for i, word in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tokenizer = BertTokenizerFast(vocab=vocab)
    config = BertConfig(vocab_size=len(words) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)
    return tokenizer, BertForSequenceClassification(config)


@pytest.mark.slow
def test_readme_quick_start_runs_as_written(tmp_path, monkeypatch):
    """The Quick start's own LightningModule (forward(self, batch)) with the callback and no module=."""
    import transformers

    tokenizer, model = _tiny_hf()
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", lambda *a, **k: model)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "quick_start"}
    exec(compile(_quick_start_code(), "README.md#quick-start", "exec"), namespace)  # noqa: S102 - our own README
    callback, trainer = namespace["callback"], namespace["trainer"]
    assert trainer.global_step == 60 and callback.failures == 0
    assert callback.state.layer_names == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert callback.state.steps[0] == 0 and callback.state.steps[-1] == 60
    assert callback.last_result.tokens[0][:3] == ["[CLS]", "a", "charming"]
    results = list((tmp_path / "runs").rglob("infoflow/results/step_*.pt"))
    assert len(results) == len(callback.state.steps)


class BatchForward(L.LightningModule):
    """The common LightningModule: forward(self, batch) over a dict batch, the network in an attribute."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.head = nn.Linear(32, 2)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.network(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
        return self.head(hidden[0][:, 0] if isinstance(hidden, tuple) else hidden.last_hidden_state[:, 0])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        ids, y = batch
        return nn.functional.cross_entropy(self({"input_ids": ids}), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _fit(tmp_path: Path, module: L.LightningModule, cb: InfoFlowCallback) -> L.Trainer:
    trainer = L.Trainer(max_steps=2, logger=CSVLogger(tmp_path), callbacks=[cb], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, loaders()[0])
    return trainer


def test_hugging_face_submodule_is_found_when_forward_takes_a_batch(tmp_path, monkeypatch):
    import lightning_infoflow.lightning.callback as callback_module

    said: list[str] = []  # recorded directly: whether Lightning's logger propagates depends on earlier tests
    monkeypatch.setattr(callback_module, "rank_zero_info", lambda message, *a, **k: said.append(str(message)))
    probe = {"input_ids": probe_ids(), "attention_mask": torch.ones_like(probe_ids())}
    cb = InfoFlowCallback(probe, every_n_train_steps=2, **FAST)
    _fit(tmp_path, BatchForward(tiny_bert()), cb)
    assert cb.state.layer_names == ["encoder.layer.0", "encoder.layer.1"]  # relative to the found network
    assert cb.failures == 0 and cb.state.steps == [0, 1, 2]
    assert any("Hugging Face submodule 'network' (BertModel)" in m for m in said), said


def test_layer_names_given_from_the_lightning_module_still_resolve(tmp_path):
    probe = {"input_ids": probe_ids()}
    cb = InfoFlowCallback(probe, layers="network.encoder.layer.1", every_n_train_steps=2, **FAST)
    _fit(tmp_path, BatchForward(tiny_bert()), cb)
    assert cb.state.layer_names == ["encoder.layer.1"]


class PlainBatchForward(BatchForward):
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.network(batch["input_ids"])


def test_setup_error_names_both_ways_out_when_no_network_is_found(tmp_path):
    cb = InfoFlowCallback({"input_ids": probe_ids()}, layers="network.rnns.*", **FAST)
    with pytest.raises(ValueError, match=r"failed on the probe batch") as info:
        _fit(tmp_path, PlainBatchForward(TinyTextNet()), cb)
    message = str(info.value)
    assert "PlainBatchForward.forward(batch" in message and "no Hugging Face submodule" in message
    assert "module='network'" in message and "forward(input_ids, attention_mask=None)" in message
    assert "keywords (input_ids=..., attention_mask=...)" in message
    # the first way out works
    ok = InfoFlowCallback(probe_ids(), module="network", layers="rnns.*", every_n_train_steps=2, **FAST)
    _fit(tmp_path / "ok", PlainBatchForward(TinyTextNet()), ok)
    assert ok.state.layer_names == ["rnns.0", "rnns.1"] and ok.failures == 0


# --------------------------------------------------------------------------- examples' command line


def test_examples_run_help_is_fast_and_imports_no_analysis():
    code = ("import sys, contextlib, io\nfrom examples.run import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('examples.analyses.')))\n"
            "print('torch' in sys.modules, 'lightning' in sys.modules)\n"
            "assert 'dynamics' in out.getvalue() and 'Fig. 9' in out.getvalue()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    imported, heavy = proc.stdout.strip().splitlines()[-2:]
    assert imported == "[]" and heavy == "False False"


def test_examples_subcommand_help_shows_defaults(capsys):
    from examples.run import main

    with pytest.raises(SystemExit):
        main(["layers", "--help"])
    text = capsys.readouterr().out
    assert "optimizer steps per trained model (default: 1500)" in " ".join(text.split())
    assert "(default: 32)" in text  # an option without a help line of its own


@pytest.mark.slow
def test_demo_prints_a_line_per_analysis_and_validation(tmp_path, capsys):
    from examples.demo import main

    main(["--out", str(tmp_path), "--max-steps", "4", "--every", "2", "--train-size", "256", "--hidden", "8",
          "--probe-size", "2"])
    lines = capsys.readouterr().out.splitlines()
    analyses = [line for line in lines if "] analysis " in line]
    assert [line.split("]")[0] for line in analyses] == ["[step 0/4", "[step 1/4", "[step 2/4", "[step 4/4"]
    assert all("information per word by layer (nats):" in line for line in analyses)
    assert sum("] validation: val/acc" in line for line in lines) == 2  # at steps 2 and 4
    assert any("--samples_per_plugin images=1000" in line for line in lines)
