"""The learned weight importance scorer: features -> a scikit-learn model -> importance.

At every pruning event :class:`LearnedScorer`:

1. finds each tensor's frontier band under the Taylor prior: the kept weights the step could
   take, or on a large model a band centred on the tensor's cut (at most
   :data:`MAX_PREDICTED_ROWS` weights in all; :mod:`~lightning_autoprune.scoring.learned.priors`,
   a values-only sort per tensor, no full argsort);
2. measures labels: stratified group ablations drawn from those bands
   (:mod:`~lightning_autoprune.scoring.learned.labels`), on calibration batches carved from the
   training data;
3. fits the estimator on the feature rows of a few members of each group, of this event and of
   every earlier one (online across events), keeping a quarter of this event's groups out;
4. checks itself on the held-out groups: Spearman correlation and precision@k of the learned
   scores against the measured labels, next to the same numbers for every formula prior
   (Taylor, LAMP, magnitude, Wanda, second-order Taylor). It blends its rank with Taylor's, the
   weight chosen on those groups, and leaves itself out, **with a warning**, when Taylor predicts
   the held-out ablations better than it does
   (:func:`~lightning_autoprune.scoring.learned.fidelity.judge`, shared with the unit scorer);
5. predicts the weights of Taylor's bands only (features exist for one chunk at a time) and
   reorders each band by the learned (or blended) ranking: every tensor keeps Taylor's values,
   so it loses as many weights as Taylor would take from it;
6. chooses the step (:mod:`~lightning_autoprune.scoring.learned.steps`): the masks of the learned
   ranking and of every prior of :data:`STEP_PRIORS`, each measured with one forward pass
   (BatchNorm on the batch's statistics), the lowest loss applied among the steps that take no
   tensor down to its floor (``min_layer_density``).

An event that :class:`~lightning_autoprune.scoring.learned.budget.LabelBudget` cannot pay for
skips 2-4: it ranks with the model fitted so far (before any label, the pretrained model alone)
and measures the candidate steps on as many calibration samples as the budget pays for. An event
that cannot pay for that either repeats the last event's choice, unless that step would take a
tensor down to its floor; then it takes the best-measured step of the last measured event that
would not.

Selection afterwards is the same global top-k, with the per-layer floor
(``min_layer_density``), as for every scorer.

The estimator is either the pretrained default shipped in the package (trained by
``scripts/train_importance_model.py`` on a zoo of small models; refined during the run by a
ridge correction fitted to the run's own labels), a user's skops file, or any scikit-learn
regressor or classifier named by import path (cloned, fitted on the run's own labels).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_autoprune.scoring.base import Progress, ScoreInputs
from lightning_autoprune.scoring.learned.budget import LabelBudget
from lightning_autoprune.scoring.learned.estimators import check_feature_count, resolve_estimator
from lightning_autoprune.scoring.learned.features import FeatureTable
from lightning_autoprune.scoring.learned.fidelity import Verdict, judge, predict_scores, rank_labels, warn_fallback
from lightning_autoprune.scoring.learned.labels import Group, ablation_labels, frontier_groups, step_size
from lightning_autoprune.scoring.learned.online import OnlineModel
from lightning_autoprune.scoring.learned.persistence import load_importance_model
from lightning_autoprune.scoring.learned.priors import PRIORS, PriorScores, frontier_bands
from lightning_autoprune.scoring.learned.steps import (
    SampledScores,
    StepChoice,
    TensorScores,
    choose_step,
    unmeasured_step,
)

#: The pretrained default importance model shipped with the package.
DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[2] / "data" / "importance_default.skops"
#: The prior whose frontier band the labels are drawn from: first-order Taylor, the strongest
#: formula of the benchmark protocol at high sparsity (BENCHMARKS.md). The held-out check then
#: compares every prior of :data:`~lightning_autoprune.scoring.learned.priors.PRIORS`.
LABEL_PRIOR = "taylor"
#: Candidate weights of the learned rank in the blend with the best prior.
BLEND_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Rows predicted at once (bounds the memory of one chunk of the feature table: about 1.4 MB of
#: float32 rows, the estimator's float64 copy and its temporaries; at 65536 rows these were the
#: peak of an event on a 1M-weight model, 10 MB more, and prediction was no faster).
CHUNK_ROWS = 1 << 14
#: The estimator re-ranks each tensor's frontier band (see
#: :func:`~lightning_autoprune.scoring.learned.priors.frontier_bands`): while it fits in
#: :data:`MAX_PREDICTED_ROWS`, the lowest-scoring kept weights under the prior, ``WINDOW`` times
#: the share of the tensor the step removes on average. Weights outside keep the prior's order.
WINDOW = 3.0
#: At most this many rows are predicted per event: on larger models the band is centred on each
#: tensor's cut and shrinks to fit, which bounds the time and memory of an event.
MAX_PREDICTED_ROWS = 500_000
#: At an event without labels the learned candidate re-ranks at most this many rows (its step is
#: one candidate among six, so its prediction cost is kept to a fraction of a labelled event's).
MAX_UNLABELLED_ROWS = 1 << 17
#: The default label budget: the scorer's calibration forward passes cost at most this share of
#: the training samples seen so far.
DEFAULT_LABEL_BUDGET = 0.05
#: An event labels only when the budget pays for at least this many group ablations (a quarter
#: is held out for the check); otherwise it reuses the model fitted so far.
MIN_LABEL_GROUPS = 16
#: The fewest calibration samples a candidate step is measured on: an event whose budget pays
#: for less per candidate repeats the last event's choice instead.
MIN_PROBE_SAMPLES = 64
#: A probe is also measured in this many disjoint parts: a candidate replaces the incumbent step
#: (the last event's choice, Taylor before any) only when it beats it by more than
#: :data:`~lightning_autoprune.scoring.learned.steps.NOISE_Z` standard errors of the paired
#: per-part differences. With 32-sample probes and no such margin, the protocol's MNIST-1D MLP
#: switched prior at most events and lost 3 to 5 points to Taylor at 98-99%.
PROBE_PARTS = 4
#: The priors whose steps an event measures next to the learned ranking's. Second-order Taylor is
#: left out: its step had the lowest loss at 1 of the 240 events of the unbudgeted scorer on the
#: protocol's MNIST-1D CNN and at none on the other setups, and every candidate dropped buys the
#: others more calibration samples under the label budget. It stays in the held-out check.
STEP_PRIORS: tuple[str, ...] = ("taylor", "lamp", "magnitude", "wanda")
#: Candidate steps an event measures: the learned ranking and every prior of :data:`STEP_PRIORS`.
STEP_CANDIDATES = len(STEP_PRIORS) + 1
#: Fewer groups than this at an event (a nearly empty model) leave too little to fit and check;
#: the event then uses the prior.
MIN_GROUPS = 8
#: Members of each group whose feature rows (with the group's label) are used for fitting.
MEMBER_ROWS = 8
#: Weights sampled to map raw scores to global quantiles for the blend.
QUANTILE_SAMPLE = 16384
#: Members of each held-out group whose scores stand for the group in the check (the same members
#: for the learned model and every prior).
GROUP_SAMPLE = 256


class LearnedScorer:
    """Weight importance from a scikit-learn model trained on measured group ablations; see the module docstring.

    Args:
        estimator: import path of a scikit-learn regressor or classifier to fit on the run's own
            labels. ``None``: the pretrained default (:data:`DEFAULT_MODEL_PATH`), refined online.
        model_path: a skops file with a fitted importance model to start from instead of the
            shipped default (refined online like it). Exclusive with ``estimator``.
        label_groups: the most group ablations measured per event. Each costs one forward pass
            over the held-out calibration batches.
        holdout: fraction of each event's groups kept out of fitting, for fidelity and the blend.
        label_budget: the most the scorer's calibration forward passes (ablations, base loss,
            candidate steps) may cost, as a share of the training samples seen before each event
            (:class:`~lightning_autoprune.scoring.learned.budget.LabelBudget`). ``None``: no limit,
            ``label_groups`` ablations at every event.

    Example:
        >>> scorer = LearnedScorer(estimator="sklearn.linear_model.Ridge", label_groups=32)
        >>> scorer.needs_context
        True
    """

    needs_gradients = True
    needs_context = True
    needs_activations = True

    def __init__(
        self,
        estimator: str | None = None,
        model_path: str | None = None,
        label_groups: int = 128,
        holdout: float = 0.25,
        label_budget: float | None = DEFAULT_LABEL_BUDGET,
    ) -> None:
        if estimator is not None and model_path is not None:
            raise ValueError(
                f"Pass either `estimator` (fit from scratch) or a model file (start from it), not both; got "
                f"estimator={estimator!r} and model file {model_path!r}."
            )
        if label_groups < 16:
            raise ValueError(
                f"`label_groups` must be >= 16 (a quarter is held out to check fidelity), got {label_groups}."
            )
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"`holdout` must be in (0, 1), got {holdout}.")
        self.label_groups = label_groups
        self.holdout = holdout
        self.budget = LabelBudget(label_budget)
        #: The learned rank's weight in its blend with Taylor at the last labelled event; ``None``
        #: before one, or when the model ranked its held-out groups below Taylor.
        self.blend: float | None = None
        #: The candidate whose step the last event applied (``"learned"`` or a prior).
        self.last_used: str | None = None
        self._told_budget = False
        template: Any = resolve_estimator(estimator) if estimator is not None else None
        pretrained: Any = None
        if template is None:
            pretrained = load_importance_model(model_path or DEFAULT_MODEL_PATH)
            check_feature_count(pretrained, model_path or str(DEFAULT_MODEL_PATH))
        #: The labelled rows of every event so far and the model fitted on them.
        self.online = OnlineModel(template, pretrained)
        self.diagnostics: list[dict[str, Any]] = []
        #: One entry per event: the step applied, the samples each candidate was measured on
        #: (0: not measured) and every candidate's loss.
        self.steps: list[dict[str, Any]] = []
        #: Receives a progress line during long label measurements (the callback sets it when verbose).
        self.progress: Progress | None = None

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The labelled rows of every event so far (the model is refitted from them, so resume is exact)."""
        return {
            **self.online.state_dict(),
            "diagnostics": copy.deepcopy(self.diagnostics),
            "steps": copy.deepcopy(self.steps),
            "budget": self.budget.state_dict(),
            "blend": self.blend,
            "last_used": self.last_used,
            "told_budget": self._told_budget,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; rows with another feature count are refused."""
        self.online.load_state_dict(state)
        self.diagnostics = copy.deepcopy(list(state.get("diagnostics", [])))
        self.steps = copy.deepcopy(list(state.get("steps", [])))
        self.budget.load_state_dict(state.get("budget", {}))
        self.blend = state.get("blend")
        self.last_used = state.get("last_used")
        self._told_budget = bool(state.get("told_budget", False))

    # ---------------------------------------------------------------------------------- scoring
    def score(self, inputs: ScoreInputs) -> dict[str, Tensor]:
        """Learned (or blended, or a prior's) scores for every weight; higher = keep."""
        priors = PriorScores(inputs)
        if inputs.params is None or inputs.loss_fn is None or step_size(inputs.masks, inputs.target_sparsity) == 0:
            return priors.full("lamp")
        allowed = self.budget.calls_allowed(inputs)
        ablations = self.budget.ablations_allowed(inputs, STEP_CANDIDATES)  # besides the candidate steps
        inputs = self.budget.counted(inputs)
        # one ablation pass is the base loss the groups' changes are measured from
        affordable = self.label_groups if ablations is None else min(self.label_groups, ablations - 1)
        if affordable < MIN_LABEL_GROUPS:
            return self._score_unlabelled(priors, inputs, allowed)
        labelled = self._label_and_judge(priors, inputs, affordable)
        if labelled is None:  # too few kept weights left to learn from: use the prior
            return priors.full(LABEL_PRIOR)
        verdict, band_scores = labelled.verdict, labelled.band_scores
        self.blend = None if verdict.fell_back else verdict.blend_weight
        measure, samples = _step_measure(inputs, None, STEP_CANDIDATES, parts=1)
        assert measure is not None
        priors.release()
        choice = choose_step(self._candidates(priors, band_scores, self.blend), inputs, parts=measure)
        self._log_step(inputs, choice.name, samples, choice.losses, 0.0, choice.collapsing)
        self.last_used = choice.name
        self.diagnostics.append(_labelled_record(inputs, labelled, choice, self.budget.spent_samples))
        if verdict.fell_back:  # a prior's step being better is a decision; a model that cannot rank is a warning
            warn_fallback(
                f"Learned importance fell back to the {choice.name!r} prior at sparsity {inputs.target_sparsity:.4f}: "
                f"its Spearman correlation on {labelled.held_out} held-out group ablations "
                f"({verdict.fidelity['learned']['spearman']:.3f}) is below {LABEL_PRIOR}'s "
                f"({verdict.fidelity[LABEL_PRIOR]['spearman']:.3f}); of the priors' steps, {choice.name}'s had the "
                f"lowest calibration loss ({choice.losses[choice.name]:.4g})"
                + (
                    f" of those that take no layer down to its floor (not {', '.join(choice.collapsing)})."
                    if choice.collapsing
                    else "."
                ),
                stacklevel=2,
            )
        return choice.scores

    def _label_and_judge(self, priors: PriorScores, inputs: ScoreInputs, affordable: int) -> _Labelled | None:
        """Label about ``affordable`` frontier groups, fit the model on some, judge it on the rest.

        ``None`` when too few groups can be drawn (:data:`MIN_GROUPS`). Everything sized by the
        groups (their indices, feature rows, held-out members) is released when this returns, before
        the step is chosen, so that it does not add to that step's memory.
        """
        bands = self._bands(priors, inputs)
        groups = frontier_groups(bands, inputs.masks, inputs.target_sparsity, affordable, inputs.generator)
        if len(groups) < MIN_GROUPS:
            return None
        table = FeatureTable(inputs, squares=priors.squares)
        x, owner = _member_rows(table, groups, inputs.generator)
        assert inputs.params is not None
        assert inputs.loss_fn is not None
        y = rank_labels(
            ablation_labels(groups, inputs.params, inputs.loss_fn, self._report_progress, replay=inputs.ablation_loss)
        )
        order = torch.randperm(len(groups), generator=inputs.generator).numpy()
        n_hold = max(4, round(self.holdout * len(groups)))
        hold = order[:n_hold]
        train_rows = ~np.isin(owner, hold)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=inputs.generator))
        rows_fitted = self.online.add(x, y[owner], train_rows, seed)

        held = _HeldOut([groups[i] for i in hold], inputs.generator)
        learned_held = held.learned(self.online.model, table)
        prior_held = held.priors(priors)
        band_scores = _BandScores.predict(self.online.model, table, priors, LABEL_PRIOR, bands, inputs.generator)

        def on_quantiles(prior: str) -> tuple[np.ndarray, np.ndarray]:
            learned_side = band_scores.learned_map(torch.from_numpy(learned_held)).double().numpy()
            prior_side = band_scores.prior_map(torch.from_numpy(prior_held[prior])).double().numpy()
            return held.means(learned_side), held.means(prior_side)

        verdict = judge(
            held.means(learned_held),
            {prior: held.means(values) for prior, values in prior_held.items()},
            y[hold],
            candidates=(LABEL_PRIOR,),
            blend=on_quantiles,
            weights=tuple(reversed(BLEND_WEIGHTS)),  # ties go to the larger learned weight
        )
        return _Labelled(verdict, band_scores, len(groups), len(hold), rows_fitted, sum(len(b) for b in bands.values()))

    def _candidates(
        self, priors: PriorScores, band_scores: _BandScores | None, learned_weight: float | None
    ) -> dict[str, TensorScores]:
        """The steps an event chooses from: the learned ranking (when it has a weight) and :data:`STEP_PRIORS`."""
        candidates: dict[str, TensorScores] = {}
        if band_scores is not None and learned_weight is not None:
            candidates["learned"] = SampledScores(
                functools.partial(band_scores.tensor_scores, priors, LABEL_PRIOR, learned_weight),
                functools.partial(band_scores.tensor_scores_at, priors, LABEL_PRIOR, learned_weight),
            )
        for prior in STEP_PRIORS:
            candidates[prior] = SampledScores(
                functools.partial(priors.tensor, prior), functools.partial(priors.tensor_at, prior)
            )
        return candidates

    def _score_unlabelled(self, priors: PriorScores, inputs: ScoreInputs, allowed: int | None) -> dict[str, Tensor]:
        """An event the label budget cannot label: the model so far, and the steps the budget can measure.

        The learned candidate is the model fitted so far while it ranked its last held-out groups
        well, or, before any labelled event, the pretrained model alone (its step is measured
        like every other, which is its check). The steps are measured on every calibration
        sample when the budget pays one forward pass per candidate, else on a probe of the first
        samples the budget pays for (at least :data:`MIN_PROBE_SAMPLES`). The incumbent (the last
        event's choice, Taylor before any) is kept unless another step's loss is lower by more
        than the noise of the paired per-part differences (:data:`PROBE_PARTS`). Without a
        measurement the incumbent is applied, unless its step would collapse a tensor
        (:func:`~lightning_autoprune.scoring.learned.steps.unmeasured_step`).
        """
        model, weight = self._unlabelled_model()
        band_scores = None
        if model is not None:
            table = FeatureTable(inputs, squares=priors.squares)
            bands = self._bands(priors, inputs, MAX_UNLABELLED_ROWS)
            band_scores = _BandScores.predict(model, table, priors, LABEL_PRIOR, bands, inputs.generator)
        candidates = self._candidates(priors, band_scores, weight)
        measure, samples = _step_measure(inputs, self.budget.samples_left(inputs), len(candidates), PROBE_PARTS)
        incumbent = self.last_used if self.last_used in candidates else LABEL_PRIOR
        priors.release()
        if measure is not None:
            choice = choose_step(candidates, inputs, parts=measure, incumbent=incumbent)
            used, scores = choice.name, choice.scores
            self._log_step(inputs, used, samples, choice.losses, choice.margin, choice.collapsing)
        else:
            last: dict[str, float] = next((step["losses"] for step in reversed(self.steps) if step["losses"]), {})
            used, scores, collapsing = unmeasured_step(candidates, incumbent, inputs, last)
            self._log_step(inputs, used, 0, {}, 0.0, collapsing)
        if not self._told_budget:
            self._told_budget = True
            ablation = inputs.samples_per_ablation
            needs = (
                f"{1 + MIN_LABEL_GROUPS + STEP_CANDIDATES}"
                if ablation == inputs.loss_samples
                else f"{1 + MIN_LABEL_GROUPS} passes of {ablation} samples and {STEP_CANDIDATES} of "
                f"{inputs.loss_samples}"
            )
            how = (
                f"the candidate step with the lowest calibration loss on {samples} samples"
                if measure is not None
                else "the last event's choice: the budget pays for no step measurement"
            )
            warn_fallback(
                f"the label budget (label_budget={self.budget.share}: the learned importance's calibration forward "
                f"passes may cost that share of the {inputs.trained_samples} training samples so far) allows "
                f"{allowed} passes of {inputs.loss_samples} samples at sparsity {inputs.target_sparsity:.4f}; "
                f"labelling needs {needs}. This event used {used!r} ({how}). "
                "Later events label once the budget has grown; raise `label_budget` to label at every event.",
                stacklevel=3,
            )
        self.last_used = used
        return scores

    def _unlabelled_model(self) -> tuple[Any, float | None]:
        """The model an unlabelled event ranks with, and its weight in the blend; ``(None, None)``: none."""
        if self.blend is not None and self.online.refit():
            return self.online.model, self.blend
        if not self.online.fitted and self.online.pretrained is not None:
            return self.online.pretrained, 1.0
        return None, None

    def _log_step(
        self,
        inputs: ScoreInputs,
        used: str,
        samples: int,
        losses: Mapping[str, float],
        margin: float,
        collapsing: Sequence[str] = (),
    ) -> None:
        self.steps.append(
            {
                "target_sparsity": inputs.target_sparsity,
                "used": used,
                "samples": samples,
                "losses": dict(losses),
                "margin": margin,
                "collapsing": list(collapsing),
                "label_samples": self.budget.spent_samples,
            }
        )

    def _bands(self, priors: PriorScores, inputs: ScoreInputs, max_rows: int = MAX_PREDICTED_ROWS) -> dict[str, Tensor]:
        return frontier_bands(
            priors,
            LABEL_PRIOR,
            inputs.masks,
            inputs.target_sparsity,
            inputs.generator,
            window=WINDOW,
            max_rows=max_rows,
        )

    def _report_progress(self, done: int, total: int, seconds: float) -> None:
        if self.progress is not None:
            self.progress(
                f"[AutoPrune] measured {done}/{total} group ablations for the learned importance ({seconds:.0f} s)",
                done == total,
            )

    def feature_importances(self, repeats: int = 3, seed: int = 0, max_rows: int = 2048) -> dict[str, float]:
        """Permutation importance of each feature on the last event's rows (:meth:`OnlineModel.feature_importances`)."""
        return self.online.feature_importances(repeats, seed, max_rows)


@dataclass(frozen=True)
class _Labelled:
    """What an event's labels leave for its step: the verdict, the band scores and the counts it reports."""

    verdict: Verdict
    band_scores: _BandScores
    groups: int
    held_out: int
    rows_fitted: int
    band_rows: int


def _labelled_record(
    inputs: ScoreInputs, labelled: _Labelled, choice: StepChoice, label_samples: int
) -> dict[str, Any]:
    """The diagnostics entry of a labelled event: its labels, the held-out check and the step applied."""
    verdict = labelled.verdict
    return {
        "target_sparsity": inputs.target_sparsity,
        "groups": labelled.groups,
        "held_out": labelled.held_out,
        "rows_fitted": labelled.rows_fitted,
        "band_rows": labelled.band_rows,
        "fidelity": verdict.fidelity,
        "best_prior": choice.name if choice.name != "learned" else LABEL_PRIOR,
        "blend_weight": verdict.blend_weight if choice.name == "learned" else 0.0,
        "fell_back": choice.name != "learned",
        "step_losses": choice.losses,
        "collapsing": list(choice.collapsing),
        "used": choice.name,
        "layer_removed": {
            name: {choice.name: share, LABEL_PRIOR: choice.removed[LABEL_PRIOR][name]}
            for name, share in choice.removed[choice.name].items()
        },
        "label_samples": label_samples,
    }


class _BandScores:
    """The learned model's predictions on one prior's frontier bands, and the quantile maps of the blend.

    Attributes:
        bands: per tensor, the band's flat indices in ascending prior order.
        predicted: per tensor, the learned prediction of each band weight (same order).
        learned_map: maps learned predictions to their quantile in a sample of the bands.
        prior_map: the same for the prior's scores.
    """

    def __init__(
        self, bands: dict[str, Tensor], predicted: dict[str, Tensor], learned_map: _QuantileMap, prior_map: _QuantileMap
    ) -> None:
        self.bands, self.predicted = bands, predicted
        self.learned_map, self.prior_map = learned_map, prior_map

    @classmethod
    def predict(
        cls,
        model: Any,
        table: FeatureTable,
        priors: PriorScores,
        prior: str,
        bands: dict[str, Tensor],
        generator: torch.Generator,
    ) -> _BandScores:
        """Predict every band weight, tensor by tensor in chunks of :data:`CHUNK_ROWS` rows."""
        predicted: dict[str, Tensor] = {}
        for name, index in bands.items():
            parts = [
                torch.from_numpy(predict_scores(model, table.rows(name, index[i : i + CHUNK_ROWS]).cpu().numpy()))
                for i in range(0, len(index), CHUNK_ROWS)
            ]
            predicted[name] = torch.cat(parts).float() if parts else torch.zeros(0)
        total = sum(len(index) for index in bands.values())
        learned_sample, prior_sample = [], []
        for name, index in bands.items():
            count = min(len(index), math.ceil(QUANTILE_SAMPLE * len(index) / max(total, 1)))
            if count:
                pick = torch.randperm(len(index), generator=generator)[:count]
                learned_sample.append(predicted[name][pick])
                prior_sample.append(priors.at(prior, name, index[pick.to(index.device)]).float().cpu())
        empty = [torch.zeros(0)]
        learned_map = _QuantileMap(torch.cat(learned_sample or empty))
        return cls(bands, predicted, learned_map, _QuantileMap(torch.cat(prior_sample or empty)))

    def scores(self, priors: PriorScores, prior: str, alpha: float) -> dict[str, Tensor]:
        """:meth:`tensor_scores` of every tensor."""
        return {name: self.tensor_scores(priors, prior, alpha, name) for name in priors.inputs.weights}

    def tensor_scores(self, priors: PriorScores, prior: str, alpha: float, name: str) -> Tensor:
        """The prior's scores of tensor ``name``, with its band's values reordered by the learned (or blended) ranking.

        Inside a band, the weight with the j-th lowest learned score gets the band's j-th lowest
        prior value, so every tensor keeps the prior's multiset of values and a global selection
        removes exactly as many weights from each tensor as the prior would; the learned ranking
        chooses which ones.
        """
        full = priors.tensor(prior, name).detach().float()
        index = self.bands[name].to(full.device)
        if len(index):
            flat = full.view(-1)
            ascending = flat[index].clone()
            flat[self._reordered(name, ascending, alpha).to(full.device)] = ascending
        return full

    def tensor_scores_at(self, priors: PriorScores, prior: str, alpha: float, name: str, index: Tensor) -> Tensor:
        """:meth:`tensor_scores` of tensor ``name`` at the flat entries ``index``, from them and the band alone."""
        values = priors.tensor_at(prior, name, index).detach().float().clone()
        band = self.bands[name]
        if len(band):
            ascending = priors.tensor_at(prior, name, band).detach().float()
            positions, order = torch.sort(self._reordered(name, ascending, alpha).to(values.device))
            index = index.to(values.device)
            slot = torch.searchsorted(positions, index).clamp_max(len(positions) - 1)
            inside = positions[slot] == index
            values[inside] = ascending.to(values.device)[order][slot[inside]]
        return values

    def _reordered(self, name: str, ascending: Tensor, alpha: float) -> Tensor:
        """Where the band's prior values ``ascending`` go: its positions in ascending learned (or blended) order."""
        values = self.predicted[name]
        if alpha < 1.0:
            values = alpha * self.learned_map(values) + (1 - alpha) * self.prior_map(ascending.cpu())
        index = self.bands[name]
        return index[torch.sort(values.float(), stable=True).indices.to(index.device)]


class _QuantileMap:
    """Maps raw scores to their approximate global quantile in ``[0, 1]`` by interpolating a sorted sample."""

    def __init__(self, sample: Tensor) -> None:
        self.sorted = torch.sort(sample.float()).values
        self.levels = torch.linspace(0.0, 1.0, len(self.sorted))

    def __call__(self, values: Tensor) -> Tensor:
        flat = values.reshape(-1).float().contiguous()
        knots = self.sorted.to(flat.device)
        levels = self.levels.to(flat.device)
        if len(knots) < 2:
            return torch.full_like(values, 0.5, dtype=torch.float32)
        hi = torch.searchsorted(knots, flat).clamp(1, len(knots) - 1)
        lo = hi - 1
        span = (knots[hi] - knots[lo]).clamp_min(1e-30)
        t = ((flat - knots[lo]) / span).clamp(0.0, 1.0)
        return (levels[lo] + t * (levels[hi] - levels[lo])).view_as(values)


def _step_measure(
    inputs: ScoreInputs, left: int | None, candidates: int, parts: int
) -> tuple[Callable[[], list[float]] | None, int]:
    """How one candidate step is measured within ``left`` samples: its per-part losses, and the sample count.

    The step is measured by :attr:`ScoreInputs.probe_fn` (BatchNorm on the batch's statistics) on
    every calibration sample when ``left`` pays for one pass per candidate (or is unlimited), else
    on the first ``left // candidates`` samples when that is at least :data:`MIN_PROBE_SAMPLES`;
    else ``(None, 0)``. Those samples are measured as ``parts`` disjoint parts (one when a part
    would hold fewer than two samples), whose paired differences tell a real gain from noise.
    Without ``probe_fn``: ``loss_fn`` on every sample, if ``left`` pays for it, in one part.
    """
    full = inputs.loss_samples or 0
    samples = full if left is None else min(full, left // candidates)
    probe_fn, loss_fn = inputs.probe_fn, inputs.loss_fn
    if probe_fn is None:  # no probes: all samples, as ``loss_fn`` measures them, or nothing
        if samples < full or loss_fn is None:
            return None, 0
        return lambda: [loss_fn()], full
    if samples < MIN_PROBE_SAMPLES and samples < full:
        return None, 0
    size = samples // parts
    if parts == 1 or size < 2:  # one part (BatchNorm needs two samples per batch)
        whole = probe_fn(samples)
        return lambda: [whole()], samples
    measures = [probe_fn(size, i * size) for i in range(parts)]
    return lambda: [measure() for measure in measures], size * parts


def _member_rows(table: FeatureTable, groups: list[Group], generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows of up to :data:`MEMBER_ROWS` sampled members of each group, and each row's group.

    Every member row carries its group's label. The estimator is trained on single weights'
    features, exactly what it is applied to, and learns the expected loss change of a weight given
    its features from the group ablations it took part in (no group-averaged features, whose
    distribution single weights do not share). The rows of one tensor are gathered in one call.
    """
    members = []
    for group in groups:
        index = group.index
        if len(index) > MEMBER_ROWS:
            index = index[torch.randperm(len(index), generator=generator)[:MEMBER_ROWS].to(index.device)]
        members.append(index)
    blocks: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    for name, positions in _by_tensor(groups).items():
        blocks.append(table.rows(name, torch.cat([members[i] for i in positions])).cpu().numpy())
        owners.append(np.repeat(positions, [len(members[i]) for i in positions]))
    return np.concatenate(blocks).astype(np.float32), np.concatenate(owners)


def _by_tensor(groups: list[Group]) -> dict[str, list[int]]:
    positions: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        positions.setdefault(group.name, []).append(i)
    return positions


class _HeldOut:
    """Up to :data:`GROUP_SAMPLE` members of each held-out group, gathered tensor by tensor.

    A group's score under the learned model or a prior is the mean over these members (the same
    members for every scorer). Each tensor's features and priors are computed once.
    """

    def __init__(self, groups: list[Group], generator: torch.Generator) -> None:
        self.count = len(groups)
        members: dict[str, list[tuple[int, Tensor]]] = {}
        for position, group in enumerate(groups):
            index = group.index
            if len(index) > GROUP_SAMPLE:
                pick = torch.randperm(len(index), generator=generator)[:GROUP_SAMPLE].to(index.device)
                index = index[pick].sort().values
            members.setdefault(group.name, []).append((position, index))
        self.index = {name: torch.cat([i for _, i in parts]) for name, parts in members.items()}
        self.owner = np.concatenate(
            [np.repeat(position, len(i)) for parts in members.values() for position, i in parts]
        ).astype(np.int64)

    def learned(self, model: Any, table: FeatureTable) -> np.ndarray:
        """The model's prediction for every member (one predict call)."""
        rows = np.concatenate([table.rows(name, index).cpu().numpy() for name, index in self.index.items()])
        return predict_scores(model, rows)

    def priors(self, priors: PriorScores) -> dict[str, np.ndarray]:
        """Every prior's score of every member."""
        values: dict[str, list[np.ndarray]] = {prior: [] for prior in PRIORS}
        for name, index in self.index.items():
            for prior in PRIORS:
                values[prior].append(priors.at(prior, name, index).double().cpu().numpy())
        return {prior: np.concatenate(parts) for prior, parts in values.items()}

    def means(self, values: np.ndarray) -> np.ndarray:
        """Per group, the mean of its members' ``values``."""
        counts = np.bincount(self.owner, minlength=self.count)
        return np.bincount(self.owner, weights=values, minlength=self.count) / np.maximum(counts, 1)
