"""The one Torch-Pruning reader: what a trace gives, and that discovery and compaction both read it."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lightning_autoprune.structured import compact, count_parameters, find_unit_groups, unit_masks
from lightning_autoprune.structured.tracing import Plan, Trace, trace

pytest.importorskip("torch_pruning")


class ResidualCNN(nn.Module):
    """stem -> BN -> ReLU -> (identity + conv-BN-ReLU-conv-BN) -> ReLU -> pool -> Linear."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv1d(2, channels, 3, padding=1)
        self.bn0 = nn.BatchNorm1d(channels)
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm1d(channels)
        self.head = nn.Linear(channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        identity = torch.relu(self.bn0(self.stem(x)))
        branch = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(identity)))))
        return self.head(torch.relu(identity + branch).mean(dim=-1))


def _residual_cnn(x: Tensor) -> ResidualCNN:
    torch.manual_seed(0)
    model = ResidualCNN()
    model.train()
    with torch.no_grad():  # BatchNorm running statistics that are not the defaults
        for _ in range(3):
            model(x + 0.1 * torch.randn_like(x))
    return model.eval()


def _producers(plan: Plan) -> list[nn.Module]:
    return [link.module for link in plan.links if link.out and isinstance(link.module, (nn.Linear, nn.Conv1d))]


def test_plan_of_a_residual_stream_holds_both_producers_and_every_consumer() -> None:
    model = _residual_cnn(torch.randn(8, 2, 10))
    traced = trace(model, (torch.randn(4, 2, 10),))
    plan = traced.plan(model.stem)
    named = {(link.name, link.out) for link in plan.links if link.name is not None}
    assert {("stem", True), ("conv2", True), ("bn0", True), ("bn2", True)} <= named
    assert {("conv1", False), ("head", False)} <= named
    assert plan.units == 8
    assert all(link.roots is not None and len(link.roots) == len(link.index) for link in plan.links)
    assert any(link.kind == "ELEMENTWISE" for link in plan.links)  # the addition
    assert not any(link.at_output for link in plan.links)
    head = traced.plan(model.head)
    assert any(link.at_output and link.name == "head" for link in head.links)


def test_plans_skip_claimed_roots_and_report_failures() -> None:
    model = _residual_cnn(torch.randn(8, 2, 10))
    traced = trace(model, (torch.randn(4, 2, 10),))
    roots = [model.stem, model.conv1, model.conv2, model.head]
    assert [p.name for p in traced.plans(roots, claims=_producers)] == ["stem", "conv1", "head"]
    assert [p.name for p in traced.plans(roots, claims=lambda plan: [])] == ["stem", "conv1", "conv2", "head"]
    outside = nn.Linear(2, 2)  # not in the graph: skipped
    assert [p.name for p in traced.plans([outside, model.conv1], claims=_producers)] == ["conv1"]

    def broken(self: Trace, root: nn.Module) -> Plan:
        raise RuntimeError("no coupling")

    failures: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trace, "plan", broken)
        plans = list(traced.plans(roots, claims=_producers, on_error=lambda r, e: failures.append(str(e))))
        assert plans == []
        assert failures == ["no coupling"] * 4
        with pytest.raises(RuntimeError, match="no coupling"):
            list(traced.plans(roots, claims=_producers))


def test_trace_restores_training_and_requires_grad_flags() -> None:
    model = _residual_cnn(torch.randn(8, 2, 10))
    model.train()
    model.head.weight.requires_grad_(False)
    trace(model, (torch.randn(4, 2, 10),))
    assert model.training
    assert model.bn0.training
    assert not model.head.weight.requires_grad
    assert model.stem.weight.requires_grad


def test_a_transformers_decoder_is_traced_with_its_cache_off_and_the_setting_restored() -> None:
    """GPT-2's cache concatenates keys onto an empty cache; Torch-Pruning could not size that concatenation."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16)

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = transformers.GPT2LMHeadModel(config)

        def forward(self, ids: Tensor) -> Tensor:
            return self.model(input_ids=ids).logits

    lm = LM()
    assert lm.model.config.use_cache is True
    traced = trace(lm, (torch.randint(0, 32, (2, 8)),))
    assert traced.kind(lm.model.lm_head) == "LINEAR"
    assert lm.model.config.use_cache is True  # the model decodes with its cache again


def test_frozen_layers_stop_the_coupling() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    x = (torch.randn(3, 4),)
    plain = trace(model, x)
    frozen = trace(model, x, frozen=[model[1]])
    assert plain.kind(model[1]) == "LN"
    assert frozen.kind(model[1]) == "CUSTOMIZED"
    assert not any(link.name == "2" for link in frozen.plan(model[0]).links)
    assert not model[1]._forward_hooks  # the stitching hook is removed again


def test_prune_removes_the_units_and_everything_coupled() -> None:
    model = _residual_cnn(torch.randn(8, 2, 10))
    traced = trace(model, (torch.randn(4, 2, 10),))
    assert traced.prune(model.stem, [0, 5])
    assert (model.stem.out_channels, model.bn0.num_features, model.conv2.out_channels) == (6, 6, 6)
    assert (model.conv1.in_channels, model.head.in_features) == (6, 6)


def test_one_trace_drives_unit_discovery_and_compaction(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(16, 2, 10)
    model = _residual_cnn(x)
    read: list[set[frozenset[str]]] = []  # per consumer: the producers of each plan it read
    plans = Trace.plans

    def spy(self: Trace, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        seen: set[frozenset[str]] = set()
        read.append(seen)
        for plan in plans(self, *args, **kwargs):  # type: ignore[arg-type]
            seen.add(frozenset(self.names[id(m)] for m in _producers(plan)))
            yield plan

    monkeypatch.setattr(Trace, "plans", spy)
    weights = {name for name, _ in model.named_parameters() if name.endswith("weight")}
    groups, kept = find_unit_groups(model, (x,), prunable=weights)
    assert [g.name for g in groups] == ["stem+conv2", "conv1"]
    assert kept == ["'head' (produces the model's output)"]

    keep = {
        "stem+conv2": torch.tensor([True, False, True, True, False, True, True, True]),
        "conv1": torch.tensor([True, True, False, True, True, True, True, True]),
    }
    masks = {name: torch.ones_like(p, dtype=torch.bool) for name, p in model.named_parameters()}
    masks = unit_masks(groups, keep, masks)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.masked_fill_(~masks[name], 0.0)

    small = compact(model, x)
    assert isinstance(small, ResidualCNN)

    # discovery, then compaction: both read the one tracer's plans, and see the same coupled groups
    assert read == [{frozenset({"stem", "conv2"}), frozenset({"conv1"}), frozenset({"head"})}] * 2
    assert (small.stem.out_channels, small.bn0.num_features, small.conv2.out_channels) == (6, 6, 6)
    assert (small.conv1.out_channels, small.conv2.in_channels, small.head.in_features) == (7, 7, 6)
    assert count_parameters(small) < count_parameters(model)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-6)
