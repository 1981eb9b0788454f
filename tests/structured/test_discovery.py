"""Unit discovery: the groups of parameter slices Torch-Pruning's coupling gives each prunable unit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_autoprune import compact
from lightning_autoprune.structured import find_unit_groups, kept_units, unit_masks, unsupported_layers


class Residual(nn.Module):
    """``inp`` and ``b`` both write into one residual stream, so their units are coupled."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        h = h + self.b(torch.relu(self.a(h)))
        return self.head(h)


def _weights(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_parameters() if name.endswith("weight")}


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in model.named_parameters()}


def _apply(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.masked_fill_(~masks[name], 0.0)


def test_residual_branches_form_one_group_and_masks_stay_consistent() -> None:
    torch.manual_seed(0)
    model = Residual()
    x = torch.randn(8, 4)
    groups, kept = find_unit_groups(model, (x,), prunable=_weights(model))
    by_name = {g.name: g for g in groups}
    assert set(by_name) == {"inp+b", "a"}
    assert kept == ["'head' (produces the model's output)"]
    roles = {(s.param, s.dim, s.role) for s in by_name["inp+b"].slices}
    assert roles == {
        ("inp.weight", 0, "producer"),
        ("inp.bias", 0, "producer"),
        ("b.weight", 0, "producer"),
        ("b.bias", 0, "producer"),
        ("a.weight", 1, "consumer"),
        ("head.weight", 1, "consumer"),
    }

    keep = {"inp+b": torch.tensor([True, False, True, False, True, True]), "a": torch.ones(5, dtype=torch.bool)}
    masks = unit_masks(groups, keep, _masks(model))
    for dropped in (1, 3):  # the same stream unit is gone from both producers and every consumer
        assert not masks["inp.weight"][dropped].any()
        assert not masks["b.weight"][dropped].any()
        assert not masks["inp.bias"][dropped]
        assert not masks["b.bias"][dropped]
        assert not masks["a.weight"][:, dropped].any()
        assert not masks["head.weight"][:, dropped].any()
    assert int((~masks["a.weight"]).sum()) == 2 * 5
    assert torch.equal(kept_units(by_name["inp+b"], masks), keep["inp+b"])

    _apply(model, masks)
    small = compact(model, x)
    assert isinstance(small, Residual)
    assert small.inp.out_features == 4
    assert small.b.out_features == 4
    assert small.head.in_features == 4
    model.eval()
    torch.testing.assert_close(small(x), model(x))


def test_units_coupled_to_an_unsupported_layer_are_kept_and_named() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    groups, kept = find_unit_groups(model, (torch.randn(3, 4),), prunable=_weights(model))
    assert [g.name for g in groups] == ["2"]
    assert any(k.startswith("'0' (coupled to '1' (LayerNorm)") for k in kept)


def test_a_layer_not_selected_blocks_its_group() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    groups, kept = find_unit_groups(model, (torch.randn(3, 4),), prunable={"2.weight", "4.weight"})
    assert [g.name for g in groups] == ["2"]
    assert not any(k.startswith("'0'") for k in kept)  # excluded on purpose: no warning about it


class SelfAttention(nn.Module):
    """Two heads of width 4 (the class name marks an attention block)."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(8, 8)
        self.key = nn.Linear(8, 8)
        self.value = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, 2, 4).transpose(1, 2) for p in (self.query, self.key, self.value))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, 8)


def test_attention_projections_are_kept_and_the_ffn_is_prunable() -> None:
    model = nn.Sequential(SelfAttention(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    groups, kept = find_unit_groups(model, (torch.randn(2, 5, 8),), prunable=_weights(model))
    assert [g.name for g in groups] == ["1"]
    assert "'0.query', '0.key', '0.value' (attention projections, which structured pruning keeps" in kept[-1]


def test_a_conv1d_ffn_is_one_group_sliced_along_its_transposed_weight() -> None:
    """GPT-2's MLP: c_fc (Conv1D) -> GELU -> c_proj (Conv1D), inside a residual stream."""

    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D  # Conv1D(nf, nx): weight [nx, nf]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.c_fc, self.c_proj, self.head = nn.Linear(3, 4), conv1d(8, 4), conv1d(4, 8), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x)
            return self.head(h + self.c_proj(nn.functional.gelu(self.c_fc(h))))

    model = Block()
    groups, _ = find_unit_groups(model, (torch.randn(2, 5, 3),), prunable=_weights(model))
    (ffn,) = [g for g in groups if g.name == "c_fc"]
    assert ffn.units == 8
    assert [(s.param, s.dim, s.role) for s in ffn.slices] == [
        ("c_fc.weight", 1, "producer"),
        ("c_fc.bias", 0, "producer"),
        ("c_proj.weight", 0, "consumer"),
    ]
    assert unsupported_layers(model) == []


def test_unsupported_layers_are_named_by_type() -> None:
    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D
    model = nn.Sequential(nn.Bilinear(4, 4, 8), nn.Bilinear(8, 8, 8), conv1d(8, 8), nn.Linear(8, 2), nn.LayerNorm(2))
    assert unsupported_layers(model) == ["Bilinear: '0', '1'"]


def test_a_model_torch_pruning_cannot_trace_is_a_value_error() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Bilinear(4, 4, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.proj(x, x))

    model = Broken()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            "lightning_autoprune.structured.discovery.trace",
            lambda *args, **kwargs: (_ for _ in ()).throw(TypeError("no channels")),
        )
        with pytest.raises(ValueError, match=r"could not trace the model \(TypeError: no channels\).*Bilinear: 'proj'"):
            find_unit_groups(model, (torch.randn(2, 4),), prunable=_weights(model))
