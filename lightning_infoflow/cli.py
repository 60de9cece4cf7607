"""The ``infoflow`` command: reports, comparisons and guidance from saved runs, and analyses of checkpoints.

.. code-block:: text

    infoflow report RUN_DIR            one run: curves, heatmaps, effective words, findings (HTML + PNGs)
    infoflow compare RUN_DIR...        runs side by side (a sweep): hyperparameters, metrics, guidance
    infoflow analyze --module pkg.mod:Class --ckpt model.ckpt --probe probe.txt --out DIR
    infoflow analyze --hf-model FOLDER --probe probe.txt --out DIR

A RUN_DIR is the log dir of a logger the callback wrote to (``TensorBoardLogger.log_dir``,
``CSVLogger.log_dir``); ``compare`` also takes a parent folder and uses every run below it. Each callback
writes into its own namespace, ``RUN_DIR/<name>/results`` (``infoflow`` by default): ``report`` writes
one report per namespace. A run resumed into a new logger version is one run (same ``run_id``); when a
step has several result files the newest wins (the latest logger version, then the newest file), see
:mod:`lightning_infoflow.reporting.runs`. ``compare`` aligns layers across runs by their longest common
dotted suffix (``model.bert.encoder.layer.3`` of a callback run and ``encoder.layer.3`` of an ``analyze``
run are one layer), see :mod:`lightning_infoflow.reporting.alignment`. ``analyze`` runs as many
optimisation steps as :class:`~lightning_infoflow.core.estimator.InfoFlowEstimator` does by default unless
``--steps`` says otherwise. Progress bars go to stderr, only on a terminal, and not with ``--quiet``.
This module is the command surface only; the work is done in
:mod:`lightning_infoflow.reporting`.
"""

from __future__ import annotations

import inspect
import math
import os
import time
from typing import Any

import click

from lightning_infoflow.analysis import guidance
from lightning_infoflow.core.estimator import InfoFlowEstimator
from lightning_infoflow.reporting.alignment import RULE, align_layers
from lightning_infoflow.reporting.console import (
    console,
    print_definitions,
    print_findings,
    progress_bars,
    render,
    step_bar,
)
from lightning_infoflow.reporting.findings import (
    compare_findings,
    left_out,
    pick_score,
    run_findings,
)
from lightning_infoflow.reporting.html import write_comparison, write_run_report
from lightning_infoflow.reporting.matching import match_probes
from lightning_infoflow.reporting.offline import (
    existing_run,
    folder_run_id,
    load_model,
    tokenizer_from,
    write_run,
)
from lightning_infoflow.reporting.runs import (
    DEFAULT_NAMESPACE,
    RESULTS,
    Progress,
    Run,
    RunError,
    RunSource,
    find_one_run,
    find_runs,
    load_run,
    parse_steps,
    source_names,
)
from lightning_infoflow.reporting.tables import (
    EFFECTIVE_WORDS,
    INFORMATION,
    Estimate,
    Table,
    cell,
    compare_tables,
    estimates_note,
    layer_table,
)

WHICH_FILE_WINS = ("A run resumed into a new logger version (same run_id) is reported as one run; when a step has "
                   "several result files, the newest wins: the latest logger version (version_N by N), then the "
                   "newest file.")
ESTIMATOR_STEPS = inspect.signature(InfoFlowEstimator).parameters["steps"].default
"""The estimator's own default optimisation steps (``analyze --steps`` when not given)."""
ESTIMATOR_TARGET = inspect.signature(InfoFlowEstimator).parameters["target_error"].default
"""The estimator's own default ``target_error`` (``analyze --target-error`` when not given)."""
ESTIMATOR_MAX_STEPS = inspect.signature(InfoFlowEstimator).parameters["max_steps"].default
"""The estimator's own default ``max_steps`` (``analyze --max-steps`` when not given)."""


class StepsType(click.ParamType):
    """``auto`` or a non-negative int."""

    name = "auto|N"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, int) or value == "auto":
            return value
        try:
            number = int(value)
        except ValueError:
            number = -1
        if number < 0:
            self.fail(f"{value!r} is neither 'auto' nor a non-negative int", param, ctx)
        return number


def _quiet_option(command: Any) -> Any:
    """``--progress/--no-progress`` and ``-q/--quiet`` (no progress bars, and only the paths written on stdout)."""
    command = click.option("-q", "--quiet", is_flag=True, default=False,
                           help="No progress bars; print only the paths written.")(command)
    return click.option("--progress/--no-progress", default=True, show_default=True,
                        help="Show progress bars (stderr, on a terminal only).")(command)


def _stop_words(path: str | None) -> frozenset[str]:
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


@main.command(short_help="One run's report: HTML, PNGs and findings.", epilog=WHICH_FILE_WINS)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for report.html and the PNGs (OUT/<name> per namespace when the run has several) "
                   "[default: RUN_DIR/<name>/report].")
@click.option("--steps", "steps_spec", default="first,peak,last", show_default=True,
              help="Analyses to draw heatmaps for: first, last, peak, all or step numbers, comma-separated.")
@click.option("--stop-words", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Stop-word list (words separated by white space) for the noisy-words rule.")
@_quiet_option
def report(run_dir: str, out: str | None, steps_spec: str, stop_words: str | None, progress: bool,
           quiet: bool) -> None:
    """One run's report: information per layer against step, heatmaps of every probe sentence, effective
    words and the findings. Writes a self-contained HTML file and PNGs, and prints a summary. A run with
    several namespaces (several callbacks) gets one report per namespace."""
    try:
        sources = find_one_run(run_dir)
    except RunError as err:
        raise click.ClickException(str(err)) from None
    words = _stop_words(stop_words)
    for source in sources:
        folder = out if out is None or len(sources) == 1 else os.path.join(out, source.namespace)
        with progress_bars(progress and not quiet) as task:
            run, path, findings = _report_one(source, folder, steps_spec, words, task)
        if quiet:
            click.echo(path)
        else:
            _print_report(run, path, findings, namespaces=len(sources) > 1)


def _report_one(source: RunSource, out: str | None, steps_spec: str, stop_words: frozenset[str],
                task: Progress) -> tuple[Run, str, list[guidance.Finding]]:
    try:
        run = load_run(source, progress=task)
    except RunError as err:
        raise click.ClickException(str(err)) from None
    try:
        chosen = parse_steps(steps_spec, run.steps, peak=run.peak_index())
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--steps") from None
    findings = run_findings(run, stop_words)
    out_dir = out or os.path.join(run.path, source.namespace, "report")
    return run, write_run_report(run, out_dir, findings, chosen, progress=task), findings


def _print_report(run: Run, path: str, findings: list[guidance.Finding], namespaces: bool) -> None:
    out = console()
    where = f" (namespace {run.source.namespace})" if namespaces else ""
    out.print(f"[bold]infoflow report[/bold] {run.name}{where}: {len(run.results)} analyses at steps {run.steps}, "
              f"{run.last.sigma.shape[1]} probe sentences")
    for note in run.skipped:
        out.print(f"  skipped {note}", markup=False)
    if run.superseded:
        out.print(f"  {len(run.superseded)} result file(s) superseded by newer files of the same step: "
                  + ", ".join(run.superseded), markup=False)
    quality = estimates_note(run)
    if quality:
        out.print(quality, markup=False)
    if run.hparams:
        out.print("Hyperparameters: " + ", ".join(f"{k}={cell(v)}" for k, v in sorted(run.hparams.items())))
    metrics = run.final_metrics()
    if metrics:
        out.print("Final validation: " + ", ".join(f"{k}={cell(v)}" for k, v in sorted(metrics.items())))
    table = layer_table(run)
    out.print(render(table))
    print_definitions(out, [table])
    print_findings(out, findings)
    out_dir = os.path.dirname(path)
    pngs = sum(name.endswith(".png") for name in os.listdir(out_dir))
    out.print(f"Report: {path}\nPNGs:   {out_dir} ({pngs} files)")


# --------------------------------------------------------------------------- compare


@main.command(short_help="Runs of a sweep side by side, with guidance.", epilog=f"{RULE}\n\n{WHICH_FILE_WINS}")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default="infoflow-compare", show_default=True,
              help="Folder for compare.html and the PNGs.")
@click.option("--metric", default=None,
              help="Validation scalar that ranks the runs [default: accuracy-like, else loss].")
@click.option("--mode", type=click.Choice(["max", "min"]), default=None, help="Whether --metric is better high or low.")
@click.option("--stop-words", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Stop-word list (words separated by white space) for the noisy-words rule.")
@_quiet_option
def compare(run_dirs: tuple[str, ...], out: str, metric: str | None, mode: str | None, stop_words: str | None,
            progress: bool, quiet: bool) -> None:
    """Runs side by side: per-layer information, last-layer saliency on the same probe sentences,
    hyperparameters, final validation metrics, then guidance. RUN_DIRS are log dirs, or the parent folder of
    a sweep: every run below it, at any depth (e.g. sweep/wd0.1/version_0), is compared. Each namespace of a
    run counts as a run. Layers are aligned by their longest common dotted suffix (see below). A run that has
    not learned (its loss improved by less than 2%) or whose last layer collapsed is marked and left out of
    the comparison of information."""
    try:
        sources = list(dict.fromkeys(s for d in run_dirs for s in find_runs(d)))
    except RunError as err:
        raise click.ClickException(str(err)) from None
    if len(sources) < 2:
        where = " and ".join(repr(d) for d in run_dirs)
        raise click.UsageError(
            f"compare needs two runs or more; found {len(sources)} under {where}: {sources[0].label}. Pass two log "
            "dirs or more, or the parent folder of a sweep whose subfolders hold the runs (e.g. `infoflow compare "
            "runs/` for runs/wd0/version_0, runs/wd0.1/version_0); use `infoflow report` for one run.")
    with progress_bars(progress and not quiet) as task:
        try:
            runs = [load_run(s, name, progress=task) for s, name in zip(sources, source_names(sources))]
            aligned = align_layers(runs)
            matched = match_probes(aligned.runs)
            scores, score_name = pick_score(matched.runs, metric, mode)
        except RunError as err:
            raise click.ClickException(str(err)) from None
        findings = compare_findings(matched.runs, _stop_words(stop_words))
        notes = aligned.notes + matched.notes
        path = write_comparison(matched.runs, out, findings, notes, progress=task)
    if quiet:
        click.echo(path)
        return
    terminal = console()
    terminal.print(f"[bold]infoflow compare[/bold]: {len(matched.runs)} runs, "
                   f"{matched.sentences} shared probe sentences")
    for note in notes:
        terminal.print(f"  [yellow]note[/yellow]: {note}")
    tables = compare_tables(matched.runs, left_out(matched.runs, findings))
    for table in tables:
        terminal.print(render(table))
    print_definitions(terminal, tables)
    if scores:
        terminal.print(f"Best run by {score_name}: {max(scores, key=lambda name: scores[name])}")
    print_findings(terminal, findings)
    terminal.print(f"Comparison: {path}")


# --------------------------------------------------------------------------- analyze


@main.command(short_help="Analyse a checkpoint or a Hugging Face model folder.")
@click.option("--module", "module_spec", default=None,
              help="LightningModule class as pkg.module:ClassName (with --ckpt).")
@click.option("--ckpt", type=click.Path(exists=True, dir_okay=False), default=None, help="Lightning checkpoint file.")
@click.option("--hf-model", type=click.Path(exists=True, file_okay=False), default=None,
              help="Hugging Face model folder (instead of --module/--ckpt).")
@click.option("--probe", type=click.Path(exists=True, dir_okay=False), required=True,
              help="Probe sentences: a text file, one sentence per line (.tsv: first column).")
@click.option("--tokenizer", default=None,
              help="Hugging Face tokenizer folder, or pkg.module:factory called with no arguments "
                   "[default: the --hf-model folder].")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="New run folder to write (OUT/<name>/results/step_*.pt, OUT/hparams.yaml).")
@click.option("--force", is_flag=True, default=False,
              help="Write into an --out folder that already holds a run: replaces its hparams.yaml and the result "
                   "file of the same step (files of other steps stay, under the folder's run_id).")
@click.option("--name", "namespace", default=DEFAULT_NAMESPACE, show_default=True,
              help="Namespace folder for the results, as the callback's name= argument.")
@click.option("--layers", multiple=True, help="Layer name or glob (repeatable) [default: the model's "
                                              "infoflow_layers attribute, else auto].")
@click.option("--embedding", default="auto", show_default=True, help="Word-embedding module name.")
@click.option("--submodule", default=None, help="Attribute of the LightningModule to analyse (e.g. model).")
@click.option("--steps", type=StepsType(), default=None,
              help="Optimisation steps of the estimator: 'auto' (stop at --target-error) or a number "
                   f"[default: InfoFlowEstimator's own, steps={ESTIMATOR_STEPS!r}].")
@click.option("--target-error", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=None,
              help="Where steps='auto' stops: root-mean-square error of log sigma "
                   f"[default: InfoFlowEstimator's own, {ESTIMATOR_TARGET!r}].")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help=f"The cap of steps='auto' [default: InfoFlowEstimator's own, {ESTIMATOR_MAX_STEPS!r}].")
@click.option("--lam", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
              help="Lambda of Eq. 7.")
@click.option("--samples", type=click.IntRange(min=1), default=4, show_default=True, help="Noise draws per step.")
@click.option("--num-sentences", type=click.IntRange(min=1), default=None, help="Use the first N probe sentences.")
@click.option("--max-length", type=click.IntRange(min=1), default=None, help="Truncate sentences (HF tokenizers).")
@click.option("--step", "step_override", type=int, default=None,
              help="Training step to file the analysis under [default: the checkpoint's global_step, else 0].")
@click.option("--seed", type=int, default=0, show_default=True)
@_quiet_option
def analyze(module_spec: str | None, ckpt: str | None, hf_model: str | None, probe: str,
            tokenizer: str | None, out: str, force: bool, namespace: str, layers: tuple[str, ...], embedding: str,
            submodule: str | None, steps: int | str | None, target_error: float | None, max_steps: int | None,
            lam: float, samples: int,
            num_sentences: int | None,
            max_length: int | None, step_override: int | None, seed: int, progress: bool, quiet: bool) -> None:
    """Run the estimator on a saved model (a Lightning checkpoint or a Hugging Face folder) and a probe
    file, and write the same raw results as the callback, so `infoflow report OUT` works on it. Refuses an
    --out folder that already holds a run, unless --force."""
    from lightning_infoflow.core.probe import build_probe, read_sentences

    if namespace in ("", ".", "..") or os.sep in namespace or "/" in namespace:
        raise click.BadParameter(f"{namespace!r} is not a folder name", param_hint="--name")
    held = existing_run(out)
    if held and not force:
        raise click.UsageError(f"--out {out!r} already holds a run ({len(held)} file(s), e.g. {held[0]}); writing "
                               "there would overwrite its result files and hparams.yaml. Pass a new --out folder, or "
                               "add --force to overwrite on purpose.")
    target, layer_spec, hparams, step, source = load_model(module_spec, ckpt, hf_model, submodule, layers)
    tokenizer = tokenizer or hf_model
    if tokenizer is None:
        raise click.UsageError("--tokenizer is needed to turn the probe sentences into token ids")
    try:
        built = build_probe(read_sentences(probe), tokenizer_from(tokenizer), num_sentences=num_sentences,
                            max_length=max_length)
        given = {"steps": steps, "target_error": target_error, "max_steps": max_steps}
        chosen: dict[str, Any] = {k: v for k, v in given.items() if v is not None}  # None: the estimator's own default
        estimator = InfoFlowEstimator(target, layer_spec, embedding, lam=lam, samples=samples, seed=seed, **chosen)
        names = estimator.check(built.batch)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    step = step_override if step_override is not None else (step or 0)
    started = time.perf_counter()
    with step_bar(f"estimating {len(names)} layers x {len(built)} sentences", progress and not quiet) as on_step:
        result = estimator.estimate(built.batch, tokens=built.tokens, on_step=on_step)
    seconds = time.perf_counter() - started
    results_dir = os.path.join(out, namespace, RESULTS)
    result.meta.update(name=namespace, step=step, run_id=folder_run_id(results_dir), seconds=seconds,
                       source=os.path.abspath(source), lam=lam, steps=estimator.steps, samples=samples)
    path = write_run(result, results_dir, out, hparams)
    if quiet:
        click.echo(path)
    else:
        _print_analysis(result, path, out)


def _print_analysis(result: Any, path: str, out: str) -> None:
    """What ``analyze`` wrote: its numbers per layer, what they mean, and the command that reports it."""
    terminal = console()
    terminal.print(f"[bold]infoflow analyze[/bold]: {result.sigma.shape[1]} probe sentences, {len(result.layer_names)} "
                   f"layers, {result.meta['seconds']:.1f} s; step {result.meta['step']}")
    rows = [[n, Estimate(i, se), e] for n, i, se, e in
            zip(result.layer_names, result.layer_information.tolist(), result.layer_information_se.tolist(),
                result.effective_words.tolist())]
    table = Table("Layers", ["layer", INFORMATION, EFFECTIVE_WORDS], rows)
    terminal.print(render(table))
    print_definitions(terminal, [table])
    stopped = {"target": "at its target error", "max_steps": "at --max-steps, short of its target error",
               "steps": "after the fixed --steps"}.get(str(result.meta.get("stopped")), "")
    stated = "" if math.isnan(result.stated_error) else f", stated error of log sigma {result.stated_error:.3f}"
    terminal.print(f"Estimate: {result.meta.get('steps_run')} optimisation steps, stopped {stopped}{stated}",
                   markup=False)
    terminal.print(f"Result: {path}\nNext:   infoflow report {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
