"""The perturbation estimator of Eq. 7 (Guan et al., ICML 2019), batched over layers, sentences and noise.

Pure torch: no Lightning, no plotting. For a probe batch the estimator learns one noise scale
``sigma[l, b, i]`` per watched layer ``l``, sentence ``b`` and word ``i`` by minimising

    L(sigma) = sum_i -log sigma_i + 1/(K*lam) * E_eps sum_e (Phi_e(x + eps) - s_e)^2 / var_e

with ``eps_i ~ N(0, sigma_i^2 I_K)`` added to the word embeddings ``x`` and ``var_e`` the variance of
hidden unit ``e`` over the probe (or a reference) batch. One optimisation serves every layer and
sentence: each step is one forward over ``layers x samples x sentences`` copies of the batch (split
into chunks that fit a memory budget), each copy perturbed with its own layer's sigma and scored only
on its own layer's state, and the gradient reaches only ``log sigma``.

The start point is the closed-form optimum of the linearised problem: for small noise
``E||Phi(x+eps) - s||^2 ~ sum_i sigma_i^2 ||J_i||_F^2`` (``J_i`` the Jacobian of the normalised state
with respect to word ``i``), whose minimiser is ``sigma_i^2 = K*lam / (2 ||J_i||_F^2)``. ``||J_i||_F^2``
is estimated with ``samples`` random vector-Jacobian products. Stochastic gradient descent on
``log sigma`` then refines the nonlinear objective from there (or from a previous result:
``estimate(batch, init=previous)``).

The optimiser: plain SGD on ``u = log sigma`` with the step ``eta_t = lr / (1 + t / 5)`` and the
gradient clipped to ``[-1, 2]``. In ``u`` the problem is well scaled: the prior term's gradient is
exactly -1 per word and, near the optimum, the reconstruction term's is ``(sigma / sigma*)^2``, so the
curvature is about 2 everywhere and one step size fits every word, layer and model; the decaying step
averages the noise of the few draws per step away. (Adam, used before, moves every word by about
``lr`` in its first steps whatever its gradient, which spoils a good start point.) A warm start enters
the same schedule where the step has fallen to ``warm_lr``. How long: ``steps="auto"`` (the default)
stops when the estimated error of ``log sigma`` is at most ``target_error``
(:mod:`~lightning_infoflow.core.convergence`, :mod:`~lightning_infoflow.core.refine`); a warm start first
measures whether its start point is still good, so an unchanged model costs one window of
``check_every`` steps. Precision: the estimator's own tensors
(word embeddings, sigma, noise, errors, normalisation) are float32 whatever the model's dtype; the
perturbed embeddings are cast to the embedding module's output dtype where they enter the model, so
models in bfloat16, float16 or float64 are measured as they run (under ``torch.autocast`` their matmuls
run in the autocast dtype; see the README for the measured agreement with float32). Compiled modules
run eagerly during an estimate (:func:`guard.eager`).

The hooked forward is :class:`~lightning_infoflow.core.runner.ProbeRunner` (shared with the saliency
baselines and the word attributes); the chunks of perturbed copies are
:class:`~lightning_infoflow.core.chunks.ChunkScorer`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Callable, Literal, Optional, Union

import torch
from torch import Tensor, nn

from lightning_infoflow.core import guard, inputs
from lightning_infoflow.core.chunks import ChunkScorer, chunk_size
from lightning_infoflow.core.refine import Outcome, Plan, Refiner
from lightning_infoflow.core.result import InfoFlowResult
from lightning_infoflow.core.runner import (
    Position,
    PreparedProbe,
    ProbeRunner,
    check_normalisation,
    check_position,
)
from lightning_infoflow.core.settings import check_max_steps, check_settings, check_steps
from lightning_infoflow.core.start import closed_form, warm_start
from lightning_infoflow.core.uncertainty import StepNoise


def trusted(init: Optional[InfoFlowResult], target_error: float) -> bool:
    """Whether a warm start is a result that stopped at ``target_error`` or a finer one (not at a cap)."""
    if init is None or init.meta.get("stopped") != "target":
        return False
    return float(init.meta.get("target_error", math.inf)) <= target_error


class InfoFlowEstimator:
    """Estimate how much information of each input word every watched layer keeps (Guan et al., 2019).

    Args:
        model: the network, called as in training: ``model(input_ids)`` or ``model(**batch)``.
        layers: ``"auto"``, a module name, a glob pattern (``"encoder.layer.*"``) or a list of them.
            A layer's hidden state is its output (the first tensor of a tuple).
        embedding: the module whose output is the word embeddings ``x`` that the noise perturbs.
            ``"auto"``: ``model.get_input_embeddings()`` or the first ``nn.Embedding`` (the token lookup,
            before position embeddings and LayerNorm). Name a whole block (e.g. ``"embeddings"`` of a
            BERT) to perturb after it instead.
        lam: lambda of Eq. 7; larger values allow more noise (less information everywhere).
        steps: ``"auto"`` (default): optimise until the estimated error of every layer's ``log sigma`` (root
            mean square over its words, see :mod:`~lightning_infoflow.core.convergence`) is at most
            ``target_error``, checked every ``check_every`` steps, at most ``max_steps``; a warm start on
            an unchanged model stops after its first check. An int: exactly that many optimisation steps
            after the closed-form (or warm) start; 0 returns the linearised optimum.
        max_steps: cap of ``steps="auto"``.
        target_error: the error at which ``steps="auto"`` stops: 0.01 is a root-mean-square relative error
            of sigma of about 1%.
        samples: noise draws per step (and random projections for the start point).
        sigma_max: upper bound of sigma. Default: 10 x the std of the embedding weights; for an embedding
            module without a weight matrix, 10 x the std of each probe batch's clean embeddings (pass a
            value to keep one bound for every call). Each result carries the bound it used.
        position: which time steps of a layer's output form ``s``: ``"all"`` (every real time step
            concatenated, Sec. 4.2), an int (one word of each sentence, counted over its real words read off
            the mask, so left and right padding agree: ``0`` is the first word, e.g. BERT's [CLS], ``-1``
            the last), a list of ints or ``"each"``
            (one result row per time step, named ``"layer@t"``, Sec. 4.1). A sentence for which the
            selected time step is padding has no state there: its row is NaN. A layer whose output has
            no time axis of the input's length (pooled, or a decoder's own length) is one state: "all".
        lr: first step size of SGD on ``log sigma`` (decays as ``lr / (1 + t / 5)``).
        warm_lr: first step size of a warm start (``init=``): the schedule is entered where it has
            decayed to this value, so a good start point is refined rather than shaken. Default
            ``0.4 * lr``; larger values follow bigger changes of the model faster but keep more noise.
        chunk_size: copies per forward, or ``"auto"`` to fit ``memory_budget``.
        memory_budget: bytes for one chunk's activations plus one step's noise for all copies; default:
            60% of free memory on CUDA, 2 GiB on CPU. The chunking never changes the noise drawn.
        pad_token_id: id that marks padding when the batch is a bare tensor without ``attention_mask``.
        check_every: steps between the checks of ``steps="auto"`` (the loop's only host-device
            synchronisations), and the window over which a check averages the gradients.
        seed: seed of the estimator's private noise generator; the global RNG is never used.
        normalisation: the per-unit scale ``var_e`` of Eq. 7: ``"tokens"`` (default), each hidden unit's
            variance over every real token of the probe; ``"sentences"`` (the paper's authors' code), its
            variance over the probe's sentences of their token-averaged states. Averages vary less than
            tokens, so one ``lam`` allows less noise with ``"sentences"``: the same optimum needs
            ``lam_tokens = r * lam_sentences``, ``r = (sigma_sentences / sigma_tokens)^2`` at equal ``lam``
            (a ratio of normalised sensitivities, layer-dependent). Measured ``r``: 0.10-0.32 on the test
            models (tiny BERT 0.13/0.24, GRU stack 0.24-0.32, Transformer encoder 0.10/0.12; the paper's
            ``lam=0.1`` is about ``lam=0.01-0.03`` here), 0.17 and 0.42 at layers 3 and 6 of
            all-MiniLM-L6-v2. Recorded in ``meta["normalisation"]``.

    Thread safety: one estimator (and one model) serves one thread at a time. An analysis holds the model
    (:func:`~lightning_infoflow.core.guard.exclusive`): a second ``estimate``/``check`` of the same model
    from another thread, or a call of the model from another thread (e.g. a training loop) while it runs,
    raises a RuntimeError at once and leaves the model as found. Not protected: a forward that another
    thread started before the analysis, and changes to the weights from another thread during it.
    Different models can be analysed in parallel threads.

    Raises:
        ValueError: bad arguments, unknown module names (with close matches).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.emb = nn.Embedding(20, 8)
        ...         self.rnn = nn.ModuleList([nn.GRU(8, 8, batch_first=True) for _ in range(2)])
        ...     def forward(self, ids):
        ...         h = self.emb(ids)
        ...         for rnn in self.rnn:
        ...             h, _ = rnn(h)
        ...         return h
        >>> est = InfoFlowEstimator(Net(), layers="rnn.*", steps=20)
        >>> res = est.estimate(torch.randint(0, 20, (3, 5)))
        >>> res.layer_names, tuple(res.sigma.shape)
        (['rnn.0', 'rnn.1'], (2, 3, 5))
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Union[str, Sequence[str]] = "auto",
        embedding: str = "auto",
        *,
        lam: float = 0.1,
        steps: Union[int, Literal["auto"]] = "auto",
        samples: int = 4,
        sigma_max: Optional[float] = None,
        position: Position = "all",
        lr: float = 0.25,
        warm_lr: Optional[float] = None,
        chunk_size: Union[int, Literal["auto"]] = "auto",
        memory_budget: Optional[int] = None,
        pad_token_id: Optional[int] = None,
        max_steps: int = 200,
        target_error: float = 0.05,
        check_every: int = 10,
        seed: int = 0,
        normalisation: str = "tokens",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"`model` must be an nn.Module, got {type(model).__name__}")
        check_settings(lam, steps, samples, sigma_max, lr, warm_lr, chunk_size, memory_budget, max_steps,
                       target_error, check_every)
        check_position(position)
        check_normalisation(normalisation)
        self.normalisation = normalisation
        self.model = model
        self.lam = float(lam)
        self.steps = steps
        self.samples = samples
        self.position = position
        self.lr = float(lr)
        self.warm_lr = float(warm_lr) if warm_lr is not None else 0.4 * self.lr
        self.chunk_size = chunk_size
        self.memory_budget = memory_budget
        self.pad_token_id = pad_token_id
        self.max_steps = max_steps
        self.target_error = float(target_error)
        self.check_every = check_every
        self.seed = int(seed)
        self._runner = ProbeRunner.resolve(model, layers, embedding)
        weight = getattr(self._runner.embedding, "weight", None)
        matrix = weight.detach() if isinstance(weight, Tensor) and weight.dim() == 2 else None
        self.sigma_max: Optional[float] = (
            float(sigma_max) if sigma_max is not None
            else 10.0 * float(matrix.float().std()) if matrix is not None else None
        )
        """The upper bound of sigma; None: resolved per call from the batch's embeddings (see ``sigma_max``)."""

    @property
    def embedding_name(self) -> str:
        """Name of the module whose output is the word embeddings that the noise perturbs."""
        return self._runner.embedding_name

    @property
    def embedding_module(self) -> nn.Module:
        """The module whose output is the word embeddings that the noise perturbs."""
        return self._runner.embedding

    @property
    def layer_names(self) -> list[str]:
        """The watched modules' names, in the order of the result's rows."""
        return list(self._runner.layer_names)

    @property
    def embedding_dim(self) -> Optional[int]:
        """K for an ``nn.Embedding`` (its weight's width), else None; every result carries its own."""
        module = self._runner.embedding
        return int(module.embedding_dim) if isinstance(module, nn.Embedding) else None

    # ------------------------------------------------------------------ public

    @torch.no_grad()
    def estimate(
        self,
        batch: inputs.Batch,
        *,
        steps: Union[int, Literal["auto"], None] = None,
        init: Optional[InfoFlowResult] = None,
        reference: Optional[inputs.Batch] = None,
        tokens: Optional[list[list[str]]] = None,
        on_step: Optional[Callable[[int, int], None]] = None,
        max_steps: Optional[int] = None,
    ) -> InfoFlowResult:
        """Learn sigma for every watched layer, sentence and word of ``batch``.

        Args:
            batch: what ``model.forward`` takes: a LongTensor ``[B, T]`` of token ids or a dict with
                ``input_ids`` (and ``attention_mask``; other entries are passed through: tensors and
                lists with one item per sentence are repeated with the sentences, anything else is
                passed unchanged to every copy).
            steps: optimisation steps for this call (an int or ``"auto"``); default: the estimator's ``steps``.
            init: a previous result for the same sentences and layers to start from (warm start).
            reference: a batch whose hidden states give the normalisation ``var_e``; default: ``batch``.
            tokens: word strings per sentence, stored in the result for labels.
            on_step: called as ``on_step(step, steps)`` after every optimisation step (for progress bars).
            max_steps: the cap of ``steps="auto"`` for this call, at most the estimator's ``max_steps``
                (e.g. what a time budget allows; ``meta["max_steps"]`` records it).

        Returns:
            An :class:`InfoFlowResult` with tensors on the CPU. Words for which a layer's output was not
            finite under the noise are flagged in ``unstable`` (with a RuntimeWarning naming the layer).

        Raises:
            ValueError: an empty batch, an all-padding sentence, non-integer ids, a layer whose output
                does not depend on the input or is not finite; raised before any optimisation.
            RuntimeError: the model is in use by another thread (see the class docstring).
        """
        if steps is None:
            steps = self.steps
        check_steps(steps)
        if max_steps is not None:
            check_max_steps(max_steps)
        cap = self.max_steps if max_steps is None else min(max_steps, self.max_steps)
        device = guard.device_of(self.model)
        mask = inputs.word_mask(batch, self.pad_token_id).to(device)
        batch = inputs.to_device(batch, device)
        with guard.model_untouched(self.model, device):
            prep = self._prepare(batch, mask, reference, device)
            return self._optimise(prep, init, tokens, on_step, steps, self.samples, cap)

    @torch.no_grad()
    def check(self, batch: inputs.Batch) -> list[str]:
        """Validate ``batch`` against the model with a tiny real estimate; return the result's row names.

        Runs what :meth:`estimate` runs (the checks of ids, padding, every watched layer called once,
        finite and depending on the embeddings; the closed-form start; one optimisation step) with one
        noise sample per word, so a failure that an analysis would meet (a dtype the maths refuses, a
        memory budget too small, a model that fails on copies of the batch) shows here, at setup.

        Raises:
            ValueError: the problem and the fix, as in :meth:`estimate`.
        """
        device = guard.device_of(self.model)
        mask = inputs.word_mask(batch, self.pad_token_id).to(device)
        batch = inputs.to_device(batch, device)
        with guard.model_untouched(self.model, device):
            prep = self._prepare(batch, mask, None, device)
            self._optimise(prep, None, None, None, steps=1, samples=1, max_steps=1)
        return [r.name for r in prep.rows]

    def _prepare(self, batch: inputs.Batch, mask: Tensor, reference: Optional[inputs.Batch],
                 device: torch.device) -> PreparedProbe:
        ref_mask = None
        if reference is not None:
            ref_mask = inputs.word_mask(reference, self.pad_token_id).to(device)
            reference = inputs.to_device(reference, device)
        return self._runner.prepare(batch, mask, self.position, noise_scale=self.sigma_max, reference=reference,
                                    reference_mask=ref_mask, seed=self.seed + 1, normalisation=self.normalisation)

    # ------------------------------------------------------------------ optimisation

    def _optimise(self, prep: PreparedProbe, init: Optional[InfoFlowResult], tokens: Optional[list[list[str]]],
                  on_step: Optional[Callable[[int, int], None]], steps: Union[int, str],
                  samples: int, max_steps: int) -> InfoFlowResult:
        """Closed-form (or warm) start, then SGD on ``log sigma`` (:mod:`~lightning_infoflow.core.refine`)."""
        device = prep.mask.device
        n_rows, bsz = len(prep.rows), prep.batch_size
        copies = n_rows * samples * bsz
        # Words that have a state to explain: real words of sentences whose row has any time step
        # (``position`` past a sentence's end leaves that sentence without a state: NaN rows).
        has_state = torch.stack([sm.sum(1) > 0 for sm in prep.state_masks])  # [L, B]
        words = prep.mask.unsqueeze(0) & has_state.unsqueeze(-1)  # [L, B, T]
        gen = torch.Generator(device=device).manual_seed(self.seed)
        scorer = ChunkScorer(self._runner, prep, samples)
        per_copy = scorer.bytes_per_copy(rows=min(copies, 4)) if self.chunk_size == "auto" else 0.0
        # Every step draws the noise of all copies at once, so the draws do not depend on the chunking.
        state_numel = scorer.max_state_shape[0] * scorer.max_state_shape[1]
        noise_bytes = 4.0 * copies * max(prep.seq_len * prep.embedding_dim, state_numel)
        chunk = chunk_size(self.chunk_size, self.memory_budget, copies, per_copy, noise_bytes, device)
        bounds = [(a, min(a + chunk, copies)) for a in range(0, copies, chunk)]
        if init is not None:
            log_sigma = warm_start(init, prep, device)
        else:
            log_sigma = closed_form(prep, scorer, bounds, samples, gen, self.lam)
        log_sigma = log_sigma.clamp(max=math.log(prep.noise_scale)).masked_fill(~words, 0.0)
        log_sigma = log_sigma.contiguous().requires_grad_(True)
        plan = Plan(steps=steps, max_steps=max_steps, target_error=self.target_error,
                    check_every=self.check_every, lr=self.lr, warm_lr=self.warm_lr, lam=self.lam, samples=samples,
                    warm=init is not None, trusted_start=trusted(init, self.target_error))
        step_noise = StepNoise(words)
        outcome = Refiner(prep, scorer, bounds, words, gen, plan).run(log_sigma, step_noise, on_step)
        return self._result(prep, log_sigma.detach(), words, outcome, (plan, chunk), step_noise, init, tokens)

    def _result(self, prep: PreparedProbe, log_sigma: Tensor, words: Tensor, outcome: Outcome,
                run: tuple[Plan, int], step_noise: StepNoise, init: Optional[InfoFlowResult],
                tokens: Optional[list[list[str]]]) -> InfoFlowResult:
        """The result (``run``: the plan and the chunk size), with words whose layer was not finite under the
        noise flagged (and warned about)."""
        plan, chunk = run
        n_rows, bsz = len(prep.rows), prep.batch_size
        log_max = math.log(prep.noise_scale)
        unstable = words & ~torch.isfinite(log_sigma)
        self._warn_unstable(prep, unstable, words)
        sigma = log_sigma.exp().masked_fill(~words, float("nan"))
        # Final loss per layer: prior term plus the last step's reconstruction term, per sentence.
        prior = -(log_sigma * words).sum(dim=(1, 2))
        steps_run = outcome.steps_run
        loss_val = (prior + outcome.recon) / bsz if steps_run else torch.full((n_rows,), float("nan"))
        free = words & (log_sigma < log_max - 1e-4)
        noise_se = step_noise.information_se(prep.embedding_dim, free)
        if step_noise.steps == 0 and init is not None and init.noise_se is not None:
            noise_se = init.noise_se.clone()  # a warm start that did not move keeps its start's noise
        return InfoFlowResult(
            layer_names=[r.name for r in prep.rows],
            sigma=sigma.float().cpu(),
            mask=prep.mask.cpu(),
            sigma_max=prep.noise_scale,
            embedding_dim=prep.embedding_dim,
            at_bound=((log_sigma >= log_max - 1e-4) & words).cpu(),
            loss=loss_val.float().cpu(),
            tokens=tokens,
            meta={"lam": self.lam, "steps": plan.steps, "steps_run": steps_run, "samples": plan.samples,
                  "chunk_size": chunk, "embedding": self.embedding_name, "warm_start": init is not None,
                  "normalisation": self.normalisation, "stopped": outcome.stopped,
                  "error": outcome.error, "target_error": self.target_error, "max_steps": plan.max_steps},
            unstable=unstable.cpu(),
            noise_se=noise_se,
            state_spread=prep.state_spread(),
        )

    @staticmethod
    def _warn_unstable(prep: PreparedProbe, unstable: Tensor, words: Tensor) -> None:
        counts = unstable.sum(dim=(1, 2)).tolist()
        totals = words.sum(dim=(1, 2)).tolist()
        for row, n, total in zip(prep.rows, counts, totals):
            if n:
                warnings.warn(
                    f"layer {row.name!r} returned non-finite values under the noise for {int(n)} of {int(total)} "
                    "words: their sigma is NaN, they are flagged in `result.unstable`, and the layer's summaries "
                    "(layer_information, mean_entropy, effective_words) are NaN. Pass a smaller `sigma_max` or "
                    "make the layer robust to larger inputs (e.g. a log, sqrt or division of its input)",
                    RuntimeWarning,
                    stacklevel=4,
                )
