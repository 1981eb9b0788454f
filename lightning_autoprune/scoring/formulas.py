"""Weight importance formulas, each written once, and the formula scorers built on them.

The functions take one tensor at a time and are what every other part of the package (the learned
scorer's priors and features, the benchmarks) calls, so each formula has one definition:

* :func:`magnitude_scores`: ``|w|`` (Han et al., 2015);
* :func:`lamp_scores`: layer-adaptive magnitude (LAMP; Lee et al., ICLR 2021), from one stable sort
  (:func:`lamp_with_order` also returns that sort, for callers that need it);
* :func:`taylor_scores`: first-order Taylor ``|w| * sqrt(F)`` (Molchanov et al., 2019);
* :func:`taylor2_scores`: second-order Taylor loss change of removing a weight, ``-g*w + 1/2*w**2*F``;
* :func:`wanda_scores`: activation-aware magnitude ``|w_ij| * ||x_j||`` (Wanda; Sun et al., ICLR 2024);
* :func:`random_scores`: the control every method must beat.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_autoprune.scoring.base import FormulaMixin, ScoreInputs, Scorer

#: Formula scorer names accepted by ``AutoPrune(importance=...)`` for weights.
BASELINE_SCORERS = ("magnitude", "lamp", "taylor", "wanda", "random")


def magnitude_scores(weight: Tensor) -> Tensor:
    """``|w|`` as float32.

    Example:
        >>> magnitude_scores(torch.tensor([0.5, -2.0]))
        tensor([0.5000, 2.0000])
    """
    return weight.detach().abs().float()


def lamp_with_order(weight: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Flat LAMP scores of one tensor, and the stable ascending order of ``w**2`` they come from.

    Pruned entries count as ``w = 0``; ties are ordered by index (a stable sort), so equal weights
    get distinct but deterministic scores. See :class:`LampScorer`.

    Example:
        >>> scores, order = lamp_with_order(torch.tensor([2.0, 1.0, 2.0]), torch.ones(3, dtype=torch.bool))
        >>> scores, order
        (tensor([0.5000, 0.1111, 1.0000]), tensor([1, 0, 2]))
    """
    sq = weight.detach().float().pow(2).reshape(-1) * mask.reshape(-1).to(weight.device)
    order = torch.sort(sq, stable=True).indices
    sorted_sq = sq[order]
    del sq
    # In place where it can be: a new tensor per operation held about 7x the tensor at once.
    suffix = sorted_sq.flip(0).cumsum_(0).flip(0)
    positive = suffix > 0
    sorted_sq.div_(suffix.clamp_min_(torch.finfo(sorted_sq.dtype).tiny))
    del suffix
    sorted_sq.masked_fill_(positive.logical_not_(), 0.0)
    scores = torch.empty_like(sorted_sq)
    scores[order] = sorted_sq
    return scores, order


def lamp_scores(weight: Tensor, mask: Tensor) -> Tensor:
    """LAMP score of every entry of one layer, shaped like ``weight``; see :class:`LampScorer`.

    Example:
        >>> lamp_scores(torch.tensor([1.0, 2.0, 2.0]), torch.tensor([True, True, False]))
        tensor([0.2000, 1.0000, 0.0000])
    """
    return lamp_with_order(weight, mask)[0].view_as(weight)


def taylor_scores(weight: Tensor, fisher: Tensor) -> Tensor:
    """First-order Taylor score of one tensor, ``|w| * sqrt(F)``; see :class:`TaylorScorer`.

    Example:
        >>> taylor_scores(torch.tensor([1.0, -2.0]), torch.tensor([4.0, 0.25]))
        tensor([2., 1.])
    """
    # In place on the new tensor: no temporary besides it. ``|w * s| == |w| * s`` bit for bit for ``s >= 0``
    # (rounding is symmetric in sign), so this is the formula's value without ``weight.abs()``'s copy.
    return fisher.sqrt().mul_(weight).abs_()


def taylor2_scores(weight: Tensor, grad: Tensor, fisher: Tensor, *, fisher_first: bool = False) -> Tensor:
    """Second-order Taylor loss change of removing each weight: ``-g * w + 1/2 * w**2 * F``.

    ``g`` is the mean calibration gradient and ``F`` the Fisher diagonal (mean squared per-batch
    gradient). The value is signed: a negative one means removing the weight should lower the loss.

    Args:
        weight: the weights ``w`` (float).
        grad: the mean gradient ``g``, like ``weight``.
        fisher: the Fisher diagonal ``F``, like ``weight``.
        fisher_first: multiply the curvature term as ``0.5 * F * w * w`` instead of
            ``0.5 * w * w * F``. Float arithmetic rounds the two orders differently; the learned
            scorer's ``taylor2`` prior has always used this one, and keeps it so that its numbers
            stay bit for bit the same.

    Example:
        >>> w = torch.tensor([1.0, -2.0])
        >>> taylor2_scores(w, torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]))
        tensor([0., 1.])
    """
    if fisher_first:
        return -grad * weight + 0.5 * fisher * weight * weight
    return -grad * weight + 0.5 * weight * weight * fisher


def wanda_scores(weight: Tensor, input_norm: Tensor | None, *, transposed: bool = False) -> Tensor:
    """Activation-aware magnitude of one tensor, ``|w_ij| * ||x_j||``; see :class:`WandaScorer`.

    ``input_norm`` holds, per input unit ``j`` (dimension 1 of ``weight``: a Linear input feature or
    a Conv input channel; dimension 0 of a ``transposed`` weight stored ``[in, out]``, as
    transformers' ``Conv1D`` stores it), the size of that unit's input on the calibration samples
    (its root mean square, for :class:`WandaScorer`); a Conv kernel's entries share their input
    channel's value. Without a norm, or with
    one that does not match the input dimension, the score is ``|w|``.

    Example:
        >>> w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
        >>> wanda_scores(w, torch.tensor([2.0, 0.5]))
        tensor([[2.0000, 1.0000],
                [6.0000, 0.2500]])
        >>> wanda_scores(torch.ones(2, 2, 3), torch.tensor([1.0, 0.0]))[0]
        tensor([[1., 1., 1.],
                [0., 0., 0.]])
        >>> wanda_scores(w, None)
        tensor([[1.0000, 2.0000],
                [3.0000, 0.5000]])
        >>> wanda_scores(w.T, torch.tensor([2.0, 0.5]), transposed=True)  # the same layer stored [in, out]
        tensor([[2.0000, 6.0000],
                [1.0000, 0.2500]])
    """
    magnitude = magnitude_scores(weight)
    in_dim = 0 if transposed else 1
    if input_norm is None or weight.dim() < 2 or input_norm.numel() != weight.shape[in_dim]:
        return magnitude
    shape = (-1, 1) if transposed else (1, -1, *([1] * (weight.dim() - 2)))
    return magnitude * input_norm.detach().float().to(magnitude.device).view(shape)


def random_scores(weight: Tensor, generator: torch.Generator) -> Tensor:
    """Uniform scores in ``[0, 1)`` shaped like ``weight``, drawn on the CPU from ``generator``.

    Example:
        >>> random_scores(torch.zeros(2), torch.Generator().manual_seed(0)).shape
        torch.Size([2])
    """
    return torch.rand(weight.shape, generator=generator).to(weight.device)


class MagnitudeScorer(FormulaMixin):
    """Global magnitude ``|w|`` (Han et al., 2015).

    Example:
        >>> w = {"a": torch.tensor([0.5, -2.0]), "b": torch.tensor([1.0])}
        >>> m = {k: torch.ones_like(v, dtype=torch.bool) for k, v in w.items()}
        >>> MagnitudeScorer().score(ScoreInputs(w, m))
        {'a': tensor([0.5000, 2.0000]), 'b': tensor([1.])}
    """

    def score(self, inputs: ScoreInputs) -> dict[str, Tensor]:
        """Absolute weight values."""
        return {name: magnitude_scores(w) for name, w in inputs.weights.items()}


class LampScorer(FormulaMixin):
    """Layer-adaptive magnitude-based pruning (LAMP; Lee et al., ICLR 2021).

    Within a layer, sort the kept weights by ``w**2`` ascending; a weight's score is its ``w**2``
    divided by the sum of ``w**2`` over itself and every larger weight of the same layer. The
    largest kept weight of every layer scores 1, so global ranking never empties a layer, and
    layers get sparsity in proportion to how much distortion pruning them causes. Pruned weights
    score 0.

    Example:
        >>> w = {"a": torch.tensor([1.0, 2.0, 2.0]), "b": torch.tensor([3.0])}
        >>> m = {k: torch.ones_like(v, dtype=torch.bool) for k, v in w.items()}
        >>> LampScorer().score(ScoreInputs(w, m))
        {'a': tensor([0.1111, 0.5000, 1.0000]), 'b': tensor([1.])}
    """

    def score(self, inputs: ScoreInputs) -> dict[str, Tensor]:
        """LAMP scores, 0 for already pruned weights."""
        return {name: lamp_scores(w, inputs.masks[name]) for name, w in inputs.weights.items()}


class TaylorScorer(FormulaMixin):
    """First-order Taylor importance (Molchanov et al., 2019), from calibration batches.

    The root mean square over calibration batches of ``|g_b * w|``, that is
    ``|w| * sqrt(E_b[g_b ** 2])``: the expected first-order change of the loss when the weight is
    removed, estimated per batch so that gradients which cancel on average still count.

    Example:
        >>> w = {"a": torch.tensor([1.0, -2.0])}
        >>> m = {"a": torch.tensor([True, True])}
        >>> TaylorScorer().score(ScoreInputs(w, m, grad_sq_mean={"a": torch.tensor([4.0, 0.25])}))
        {'a': tensor([2., 1.])}
        >>> TaylorScorer().score(ScoreInputs(w, m))
        Traceback (most recent call last):
        ...
        ValueError: The `taylor` scorer needs calibration gradients (`grad_sq_mean`), got None.
    """

    needs_gradients = True

    def score(self, inputs: ScoreInputs) -> dict[str, Tensor]:
        """Taylor scores; needs ``grad_sq_mean``."""
        if inputs.grad_sq_mean is None:
            raise ValueError("The `taylor` scorer needs calibration gradients (`grad_sq_mean`), got None.")
        fisher = inputs.grad_sq_mean
        return {name: taylor_scores(w.detach().float(), fisher[name].float()) for name, w in inputs.weights.items()}


class WandaScorer(FormulaMixin):
    """Activation-aware magnitude (Wanda; Sun et al., ICLR 2024): ``|w_ij| * ||x_j||``, ranked globally.

    ``||x_j||`` is the root mean square of input unit ``j`` (Linear input feature, Conv input
    channel broadcast over the kernel) over the rows its layer saw on the calibration samples
    (samples, times positions for a Conv or a sequence), which the pruning event records in a
    forward pass (no gradients) because ``needs_activations`` is true. Wanda's paper compares
    weights within each output row, where any per-layer scale cancels; here, as for every formula,
    scores are ranked across the whole model, so the norm is taken per row: an L2 norm summed over
    positions would grow with a feature map's length and strip the layers that see one vector per
    sample (a classifier head after pooling). Tensors with no recorded input (an ``Embedding``, a
    layer the event could not hook) score ``|w|``. Weights stored ``[in, out]`` (transformers'
    ``Conv1D``) are read with their input units along dimension 0.

    Example:
        >>> w = {"a": torch.tensor([[1.0, -2.0]]), "b": torch.tensor([3.0])}
        >>> m = {k: torch.ones_like(v, dtype=torch.bool) for k, v in w.items()}
        >>> WandaScorer().score(ScoreInputs(w, m, input_rms={"a": torch.tensor([4.0, 1.0])}))
        {'a': tensor([[4., 2.]]), 'b': tensor([3.])}
    """

    needs_activations = True

    def score(self, inputs: ScoreInputs) -> dict[str, Tensor]:
        """``|w| * rms(x)`` where the input was recorded (``input_rms``, else ``input_norms``), ``|w|`` elsewhere."""
        norms = inputs.input_rms if inputs.input_rms is not None else inputs.input_norms or {}
        return {
            name: wanda_scores(w, norms.get(name), transposed=name in inputs.transposed)
            for name, w in inputs.weights.items()
        }


class RandomScorer(FormulaMixin):
    """Uniform random scores from the caller's seeded generator: the control every method must beat.

    Example:
        >>> w = {"a": torch.zeros(3)}
        >>> scores = RandomScorer().score(ScoreInputs(w, {"a": torch.ones(3, dtype=torch.bool)}))
        >>> bool(((scores["a"] >= 0) & (scores["a"] < 1)).all())
        True
    """

    def score(self, inputs: ScoreInputs) -> dict[str, Tensor]:
        """Random scores in ``[0, 1)``; reproducible given the generator state."""
        return {name: random_scores(w, inputs.generator) for name, w in inputs.weights.items()}


#: The formula scorer of each name in :data:`BASELINE_SCORERS`.
FORMULA_SCORERS: dict[str, Callable[[], Scorer]] = {
    "magnitude": MagnitudeScorer,
    "lamp": LampScorer,
    "taylor": TaylorScorer,
    "wanda": WandaScorer,
    "random": RandomScorer,
}
