from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_autoprune.core import calibration
from lightning_autoprune.core.replay import DELTA_MIN_INPUTS, LayerReplay


class Block(nn.Module):
    """A residual block that adds its input in place, as torchvision's ResNet blocks do."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv1d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(width)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(1, 8, 3, padding=1)
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))


def batches_of(n: int = 3) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 1, 12, generator=gen), torch.randint(0, 3, (16,), generator=gen)) for _ in range(n)]


def loss_of(net: nn.Module) -> Any:
    return lambda batch, idx: nn.functional.cross_entropy(net(batch[0]), batch[1])


def weights(net: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in net.named_parameters() if n.endswith("weight") and p.dim() > 1}


def full_loss(net: nn.Module, batches: list[Any]) -> float:
    return calibration.mean_loss(loss_of(net), batches)


@pytest.mark.parametrize("batch_statistics", [False, True])
def test_every_ablation_loss_is_bit_for_bit_the_full_pass_loss(batch_statistics: bool) -> None:
    torch.manual_seed(0)
    net = Net().eval()
    batches = batches_of()
    params = weights(net)
    replay = LayerReplay(net, loss_of(net), batches, params)
    context = calibration.batch_statistics(net) if batch_statistics else torch.no_grad()
    with context:
        assert replay.record() == full_loss(net, batches)
        replayed = {}
        for name, p in params.items():
            saved = p.data.clone()
            p.data.view(-1)[::3] = 0
            before = replay.replayed_calls
            assert replay.changing([name]) == full_loss(net, batches), name
            replayed[name] = replay.replayed_calls - before
            p.data.copy_(saved)
    # The stem is the first call: nothing before it. The head is the last layer: the rest of the
    # network is replayed, except the outputs the residual adds change in place (bn2).
    assert replayed["stem.weight"] == 0
    assert 0 < replayed["blocks.0.conv2.weight"] < replayed["blocks.1.conv1.weight"] < replayed["head.weight"]
    assert replayed["head.weight"] % len(batches) == 0


def test_outputs_changed_in_place_later_are_recomputed_not_replayed() -> None:
    torch.manual_seed(0)
    net = Net().eval()
    batches = batches_of(1)
    replay = LayerReplay(net, loss_of(net), batches, weights(net))
    replay.record()
    recorded = {m for m, output in replay._calls[0] if output is not None}
    assert net.blocks[0].bn2 not in recorded  # `out += x` changed it after it was returned
    assert net.blocks[0].conv2 in recorded
    assert net.stem in recorded


def test_a_tied_tensor_replays_nothing_before_its_first_use() -> None:
    torch.manual_seed(0)
    embed = nn.Embedding(10, 6)
    body = nn.Linear(6, 6)
    head = nn.Linear(6, 10, bias=False)
    head.weight = embed.weight  # tied: the head's ablation changes the embedding too
    net = nn.ModuleDict({"embed": embed, "body": body, "head": head})
    tokens = [torch.randint(0, 10, (4, 5), generator=torch.Generator().manual_seed(1))]

    def loss(batch: Tensor, idx: int) -> Tensor:
        return net["head"](torch.tanh(net["body"](net["embed"](batch)))).logsumexp(-1).mean()

    replay = LayerReplay(net, loss, tokens, {"head.weight": head.weight, "body.weight": body.weight})
    replay.record()
    saved = head.weight.detach().clone()
    with torch.no_grad():
        head.weight[3] = 0
    assert replay.changing(["head.weight"]) == calibration.mean_loss(loss, tokens)
    assert replay.replayed_calls == 0
    with torch.no_grad():
        head.weight.copy_(saved)
        body.weight[0, 0] = 0
    assert replay.changing(["body.weight"]) == calibration.mean_loss(loss, tokens)
    assert replay.replayed_calls == 1  # the embedding


def test_a_tensor_used_outside_any_module_call_replays_nothing() -> None:
    layer = nn.Linear(3, 3)
    scale = nn.Parameter(torch.ones(3))
    owner = nn.Module()
    owner.layer, owner.scale = layer, scale
    batches = [torch.randn(4, 3)]

    def loss(batch: Tensor, idx: int) -> Tensor:
        return (layer(batch) * owner.scale).sum()  # `scale` is used in the loss, not in a module's forward

    replay = LayerReplay(owner, loss, batches, {"scale": scale})
    replay.record()
    with torch.no_grad():
        scale[0] = 0
    assert replay.changing(["scale"]) == calibration.mean_loss(loss, batches)
    assert replay.replayed_calls == 0


def test_a_module_called_twice_replays_only_the_calls_before_the_ablated_one() -> None:
    torch.manual_seed(0)
    shared, last = nn.Linear(4, 4), nn.Linear(4, 1)
    net = nn.ModuleDict({"shared": shared, "last": last})
    batches = [torch.randn(5, 4)]

    def loss(batch: Tensor, idx: int) -> Tensor:
        return last(torch.relu(shared(torch.relu(shared(batch))))).sum()

    replay = LayerReplay(net, loss, batches, {"shared.weight": shared.weight, "last.weight": last.weight})
    replay.record()
    with torch.no_grad():
        last.weight[0, 0] = 0
    assert replay.changing(["last.weight"]) == calibration.mean_loss(loss, batches)
    assert replay.replayed_calls == 2  # both calls of `shared`
    with torch.no_grad():
        shared.weight[1, 1] = 0
    assert replay.changing(["shared.weight"]) == calibration.mean_loss(loss, batches)
    assert replay.replayed_calls == 2  # the first call of `shared` already uses the ablated tensor


def test_other_forward_hooks_still_see_and_change_the_raw_output() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    net[0].register_forward_hook(lambda m, args, out: out * 2)  # changes the output it is given
    batches = [torch.randn(4, 3)]
    loss = lambda batch, idx: net(batch).sum()  # noqa: E731
    replay = LayerReplay(net, loss, batches, {"1.weight": net.get_parameter("1.weight")})
    replay.record()
    with torch.no_grad():
        net.get_parameter("1.weight")[0, 0] = 0
    assert replay.changing(["1.weight"]) == calibration.mean_loss(loss, batches)
    assert replay.replayed_calls == 1


def test_the_byte_limit_keeps_the_first_outputs_and_computes_the_rest() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    batches = [torch.randn(4, 8)]
    loss = lambda batch, idx: net(batch).sum()  # noqa: E731
    one_output = 4 * 8 * 4
    replay = LayerReplay(net, loss, batches, {"4.weight": net.get_parameter("4.weight")}, max_bytes=2 * one_output)
    replay.record()
    with torch.no_grad():
        net.get_parameter("4.weight")[0, 0] = 0
    assert replay.changing(["4.weight"]) == calibration.mean_loss(loss, batches)
    assert replay.replayed_calls == 2
    nothing = LayerReplay(net, loss, batches, {"4.weight": net.get_parameter("4.weight")}, max_bytes=0)
    nothing.record()
    assert nothing.changing(["4.weight"]) == calibration.mean_loss(loss, batches)
    assert nothing.replayed_calls == 0


def test_forwards_are_restored_and_changing_needs_a_record() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    batches = [torch.randn(3, 2)]
    replay = LayerReplay(net, lambda b, i: net(b).sum(), batches, {"1.weight": net.get_parameter("1.weight")})
    with pytest.raises(RuntimeError, match=r"record\(\) first"):
        replay.changing(["1.weight"])
    replay.record()
    replay.changing(["1.weight"])
    assert all("forward" not in m.__dict__ for m in net.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    replay.clear()
    with pytest.raises(RuntimeError, match=r"record\(\) first"):
        replay.changing(["1.weight"])


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_third_party_transformers_replay_bit_for_bit(family: str) -> None:
    transformers = pytest.importorskip("transformers", reason="needs transformers (the dev extra)")
    torch.manual_seed(0)
    if family == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    elif family == "llama":
        config = transformers.LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=50
        )
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=50
        )
        model = transformers.BertForSequenceClassification(config)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 50, (4, 12), generator=gen) for _ in range(2)]

    def loss(batch: Tensor, idx: int) -> Tensor:
        labels = batch[:, 0] % 2 if family == "bert" else batch
        return model(input_ids=batch, labels=labels).loss

    params = {n: p for n, p in model.named_parameters() if p.dim() == 2}
    replay = LayerReplay(model, loss, batches, params)
    with torch.no_grad():
        assert replay.record() == calibration.mean_loss(loss, batches)
        for name, p in params.items():
            saved = p.data.clone()
            p.data.view(-1)[::5] = 0
            assert replay.changing([name]) == calibration.mean_loss(loss, batches), name
            p.data.copy_(saved)
    assert replay.replayed_calls > 0


def zero_every(p: Tensor, step: int) -> tuple[Tensor, Tensor]:
    """Zero every ``step``-th entry of ``p`` in place; return the ``zeroed`` entry for it (positions, old values)."""
    flat = p.data.view(-1)
    positions = torch.arange(0, flat.numel(), step)
    values = flat[positions].clone()
    flat[positions] = 0
    return positions, values


def test_a_wide_linear_layer_corrects_its_recorded_output_instead_of_running() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, DELTA_MIN_INPUTS), nn.ReLU(), nn.Linear(DELTA_MIN_INPUTS, 64), nn.Linear(64, 3))
    batches = [(torch.randn(32, 16), torch.randint(0, 3, (32,))) for _ in range(2)]
    params = {name: net.get_parameter(name) for name in ("0.weight", "2.weight", "3.weight")}
    replay = LayerReplay(net, lambda b, i: nn.functional.cross_entropy(net(b[0]), b[1]), batches, params)
    full = lambda: calibration.mean_loss(lambda b, i: nn.functional.cross_entropy(net(b[0]), b[1]), batches)  # noqa: E731
    with torch.no_grad():
        replay.record()
        for name, corrects in (("0.weight", False), ("2.weight", True), ("3.weight", False)):
            saved = params[name].data.clone()
            zeroed = {name: zero_every(params[name], 7)}
            before, expected = replay.corrected_calls, full()
            assert replay.changing([name], zeroed) == pytest.approx(expected, rel=1e-6), name
            assert replay.corrected_calls - before == (len(batches) if corrects else 0), name
            # Without the zeroed entries it is bit for bit the full pass, as before.
            assert replay.changing([name]) == expected, name
            params[name].data.copy_(saved)
    # The 512-input layer did not run: only the last one did, after the replayed first two calls.
    assert replay.replayed_calls > 0


def test_an_input_changed_in_place_after_the_layer_is_not_used_to_correct_it() -> None:
    torch.manual_seed(0)
    wide = nn.Linear(DELTA_MIN_INPUTS, 4)
    stem = nn.Linear(3, DELTA_MIN_INPUTS)
    net = nn.ModuleDict({"stem": stem, "wide": wide})

    def loss(batch: Tensor, idx: int) -> Tensor:
        x = stem(batch)
        y = wide(x)
        x.relu_()  # the input `wide` saw is gone after this
        return (y.sum(-1) + x.sum(-1)).pow(2).mean()

    batches = [torch.randn(6, 3)]
    replay = LayerReplay(net, loss, batches, {"wide.weight": wide.weight})
    with torch.no_grad():
        replay.record()
        zeroed = {"wide.weight": zero_every(wide.weight, 3)}
        assert replay.changing(["wide.weight"], zeroed) == calibration.mean_loss(loss, batches)
    assert replay.corrected_calls == 0


def replay_zeroing(
    net: nn.Module,
    loss: Any,
    batches: list[Any],
    params: Mapping[str, Tensor],
    name: str,
    step: int,
    also: Any = None,
) -> LayerReplay:
    """Record, zero every ``step``-th entry of ``params[name]`` (then run ``also``), and check the replayed loss.

    The loss of :meth:`LayerReplay.changing` with the zeroed entries (and every name of
    ``params`` changed) must equal the full pass's bit for bit: each caller's layer runs.
    """
    replay = LayerReplay(net, loss, batches, params)
    with torch.no_grad():
        replay.record()
        zeroed = {name: zero_every(params[name], step)}
        if also is not None:
            also()
        assert replay.changing(list(params), zeroed) == calibration.mean_loss(loss, batches)
    return replay


def test_a_linear_subclass_with_its_own_forward_runs() -> None:
    class Scaled(nn.Linear):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(x) * 2

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, DELTA_MIN_INPUTS), Scaled(DELTA_MIN_INPUTS, 2))
    batches = [torch.randn(5, 3)]
    loss = lambda b, i: net(b).pow(2).sum()  # noqa: E731
    replay = replay_zeroing(net, loss, batches, {"1.weight": net.get_parameter("1.weight")}, "1.weight", 5)
    assert replay.corrected_calls == 0
    assert replay.replayed_calls == 1


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_third_party_wide_layers_correct_within_rounding(family: str) -> None:
    transformers = pytest.importorskip("transformers", reason="needs transformers (the dev extra)")
    torch.manual_seed(0)
    width = DELTA_MIN_INPUTS
    if family == "gpt2":  # Conv1D projections, weight stored [in, out]
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=width, n_head=4, vocab_size=50))
    else:
        config = transformers.LlamaConfig(
            hidden_size=width, intermediate_size=width, num_hidden_layers=1, num_attention_heads=4, vocab_size=50
        )
        model = transformers.LlamaForCausalLM(config)
    model.eval()
    batches = [torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))]

    def loss(batch: Tensor, idx: int) -> Tensor:
        return model(input_ids=batch, labels=batch).loss

    embeddings = ("wte", "wpe", "embed")
    params = {n: p for n, p in model.named_parameters() if p.dim() == 2 and not any(e in n for e in embeddings)}
    replay = LayerReplay(model, loss, batches, params)
    with torch.no_grad():
        replay.record()
        for name, p in params.items():
            saved = p.data.clone()
            zeroed = {name: zero_every(p, 3)}
            assert replay.changing([name], zeroed) == pytest.approx(calibration.mean_loss(loss, batches), rel=1e-6)
            p.data.copy_(saved)
    assert replay.corrected_calls == len(params), sorted(params)  # every projection, once per ablation


def wide_net(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, DELTA_MIN_INPUTS), nn.ReLU(), nn.Linear(DELTA_MIN_INPUTS, 8)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_layers_run_instead_of_being_corrected(dtype: torch.dtype) -> None:
    net = wide_net(dtype)
    batches = [torch.randn(4, 16, dtype=dtype)]
    loss = lambda b, i: net(b).float().pow(2).mean()  # noqa: E731
    replay = replay_zeroing(net, loss, batches, {"2.weight": net.get_parameter("2.weight")}, "2.weight", 3)
    assert replay.corrected_calls == 0
    assert replay.replayed_calls == 2


def test_a_forward_replaced_on_the_instance_runs_instead_of_being_corrected() -> None:
    net = wide_net()
    plain = net[2].forward
    # As accelerate's hooks wrap a layer: the input its forward hook records is not the one F.linear sees.
    net[2].forward = lambda x: plain(x * 2.0)
    loss = lambda b, i: net(b).pow(2).mean()  # noqa: E731
    replay = replay_zeroing(net, loss, [torch.randn(4, 16)], {"2.weight": net.get_parameter("2.weight")}, "2.weight", 3)
    assert replay.corrected_calls == 0


def test_a_change_beyond_the_zeroed_entries_runs_the_layer() -> None:
    net = wide_net()
    loss = lambda b, i: net(b).pow(2).mean()  # noqa: E731
    params = {"2.weight": net.get_parameter("2.weight"), "2.bias": net.get_parameter("2.bias")}
    # The bias changes too: the zeroed entries are not the whole difference.
    batches = [torch.randn(4, 16)]
    replay = replay_zeroing(net, loss, batches, params, "2.weight", 3, also=lambda: params["2.bias"].add_(1.0))
    assert replay.corrected_calls == 0


def test_a_tensor_read_before_its_owners_call_replays_nothing_before_that_read() -> None:
    torch.manual_seed(0)
    body, head = nn.Linear(6, 6), nn.Linear(6, 10, bias=False)
    net = nn.ModuleDict({"body": body, "head": head})
    tokens = [torch.randint(0, 10, (4, 5), generator=torch.Generator().manual_seed(1))]

    def loss(batch: Tensor, idx: int) -> Tensor:
        # The head's weight embeds the tokens by hand before the head runs: a tie no module shows.
        hidden = nn.functional.embedding(batch, head.weight)
        return head(torch.tanh(body(hidden))).logsumexp(-1).mean()

    replay = LayerReplay(net, loss, tokens, {"head.weight": head.weight, "body.weight": body.weight})
    replay.record()
    with torch.no_grad():
        head.weight[3] = 0
    assert replay.changing(["head.weight"]) == calibration.mean_loss(loss, tokens)
    assert replay.replayed_calls == 0  # `body` ran on the changed embedding, not its recorded output
    with torch.no_grad():
        head.weight[3] = 1.0
        body.weight[0, 0] = 0
    assert replay.changing(["body.weight"]) == calibration.mean_loss(loss, tokens)
    assert replay.replayed_calls == 0  # nothing runs before `body` but the (unreplayed) embedding
