"""Tests for :mod:`lightning_autoprune.structured.compact` on real models traced by Torch-Pruning."""

from __future__ import annotations

import copy
import sys
import warnings

import pytest
import torch
from torch import Tensor, nn

from lightning_autoprune.structured import CompactionError, compact, count_flops, count_parameters

pytest.importorskip("torch_pruning")


@torch.no_grad()
def kill_unit_(layer: nn.Linear | nn.Conv1d, unit: int, norm: nn.BatchNorm1d | None = None) -> None:
    """Prune one output unit the way the package does: exact zeros, in place."""
    layer.weight[unit] = 0.0
    if layer.bias is not None:
        layer.bias[unit] = 0.0
    if norm is not None:
        norm.weight[unit] = 0.0
        norm.bias[unit] = 0.0


def assert_same_outputs(small: nn.Module, model: nn.Module, *inputs: Tensor) -> None:
    small.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(*inputs), model(*inputs), rtol=1e-5, atol=1e-6)


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def warmed_up(model: nn.Module, x: Tensor) -> nn.Module:
    """A few train-mode passes, so BatchNorm running statistics are not the defaults."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x + 0.1 * torch.randn_like(x))
    return model.eval()


class MLP(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 32)
        self.fc2 = nn.Linear(32, 24)
        self.fc3 = nn.Linear(24, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def mlp() -> MLP:
    return MLP()


class ConvNet(nn.Module):
    """Conv1d-BN-ReLU-Conv1d-BN-ReLU-Flatten-Linear, on sequences of length 20."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(8)
        self.conv2 = nn.Conv1d(8, 12, 3, padding=1)
        self.bn2 = nn.BatchNorm1d(12)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(12 * 20, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.flatten(x))


class ResidualBlock(nn.Module):
    """stem -> (identity + conv-bn-relu-conv-bn) -> relu -> pool -> linear."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv1d(3, channels, 3, padding=1)
        self.bn0 = nn.BatchNorm1d(channels)
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm1d(channels)
        self.head = nn.Linear(channels, 4)

    def forward(self, x: Tensor) -> Tensor:
        identity = torch.relu(self.bn0(self.stem(x)))
        branch = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(identity)))))
        return self.head(torch.relu(identity + branch).mean(dim=-1))


class RecurrentModel(nn.Module):
    """Linear encoder -> LSTM -> MLP head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(6, 10)
        self.rnn = nn.LSTM(10, 12, batch_first=True)
        self.fc = nn.Linear(12, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        seq, _ = self.rnn(torch.relu(self.encoder(x)))
        return self.out(torch.relu(self.fc(seq[:, -1])))


class TwoTower(nn.Module):
    """Two Linear branches concatenated before the head."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(5, 6)
        self.right = nn.Linear(5, 7)
        self.head = nn.Linear(13, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], 1))


def test_mlp_dead_neurons_removed() -> None:
    torch.manual_seed(0)
    model = mlp().eval()
    for unit in (1, 4, 7, 20, 31):
        kill_unit_(model.fc1, unit)
    for unit in (0, 23):
        kill_unit_(model.fc2, unit)
    kill_unit_(model.fc3, 2)  # a classifier output: never removed

    small = compact(model, torch.randn(16, 12))

    assert isinstance(small, MLP)
    assert (small.fc1.out_features, small.fc2.in_features) == (27, 27)
    assert (small.fc2.out_features, small.fc3.in_features) == (22, 22)
    assert small.fc3.out_features == 5
    assert count_parameters(small) == count_parameters(model) - (5 * 13 + 5 * 24 + 2 * 28 + 2 * 5)
    assert_same_outputs(small, model, torch.randn(64, 12))


class Conv1DBlock(nn.Module):
    """GPT-2's MLP in a residual stream: c_fc (transformers' Conv1D) -> GELU -> c_proj (Conv1D)."""

    def __init__(self) -> None:
        super().__init__()
        conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D  # Conv1D(nf, nx): weight [nx, nf]
        self.embed, self.c_fc, self.c_proj, self.head = nn.Linear(3, 4), conv1d(8, 4), conv1d(4, 8), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        return self.head(h + self.c_proj(nn.functional.gelu(self.c_fc(h))))


def test_conv1d_dead_units_are_removed_along_its_transposed_weight() -> None:
    torch.manual_seed(0)
    model = Conv1DBlock().eval()
    with torch.no_grad():
        model.c_fc.bias.normal_()  # transformers initialises it at zero
        for unit in (1, 5):
            model.c_fc.weight[:, unit] = 0  # a Conv1D's output unit is a column of its weight
            model.c_fc.bias[unit] = 0

    small = compact(model, torch.randn(6, 5, 3))

    assert isinstance(small, Conv1DBlock)
    assert tuple(small.c_fc.weight.shape) == (4, 6)
    assert small.c_fc.nf == 6
    assert tuple(small.c_fc.bias.shape) == (6,)
    assert tuple(small.c_proj.weight.shape) == (6, 4)  # its consumer loses the rows that read them
    assert count_parameters(small) == count_parameters(model) - 2 * (4 + 1 + 4)
    assert_same_outputs(small, model, torch.randn(16, 5, 3))


def test_conv1d_flops_are_counted_as_the_linear_layer_they_are() -> None:
    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D  # Conv1D(nf, nx): weight [nx, nf]
    x = torch.randn(2, 5, 4)
    assert count_flops(conv1d(3, 4), x) == count_flops(nn.Linear(4, 3), x) > 0

    class LinearBlock(Conv1DBlock):  # the same block with nn.Linear projections of ``hidden`` units
        def __init__(self, hidden: int) -> None:
            super().__init__()
            self.c_fc, self.c_proj = nn.Linear(4, hidden), nn.Linear(hidden, 4)

    block, tokens = Conv1DBlock().eval(), torch.randn(2, 5, 3)
    with torch.no_grad():
        block.c_fc.weight[:, :2] = 0  # two of c_fc's 8 units
        block.c_fc.bias[:2] = 0
    assert count_flops(block, tokens) == count_flops(LinearBlock(8), tokens)
    smaller = count_flops(compact(block, tokens), tokens)
    assert smaller == count_flops(LinearBlock(6), tokens) < count_flops(block, tokens)


def test_mlp_without_dead_units_is_an_equal_copy() -> None:
    torch.manual_seed(1)
    model = mlp().eval()
    small = compact(model, torch.randn(4, 12))
    assert small is not model
    assert count_parameters(small) == count_parameters(model)
    assert_same_outputs(small, model, torch.randn(8, 12))


def test_cnn_with_batchnorm_and_flatten() -> None:
    torch.manual_seed(2)
    model = ConvNet()
    x = torch.randn(32, 1, 20)
    warmed_up(model, x)
    for unit in (0, 5):
        kill_unit_(model.conv1, unit, model.bn1)
    for unit in (3, 4, 11):
        kill_unit_(model.conv2, unit, model.bn2)
    kill_unit_(model.conv1, 6)  # conv weights zero but BatchNorm beta is not: the channel is alive
    before = count_parameters(model)

    small = compact(model, x[:8])

    assert isinstance(small, ConvNet)
    assert (small.conv1.out_channels, small.bn1.num_features, small.conv2.in_channels) == (6, 6, 6)
    assert (small.conv2.out_channels, small.bn2.num_features) == (9, 9)
    assert small.fc.in_features == 9 * 20  # Torch-Pruning re-indexed the flatten
    assert small.bn2.running_mean is not None
    assert small.bn2.running_mean.shape == (9,)
    removed = 2 * (5 + 1 + 2) + 2 * 12 * 3 + 3 * (6 * 3 + 1 + 2) + 3 * 20 * 10
    assert count_parameters(small) == before - removed
    assert count_flops(small, x[:1]) < count_flops(model, x[:1])
    assert_same_outputs(small, model, torch.randn(16, 1, 20))


def test_residual_unit_removed_only_when_dead_in_both_branches() -> None:
    torch.manual_seed(3)
    model = ResidualBlock()
    x = torch.randn(16, 3, 10)
    warmed_up(model, x)
    kill_unit_(model.stem, 2, model.bn0)  # dead on both sides of the addition: removed
    kill_unit_(model.conv2, 2, model.bn2)
    kill_unit_(model.stem, 5, model.bn0)  # dead on the identity side only: must stay
    kill_unit_(model.conv1, 6, model.bn1)  # inside the branch, not coupled to the addition

    small = compact(model, x[:4])

    assert isinstance(small, ResidualBlock)
    assert (small.stem.out_channels, small.conv2.out_channels, small.head.in_features) == (7, 7, 7)
    assert (small.conv1.in_channels, small.conv1.out_channels, small.conv2.in_channels) == (7, 7, 7)
    # Channel 5 survived in every coupled layer: identity-side weights still zero, branch alive.
    assert torch.all(small.stem.weight[4] == 0)
    assert not torch.all(small.conv2.weight[4] == 0)
    assert count_parameters(small) < count_parameters(model)
    assert_same_outputs(small, model, torch.randn(8, 3, 10))


def test_concatenation_is_reindexed() -> None:
    torch.manual_seed(4)
    model = TwoTower().eval()
    kill_unit_(model.left, 1)
    kill_unit_(model.right, 0)
    kill_unit_(model.right, 6)

    small = compact(model, torch.randn(8, 5))

    assert isinstance(small, TwoTower)
    assert (small.left.out_features, small.right.out_features, small.head.in_features) == (5, 5, 10)
    assert_same_outputs(small, model, torch.randn(8, 5))


def test_lstm_is_left_alone_with_a_warning() -> None:
    torch.manual_seed(5)
    model = RecurrentModel().eval()
    kill_unit_(model.encoder, 3)  # feeds the LSTM: kept
    for unit in (0, 1, 9):
        kill_unit_(model.fc, unit)  # after the LSTM: removed

    with pytest.warns(UserWarning, match=r"'rnn' \(LSTM\)") as record:
        small = compact(model, torch.randn(4, 7, 6))

    assert isinstance(small, RecurrentModel)
    assert any("'encoder': 1 dead unit(s)" in str(w.message) for w in record)
    assert small.encoder.out_features == 10
    assert (small.rnn.input_size, small.rnn.hidden_size) == (10, 12)
    assert (small.fc.out_features, small.out.in_features) == (13, 13)
    assert count_parameters(small) == count_parameters(model) - (3 * 13 + 3 * 3)
    assert_same_outputs(small, model, torch.randn(4, 7, 6))


def test_unit_that_is_nonzero_at_its_consumer_is_kept() -> None:
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.b = nn.Linear(6, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(torch.sigmoid(self.a(x)))  # sigmoid(0) = 0.5: not removable

    torch.manual_seed(6)
    model = Gated().eval()
    kill_unit_(model.a, 2)
    with pytest.warns(UserWarning, match="non-zero values"):
        small = compact(model, torch.randn(5, 4))
    assert isinstance(small, Gated)
    assert small.a.out_features == 6
    assert_same_outputs(small, model, torch.randn(5, 4))


def test_ignored_layers_keep_their_units() -> None:
    torch.manual_seed(7)
    model = mlp().eval()
    kill_unit_(model.fc1, 0)
    kill_unit_(model.fc2, 0)
    small = compact(model, torch.randn(4, 12), ignored_layers=[model.fc1])
    assert isinstance(small, MLP)
    assert (small.fc1.out_features, small.fc2.out_features) == (32, 23)


def test_input_model_is_not_modified() -> None:
    torch.manual_seed(8)
    model = ResidualBlock()
    x = torch.randn(8, 3, 10)
    warmed_up(model, x)
    kill_unit_(model.stem, 1, model.bn0)
    kill_unit_(model.conv2, 1, model.bn2)
    kill_unit_(model.conv1, 0, model.bn1)
    model.train()
    model.head.weight.requires_grad_(False)
    calls: list[int] = []
    model.stem.register_forward_pre_hook(lambda module, args: calls.append(1))
    before = snapshot(model)
    structure = repr(model)
    reference = copy.deepcopy(model).eval()(x)

    small = compact(model, x)

    assert isinstance(small, ResidualBlock)
    assert repr(model) == structure
    assert model.training
    assert model.bn0.training
    assert not model.head.weight.requires_grad
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(model.stem._forward_pre_hooks) == 1
    # The copy keeps the training / requires_grad flags, drops the hooks, and is smaller.
    assert small.training
    assert small.bn0.training
    assert not small.head.weight.requires_grad
    assert small.stem.weight.requires_grad
    assert not small.stem._forward_pre_hooks
    assert (small.stem.out_channels, small.conv1.out_channels) == (7, 7)
    calls.clear()
    assert torch.allclose(model.eval()(x), reference)
    assert calls == [1]


def test_mistraced_model_raises_compaction_error() -> None:
    class HardCodedView(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(1, 4, 3, padding=1)
            self.fc = nn.Linear(40, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(torch.relu(self.conv(x)).reshape(-1, 40))  # hard-coded width

    torch.manual_seed(9)
    model = HardCodedView().eval()
    kill_unit_(model.conv, 1)
    with pytest.raises(CompactionError, match=r"fails on `example_inputs`.*'conv' 1 of 4") as caught:
        compact(model, torch.randn(3, 1, 10))
    assert caught.value.layers == ("conv",), "the error names the layers to pass as ignored_layers"
    # Keeping the offending layer makes it work.
    small = compact(model, torch.randn(3, 1, 10), ignored_layers=[model.conv])
    assert isinstance(small, HardCodedView)
    assert small.conv.out_channels == 4


def test_multiple_inputs_and_tuple_outputs() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 8)
            self.b = nn.Linear(8, 2)

        def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            logits = self.b(torch.relu(self.a(x * y)))
            return logits, 2 * logits

    torch.manual_seed(10)
    model = TwoInputs().eval()
    kill_unit_(model.a, 4)
    x, y = torch.randn(5, 3), torch.randn(5, 3)
    small = compact(model, (x, y))
    assert isinstance(small, TwoInputs)
    assert small.a.out_features == 7
    with torch.no_grad():
        for got, want in zip(small(x, y), model(x, y), strict=True):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"example_inputs": [1.0]}, TypeError, r"`example_inputs\[0\]` must be a tensor"),
        ({"example_inputs": ()}, TypeError, "got an empty tuple"),
        ({"example_inputs": torch.zeros(0, 12)}, ValueError, "is empty"),
        ({"example_inputs": torch.zeros(2, 12), "rtol": -1.0}, ValueError, "`rtol`"),
        ({"example_inputs": torch.zeros(2, 12), "atol": "x"}, TypeError, "`atol`"),
        (
            {"example_inputs": torch.zeros(2, 12), "ignored_layers": [nn.Linear(2, 2)]},
            ValueError,
            "not a submodule",
        ),
    ],
)
def test_argument_errors(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        compact(mlp(), **kwargs)  # type: ignore[arg-type]


def test_model_argument_must_be_a_module() -> None:
    with pytest.raises(TypeError, match=r"`model` must be a torch\.nn\.Module"):
        compact("not a model", torch.zeros(1))  # type: ignore[arg-type]


def test_no_warning_for_plain_models() -> None:
    model = mlp().eval()
    kill_unit_(model.fc1, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compact(model, torch.randn(3, 12))


def test_output_mismatch_raises_compaction_error() -> None:
    class ChannelMean(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.b = nn.Linear(6, 2)

        def forward(self, x: Tensor) -> Tensor:
            hidden = torch.relu(self.a(x))
            # A mean over units: a zero unit stays zero, but removing it changes the mean.
            return self.b(hidden / (1.0 + hidden.mean(dim=1, keepdim=True)))

    torch.manual_seed(11)
    model = ChannelMean().eval()
    kill_unit_(model.a, 3)
    with pytest.raises(CompactionError, match=r"Output tensor 0 .* differs .* max abs difference .*'a' 1 of 6"):
        compact(model, torch.randn(8, 4))


def test_missing_torch_pruning_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # makes `import torch_pruning` fail
    with pytest.raises(ImportError, match=r"pip install lightning_autoprune\[structured\]"):
        compact(mlp(), torch.zeros(1, 12))
    with pytest.raises(ImportError, match=r"pip install lightning_autoprune\[structured\]"):
        count_flops(mlp(), torch.zeros(1, 12))


class SelfAttention(nn.Module):
    """Two heads of width 4: removing one channel of a head would break the reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(8, 8)
        self.key = nn.Linear(8, 8)
        self.value = nn.Linear(8, 8)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, 2, 4).transpose(1, 2) for p in (self.query, self.key, self.value))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, 8)


class AttentionThenFFN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = SelfAttention()
        self.fc1 = nn.Linear(8, 6)
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(self.attention(x))))


def test_attention_projections_are_kept_whole_with_a_warning() -> None:
    torch.manual_seed(0)
    model = AttentionThenFFN().eval()
    with torch.no_grad():
        for layer in (model.attention.query, model.attention.key, model.attention.value):
            kill_unit_(layer, 1)
    kill_unit_(model.fc1, 2)
    x = torch.randn(3, 5, 8)
    with pytest.warns(UserWarning, match=r"'attention' \(SelfAttention\)"):
        small = compact(model, x)
    assert isinstance(small, AttentionThenFFN)
    assert small.attention.query.out_features == 8
    assert small.fc1.out_features == 5
    torch.testing.assert_close(small(x), model(x))
