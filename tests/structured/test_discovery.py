"""Unit discovery: the groups of parameter slices Torch-Pruning's coupling gives each prunable unit."""

from __future__ import annotations

import torch
from torch import nn

from lightning_autoprune import compact
from lightning_autoprune.structured import find_unit_groups, kept_units, unit_masks


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
