"""The ``infoflow`` command: reports, comparisons and guidance from saved runs, and analyses of checkpoints.

.. code-block:: text

    infoflow report RUN_DIR            one run: curves, heatmaps, effective words, findings (HTML + PNGs)
    infoflow compare RUN_DIR...        runs side by side (a sweep): hyperparameters, metrics, guidance
    infoflow analyze --module pkg.mod:Class --ckpt model.ckpt --probe probe.txt --out DIR
    infoflow analyze --hf-model FOLDER --probe probe.txt --out DIR

A RUN_DIR is the log dir of a logger the callback wrote to (``TensorBoardLogger.log_dir``,
``CSVLogger.log_dir``); ``compare`` also takes a parent folder and uses every run below it.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Callable, Optional

import click
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from lightning_infoflow.analysis import guidance
from lightning_infoflow.analysis.guidance import Finding
from lightning_infoflow.reporting.runs import (
    RunError,
    compare_findings,
    compare_tables,
    find_runs,
    layer_table,
    load_run,
    match_probes,
    parse_steps,
    peak_index,
    pick_score,
    run_findings,
    run_names,
    write_comparison,
    write_run_report,
)


def _out() -> Console:
    return Console(highlight=False, soft_wrap=False)


@contextmanager
def _progress(enabled: bool = True) -> Iterator[Callable[[str, int], Callable[[], None]]]:
    """A rich progress display on stderr; yields ``task(description, total) -> advance``."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), transient=True, disable=not enabled)
    with progress:
        def task(description: str, total: int) -> Callable[[], None]:
            task_id = progress.add_task(description, total=total)
            return lambda: progress.advance(task_id)

        yield task


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    return "—" if value is None else str(value)


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Group:
    """A titled table; the title is a line of its own (a table title would wrap at the table's width)."""
    table = Table(show_lines=False)
    for i, h in enumerate(header):
        numeric = any(isinstance(row[i], (int, float)) and not isinstance(row[i], bool)
                      or isinstance(row[i], str) and row[i][:2].lstrip("+-")[:1].isdigit() for row in rows)
        table.add_column(str(h), justify="right" if numeric and i > 0 else "left", overflow="fold")
    for row in rows:
        table.add_row(*[_fmt(c) for c in row])
    return Group(Text(title, style="bold"), table)


def _print_findings(console: Console, findings: Sequence[Finding]) -> None:
    warnings = [f for f in findings if f.severity == "warning"]
    infos = [f for f in findings if f.severity != "warning"]
    console.print(f"[bold]Guidance[/bold]: {len(warnings)} warning(s)")
    if not warnings:
        console.print("  no rule triggered a warning")
    for f in warnings:
        where = " · ".join(x for x in (f.run, f.layer) if x)
        width = max(40, console.width - 1)
        head = f"! {f.rule}" + (f" ({where}): " if where else ": ") + f.message
        text = Text(textwrap.fill(head, width, initial_indent="  ", subsequent_indent="    ", break_on_hyphens=False))
        text.stylize("yellow", 2, 4 + len(f.rule))
        console.print(text)
        for label, value in (("threshold", f.threshold), ("try", f.suggestion)):
            console.print(textwrap.fill(f"{label}: {value}", width, initial_indent="      ", subsequent_indent="        ",
                                        break_on_hyphens=False),
                          markup=False)
    if infos:
        rows = [[f.run or "", f.layer or "", int(f.measured["peak_step"]), f.measured["peak_information"],
                 f"{100 * f.measured['rise']:+.1f}%", f"{-100 * f.measured['fall']:+.1f}%", _phase(f)]
                for f in infos if f.rule == "information_phases"]
        header = ["run", "layer", "peak step", "peak info", "rise to peak", "peak to last", "phases"]
        if not any(r[0] for r in rows):
            rows, header = [r[1:] for r in rows], header[1:]
        console.print(_table(f"Information peaks (Fig. 9; a phase is a change of at least "
                             f"{100 * guidance.PHASE_CHANGE:g}% of the peak)", header, rows))


def _phase(f: Finding) -> str:
    rise, fall = f.measured["rise"] >= guidance.PHASE_CHANGE, f.measured["fall"] >= guidance.PHASE_CHANGE
    return {(True, True): "expansion, compression", (True, False): "expansion", (False, True): "compression",
            (False, False): "stable"}[(rise, fall)]


def _stop_words(path: Optional[str]) -> frozenset[str]:
    if path is None:
        return guidance.STOP_WORDS
    with open(path, encoding="utf-8") as f:
        words = frozenset(w.strip().lower() for line in f for w in line.split() if w.strip())
    if not words:
        raise click.BadParameter(f"{path!r} holds no word", param_hint="--stop-words")
    return words


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lightning-infoflow")
def main() -> None:
    """Information flow in NLP models (Guan et al., ICML 2019): reports, comparisons and guidance."""


# --------------------------------------------------------------------------- report


@main.command(short_help="One run's report: HTML, PNGs and findings.")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for report.html and the PNGs [default: RUN_DIR/infoflow/report].")
@click.option("--steps", "steps_spec", default="first,peak,last", show_default=True,
              help="Analyses to draw heatmaps for: first, last, peak, all or step numbers, comma-separated.")
@click.option("--stop-words", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Stop-word list (words separated by white space) for the noisy-words rule.")
@click.option("--min-words", type=click.FloatRange(min=0), default=guidance.TOO_LITTLE_ABSOLUTE, show_default=True,
              help="Flag the run when its last layer keeps fewer effective words than this.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars (stderr).")
def report(run_dir: str, out: Optional[str], steps_spec: str, stop_words: Optional[str], min_words: float,
           progress: bool) -> None:
    """One run's report: information per layer against step, heatmaps of every probe sentence, effective
    words and the findings. Writes a self-contained HTML file and PNGs, and prints a summary."""
    console = _out()
    with _progress(progress) as task:
        try:
            run = load_run(run_dir, progress=task)
        except RunError as err:
            raise click.ClickException(str(err)) from None
        try:
            chosen = parse_steps(steps_spec, run.steps, peak=peak_index(run))
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--steps") from None
        findings = run_findings(run, _stop_words(stop_words), absolute=min_words)
        out_dir = out or os.path.join(run.path, "infoflow", "report")
        path = write_run_report(run, out_dir, findings, chosen, progress=task)
    last = run.last
    console.print(f"[bold]infoflow report[/bold] {run.name}: {len(run.results)} analyses at steps {run.steps}, "
                  f"{last.sigma.shape[1]} probe sentences")
    for note in run.skipped:
        console.print(f"  skipped {note}")
    if run.hparams:
        console.print("Hyperparameters: " + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(run.hparams.items())))
    metrics = run.final_metrics()
    if metrics:
        console.print("Final validation: " + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(metrics.items())))
    console.print(_table(f"Layers at step {run.steps[-1]}", *layer_table(run)))
    _print_findings(console, findings)
    pngs = sum(name.endswith(".png") for name in os.listdir(out_dir))
    console.print(f"Report: {path}\nPNGs:   {out_dir} ({pngs} files)")


# --------------------------------------------------------------------------- compare


@main.command(short_help="Runs of a sweep side by side, with guidance.")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default="infoflow-compare", show_default=True,
              help="Folder for compare.html and the PNGs.")
@click.option("--metric", default=None, help="Validation scalar that ranks the runs [default: accuracy-like, else loss].")
@click.option("--mode", type=click.Choice(["max", "min"]), default=None, help="Whether --metric is better high or low.")
@click.option("--too-little-ratio", type=click.FloatRange(0, 1), default=guidance.TOO_LITTLE_RELATIVE, show_default=True,
              help="Flag a run whose last layer keeps fewer effective words than this fraction of the best run's.")
@click.option("--stop-words", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Stop-word list (words separated by white space) for the noisy-words rule.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars (stderr).")
def compare(run_dirs: tuple[str, ...], out: str, metric: Optional[str], mode: Optional[str], too_little_ratio: float,
            stop_words: Optional[str], progress: bool) -> None:
    """Runs side by side: per-layer information, last-layer saliency on the same probe sentences,
    hyperparameters, final validation metrics, then guidance. A folder holding several runs adds them all."""
    console = _out()
    try:
        paths = list(dict.fromkeys(p for d in run_dirs for p in find_runs(d)))
    except RunError as err:
        raise click.ClickException(str(err)) from None
    if len(paths) < 2:
        raise click.UsageError(f"compare needs two runs or more; found one: {paths[0]}. Use `infoflow report` for one run.")
    with _progress(progress) as task:
        try:
            runs = [load_run(p, name, progress=task) for p, name in zip(paths, run_names(paths))]
            matched = match_probes(runs)
            scores, score_name = pick_score(matched.runs, metric, mode)
        except RunError as err:
            raise click.ClickException(str(err)) from None
        findings = compare_findings(matched.runs, scores, score_name or "score", _stop_words(stop_words),
                                    relative=too_little_ratio)
        path = write_comparison(matched.runs, out, findings, matched.notes, scores, progress=task)
    console.print(f"[bold]infoflow compare[/bold]: {len(matched.runs)} runs, {matched.sentences} shared probe sentences")
    for note in matched.notes:
        console.print(f"  [yellow]note[/yellow]: {note}")
    tables = compare_tables(matched.runs, scores)
    console.print(_table("Runs (hyperparameters that differ, final validation metrics, last layer)", *tables["runs"]))
    console.print(_table("Information per layer at the last analysis (nats per word)", *tables["information"]))
    if scores:
        console.print(f"Best run by {score_name}: {max(scores, key=scores.get)}")
    _print_findings(console, findings)
    console.print(f"Comparison: {path}")


# --------------------------------------------------------------------------- analyze


def _import(spec: str, option: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"expected pkg.module:Name, got {spec!r}", param_hint=option)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise click.BadParameter(f"cannot import {module_name!r} ({err})", param_hint=option) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise click.BadParameter(f"module {module_name!r} has no {attr!r}", param_hint=option) from None


def _load_tokenizer(spec: str) -> Any:
    if os.path.isdir(spec):
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise click.UsageError("a tokenizer folder needs transformers: pip install 'lightning-infoflow[transformers]'") from None
        return AutoTokenizer.from_pretrained(spec, local_files_only=True)
    factory = _import(spec, "--tokenizer")
    if not callable(factory):
        raise click.BadParameter(f"{spec!r} is not callable", param_hint="--tokenizer")
    return factory()


def _load_lightning(spec: str, ckpt: str) -> tuple[Any, dict[str, Any], Optional[int]]:
    import torch

    cls = _import(spec, "--module")
    if not hasattr(cls, "load_from_checkpoint"):
        raise click.BadParameter(f"{spec!r} is not a LightningModule class (no load_from_checkpoint)", param_hint="--module")
    try:
        module = cls.load_from_checkpoint(ckpt, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any loading failure is the user's to fix
        raise click.ClickException(f"cannot load {ckpt!r} with {spec}.load_from_checkpoint: {type(err).__name__}: {err}") from None
    step = None
    try:
        step = int(torch.load(ckpt, map_location="cpu", weights_only=True).get("global_step"))
    except Exception:  # noqa: BLE001 - the step is optional metadata
        step = None
    return module, dict(getattr(module, "hparams", {}) or {}), step


def _load_hf(folder: str) -> tuple[Any, dict[str, Any]]:
    try:
        import transformers
    except ImportError:
        raise click.UsageError("--hf-model needs transformers: pip install 'lightning-infoflow[transformers]'") from None
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        archs = [a for a in (getattr(config, "architectures", None) or []) if hasattr(transformers, a)]
        cls = getattr(transformers, archs[0]) if archs else transformers.AutoModel
        model = cls.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # noqa: BLE001
        raise click.ClickException(f"cannot load a Hugging Face model from {folder!r}: {type(err).__name__}: {err}") from None
    return model, {"model": folder, "architecture": type(model).__name__}


@main.command(short_help="Analyse a checkpoint or a Hugging Face model folder.")
@click.option("--module", "module_spec", default=None, help="LightningModule class as pkg.module:ClassName (with --ckpt).")
@click.option("--ckpt", type=click.Path(exists=True, dir_okay=False), default=None, help="Lightning checkpoint file.")
@click.option("--hf-model", type=click.Path(exists=True, file_okay=False), default=None,
              help="Hugging Face model folder (instead of --module/--ckpt).")
@click.option("--probe", type=click.Path(exists=True, dir_okay=False), required=True,
              help="Probe sentences: a text file, one sentence per line (.tsv: first column).")
@click.option("--tokenizer", default=None,
              help="Hugging Face tokenizer folder, or pkg.module:factory called with no arguments "
                   "[default: the --hf-model folder].")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Run folder to write (OUT/infoflow/results/step_*.pt, OUT/hparams.yaml).")
@click.option("--layers", multiple=True, help="Layer name or glob (repeatable) [default: the model's "
                                              "infoflow_layers attribute, else auto].")
@click.option("--embedding", default="auto", show_default=True, help="Word-embedding module name.")
@click.option("--submodule", default=None, help="Attribute of the LightningModule to analyse (e.g. model).")
@click.option("--steps", type=click.IntRange(min=0), default=100, show_default=True, help="Optimisation steps of the estimator.")
@click.option("--lam", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True, help="Lambda of Eq. 7.")
@click.option("--samples", type=click.IntRange(min=1), default=4, show_default=True, help="Noise draws per step.")
@click.option("--num-sentences", type=click.IntRange(min=1), default=None, help="Use the first N probe sentences.")
@click.option("--max-length", type=click.IntRange(min=1), default=None, help="Truncate sentences (HF tokenizers).")
@click.option("--step", "step_override", type=int, default=None,
              help="Training step to file the analysis under [default: the checkpoint's global_step, else 0].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar (stderr).")
def analyze(module_spec: Optional[str], ckpt: Optional[str], hf_model: Optional[str], probe: str,
            tokenizer: Optional[str], out: str, layers: tuple[str, ...], embedding: str, submodule: Optional[str],
            steps: int, lam: float, samples: int, num_sentences: Optional[int], max_length: Optional[int],
            step_override: Optional[int], seed: int, progress: bool) -> None:
    """Run the estimator on a saved model (a Lightning checkpoint or a Hugging Face folder) and a probe
    file, and write the same raw results as the callback, so `infoflow report OUT` works on it."""
    from lightning.pytorch.core.saving import save_hparams_to_yaml

    from lightning_infoflow.core.estimator import InfoFlowEstimator
    from lightning_infoflow.core.probe import build_probe, read_sentences

    if (module_spec is None) == (hf_model is None):
        raise click.UsageError("pass either --module pkg.mod:Class with --ckpt, or --hf-model FOLDER")
    if module_spec is not None and ckpt is None:
        raise click.UsageError("--module needs --ckpt (the checkpoint to load)")
    console = _out()
    if hf_model is not None:
        model, hparams = _load_hf(hf_model)
        step, source = None, hf_model
        tokenizer = tokenizer or hf_model
    else:
        assert module_spec is not None and ckpt is not None
        model, hparams, step = _load_lightning(module_spec, ckpt)
        source = ckpt
    if tokenizer is None:
        raise click.UsageError("--tokenizer is needed to turn the probe sentences into token ids")
    target = model
    if submodule is not None:
        target = getattr(model, submodule, None)
        if target is None:
            raise click.BadParameter(f"the model has no attribute {submodule!r}", param_hint="--submodule")
    layer_spec: Any = list(layers) if layers else getattr(model, "infoflow_layers", None) or "auto"
    if submodule is not None and not layers:
        layer_spec = "auto"
    try:
        sentences = read_sentences(probe)
        built = build_probe(sentences, _load_tokenizer(tokenizer), num_sentences=num_sentences, max_length=max_length)
        estimator = InfoFlowEstimator(target, layer_spec, embedding, lam=lam, steps=steps, samples=samples, seed=seed)
        names = estimator.check(built.batch)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    step = step_override if step_override is not None else (step or 0)
    started = time.perf_counter()
    with _progress(progress) as task:
        advance = task(f"estimating {len(names)} layers x {len(built)} sentences", max(steps, 1))
        result = estimator.estimate(built.batch, tokens=built.tokens, on_step=lambda s, total: advance())
    seconds = time.perf_counter() - started
    result.meta.update(step=step, seconds=seconds, source=os.path.abspath(source), lam=lam, steps=steps, samples=samples)
    results_dir = os.path.join(out, "infoflow", "results")
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"step_{step:08d}.pt")
    result.save(path)
    save_hparams_to_yaml(os.path.join(out, "hparams.yaml"), _plain(hparams))
    console.print(f"[bold]infoflow analyze[/bold]: {len(built)} probe sentences, {len(names)} layers, "
                  f"{seconds:.1f} s; step {step}")
    rows = [[n, float(i), float(e)] for n, i, e in
            zip(result.layer_names, result.layer_information.tolist(), result.effective_words.tolist())]
    console.print(_table("Layers", ["layer", "information (nats/word)", "effective words"], rows))
    console.print(f"Result: {path}\nNext:   infoflow report {out}")


def _plain(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters YAML can hold: primitives and containers of them; anything else as text."""
    def plain(v: Any) -> Any:
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return repr(v)

    return {str(k): plain(v) for k, v in hparams.items()}


if __name__ == "__main__":  # pragma: no cover
    main()
