from __future__ import annotations

import math

import pytest
import torch

from lightning_autoprune.core.calibration import ActivationRecorder
from lightning_autoprune.core.flops import OutputPositions
from lightning_autoprune.core.targets import resolve_targets
from lightning_autoprune.scoring.base import ScoreInputs
from lightning_autoprune.scoring.learned.features import FEATURE_NAMES, FeatureTable


def column(rows: torch.Tensor, name: str) -> list[float]:
    return rows[:, FEATURE_NAMES.index(name)].tolist()


@pytest.fixture
def tiny() -> ScoreInputs:
    # Two Linear layers: "a" is 2 outputs x 3 inputs, "b" is 1 output x 2 inputs; a[1, 2] is pruned.
    w = {"a": torch.tensor([[1.0, -2.0, 0.5], [4.0, 1.0, 0.0]]), "b": torch.tensor([[2.0, -1.0]])}
    m = {"a": torch.tensor([[True, True, True], [True, True, False]]), "b": torch.tensor([[True, True]])}
    g = {"a": torch.tensor([[0.5, 0.0, -1.0], [0.25, 1.0, 0.0]]), "b": torch.tensor([[1.0, 2.0]])}
    f = {"a": torch.tensor([[1.0, 4.0, 0.0], [2.0, 1.0, 0.0]]), "b": torch.tensor([[0.5, 1.0]])}
    return ScoreInputs(
        weights=w,
        masks=m,
        grad_mean=g,
        grad_sq_mean=f,
        target_sparsity=0.5,
        progress=0.25,
        initial_weights={"a": torch.zeros(2, 3), "b": torch.tensor([[2.0, 1.0]])},
        movement={"a": torch.full((2, 3), 2.0), "b": torch.zeros(1, 2)},
        input_norms={"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([4.0, 4.0])},
        output_norms={"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([2.0])},
    )


def test_feature_rows_match_hand_computed_values(tiny: ScoreInputs) -> None:
    table = FeatureTable(tiny)
    rows = table.rows("a", torch.arange(6))
    assert rows.shape == (6, len(FEATURE_NAMES))
    assert rows.dtype == torch.float32
    # Global scale of |w| over the 7 kept weights: (1 + 2 + .5 + 4 + 1 + 2 + 1) / 7 = 11.5 / 7.
    s_w = 11.5 / 7
    expected_log_w = [math.log10(abs(v) / s_w + 1e-6) for v in (1.0, -2.0, 0.5, 4.0, 1.0, 0.0)]
    assert column(rows, "log_abs_weight") == pytest.approx(expected_log_w, abs=1e-5)
    # Layer mean |w| over a's 5 kept weights: 8.5 / 5 = 1.7.
    assert column(rows, "layer_normalised_weight") == pytest.approx(
        [1 / 1.7, 2 / 1.7, 0.5 / 1.7, 4 / 1.7, 1 / 1.7, 0.0]
    )
    # Ranks of |w| among the kept: 0.5 < 1 (index 0) = 1 (index 4, the same rank) < 2 < 4; pruned -> 0.
    assert column(rows, "layer_percentile") == pytest.approx([0.25, 0.75, 0.0, 1.0, 0.25, 0.0])
    # LAMP w^2 / (sum of kept w^2 at least as large): squares .25, 1, 1, 4, 16; ties share a denominator.
    lamp = [1 / 22, 4 / 20, 0.25 / 22.25, 16 / 16, 1 / 22, 0.0]
    assert column(rows, "log_lamp") == pytest.approx([math.log10(v + 1e-6) for v in lamp], abs=1e-5)
    # |g| global scale: (.5 + 0 + 1 + .25 + 1 + 1 + 2) / 7 = 5.75 / 7.
    assert column(rows, "gradient") == pytest.approx([v / (5.75 / 7) for v in (0.5, 0.0, -1.0, 0.25, 1.0, 0.0)])
    # Second-order Taylor -g w + w^2 F / 2 per entry, over its global mean absolute value.
    t2_a = [-0.5 + 0.5, 0.0 + 8.0, 0.5 + 0.0, -1.0 + 16.0, -1.0 + 0.5, 0.0]
    t2_b = [-2.0 + 1.0, 2.0 + 0.5]
    s_t2 = sum(abs(v) for v in t2_a[:5] + t2_b) / 7
    assert column(rows, "taylor2") == pytest.approx([v / s_t2 for v in t2_a], abs=1e-6)
    assert column(rows, "log_drift") == pytest.approx(
        [math.log10(abs(v) / s_w + 1e-6) for v in (1, 2, 0.5, 4, 1, 0)], abs=1e-5
    )
    # Input unit of entry (o, i) is i; global input-norm scale: mean of (1, 2, 3, 4, 4) = 2.8.
    assert column(rows, "log_input_norm") == pytest.approx(
        [math.log10(v / 2.8 + 1e-6) for v in (1, 2, 3, 1, 2, 3)], abs=1e-5
    )
    # Output unit of entry (o, i) is o; global output-norm scale: mean of (1, 3, 2) = 2.
    assert column(rows, "log_output_norm") == pytest.approx(
        [math.log10(v / 2 + 1e-6) for v in (1, 1, 1, 3, 3, 3)], abs=1e-5
    )
    # Wanda |w| * ||x||, over its global mean over kept weights.
    wanda_a = [1 * 1, 2 * 2, 0.5 * 3, 4 * 1, 1 * 2, 0.0]
    s_wanda = (sum(wanda_a) + 2 * 4 + 1 * 4) / 7
    assert column(rows, "log_wanda") == pytest.approx([math.log10(v / s_wanda + 1e-6) for v in wanda_a], abs=1e-5)
    constants = rows[0, FEATURE_NAMES.index("depth") :].tolist()
    assert constants == pytest.approx([0.0, math.log2(3), 1.0, 5 / 6, 6 / 8, 0.25, 0.5])
    assert column(table.rows("b", torch.arange(2)), "depth") == [1.0, 1.0]


def test_missing_context_gives_neutral_columns() -> None:
    w = {"a": torch.tensor([[1.0, 2.0]])}
    table = FeatureTable(ScoreInputs(w, {"a": torch.ones(1, 2, dtype=torch.bool)}))
    rows = table.rows("a", torch.arange(2))
    assert torch.isfinite(rows).all()
    for name in ("gradient", "gradient_times_weight", "taylor2", "movement", "log_output_norm"):
        assert column(rows, name) == [0.0, 0.0]
    assert column(rows, "log_input_norm") == pytest.approx([0.0, 0.0], abs=1e-5)


def test_conv_entries_map_to_their_input_channel() -> None:
    w = {"c": torch.ones(2, 3, 4)}  # 2 output channels, 3 input channels, kernel 4
    norms = {"c": torch.tensor([1.0, 10.0, 100.0])}
    table = FeatureTable(ScoreInputs(w, {"c": torch.ones(2, 3, 4, dtype=torch.bool)}, input_norms=norms))
    rows = table.rows("c", torch.tensor([0, 4, 8, 12 + 5]))  # channels 0, 1, 2 and (out 1, in 1)
    x = column(rows, "log_input_norm")
    assert x[0] < x[1] < x[2]
    assert x[3] == pytest.approx(x[1])
    assert column(rows, "log2_fan_in")[0] == pytest.approx(math.log2(12))


def test_chunked_rows_equal_whole_rows(tiny: ScoreInputs) -> None:
    table = FeatureTable(tiny)
    whole = table.rows("a", torch.arange(6))
    parts = torch.cat(
        [table.rows("a", torch.arange(0, 4)), table.rows("b", torch.arange(2))[:0], table.rows("a", torch.arange(4, 6))]
    )
    assert torch.equal(whole, parts)


class Conv1D(torch.nn.Module):
    """transformers' ``Conv1D`` (GPT-2), copied to run without transformers: ``x @ W + b``, W ``[in, out]``."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = torch.nn.Parameter(torch.randn(nx, nf))
        self.bias = torch.nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (*x.shape[:-1], self.nf)
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(size)


def test_conv1d_rows_equal_those_of_the_equivalent_linear() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(5, 3)
    conv = Conv1D(nf=3, nx=5)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.T)
        conv.bias.copy_(linear.bias)
    x = torch.randn(4, 7, 5)
    assert torch.allclose(conv(x), linear(x), atol=1e-6)

    def inputs(layer: torch.nn.Linear | Conv1D, transpose: bool) -> ScoreInputs:
        with ActivationRecorder({"w": layer}) as recorder:
            layer(x)
        mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(1)) > 0.3
        grad = torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
        stored = (lambda t: t.T.contiguous()) if transpose else (lambda t: t)
        return ScoreInputs(
            weights={"w": layer.weight.detach() * stored(mask)},
            masks={"w": stored(mask)},
            grad_mean={"w": stored(grad)},
            grad_sq_mean={"w": stored(grad * grad)},
            input_norms=recorder.input_norms(),
            output_norms=recorder.output_norms(),
            transposed=frozenset({"w"}) if transpose else frozenset(),
        )

    from_linear, from_conv = inputs(linear, False), inputs(conv, True)
    assert from_conv.input_norms is not None
    assert from_linear.input_norms is not None
    assert torch.allclose(from_conv.input_norms["w"], from_linear.input_norms["w"])  # 5 input units
    assert from_conv.output_norms is not None
    assert from_linear.output_norms is not None
    assert torch.allclose(from_conv.output_norms["w"], from_linear.output_norms["w"])  # 3 output units
    out_unit, in_unit = torch.meshgrid(torch.arange(3), torch.arange(5), indexing="ij")
    linear_rows = FeatureTable(from_linear).rows("w", (out_unit * 5 + in_unit).reshape(-1))
    conv_rows = FeatureTable(from_conv).rows("w", (in_unit * 3 + out_unit).reshape(-1))
    assert column(conv_rows, "log2_fan_in")[0] == pytest.approx(math.log2(5))
    assert column(conv_rows, "log2_fan_out")[0] == pytest.approx(math.log2(3))
    assert torch.allclose(conv_rows, linear_rows, atol=1e-5)


def test_conv1d_flops_count_positions_over_every_dim_but_the_last() -> None:
    model = torch.nn.Sequential(Conv1D(nf=3, nx=5), torch.nn.Linear(3, 2))
    watcher = OutputPositions({})
    watcher.watch(resolve_targets(model))
    model(torch.randn(4, 7, 5))
    watcher.remove()
    assert watcher.positions == {"0.weight": 7, "1.weight": 7}


def test_global_scales_read_in_blocks_of_rows_equal_the_whole_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_autoprune.scoring.learned import features

    g = torch.Generator().manual_seed(0)
    shapes = {"fc": (30, 20), "conv": (8, 6, 3, 3), "proj": (20, 12), "vec": (50,)}  # "proj" is stored [in, out]
    weights = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    inputs = ScoreInputs(
        weights,
        {n: torch.rand(s, generator=g) > 0.3 for n, s in shapes.items()},
        grad_mean={n: torch.randn(s, generator=g) for n, s in shapes.items()},
        grad_sq_mean={n: torch.rand(s, generator=g) for n, s in shapes.items()},
        movement={n: torch.randn(s, generator=g) for n, s in shapes.items()},
        input_norms={n: torch.rand(size, generator=g) for n, size in (("fc", 20), ("conv", 6), ("proj", 20))},
        output_norms={"fc": torch.rand(30, generator=g)},
        transposed=frozenset({"proj"}),
    )
    whole = features._global_scales(inputs)
    monkeypatch.setattr(features, "SCALE_BLOCK", 7)  # a few rows (or one) per block
    blocked = features._global_scales(inputs)
    assert blocked.keys() == whole.keys()
    for key, value in whole.items():
        assert blocked[key] == pytest.approx(value, rel=1e-5), key
