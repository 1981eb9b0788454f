"""Tests for :mod:`lightning_autoprune.export`: sparse checkpoint files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from lightning_autoprune.core.masks import apply_mask_
from lightning_autoprune.export import (
    FORMAT_NAME,
    FORMAT_VERSION,
    SparseExportStats,
    load_sparse,
    save_sparse,
)


def pruned_mlp(sparsity: float, seed: int = 0) -> nn.Sequential:
    """MLP 64-256-256-10 whose weight matrices are pruned at random to ``sparsity``."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    for layer in model.modules():
        if isinstance(layer, nn.Linear):
            apply_mask_(layer.weight.data, torch.rand_like(layer.weight) >= sparsity)
    return model


def assert_bit_identical(got: dict[str, Tensor], want: dict[str, Tensor]) -> None:
    assert list(got) == list(want)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype, key
        assert got[key].shape == tensor.shape, key
        a, b = got[key], tensor
        if a.is_complex():
            a, b = torch.view_as_real(a), torch.view_as_real(b)
        if a.is_floating_point():  # compare bits: -0.0 and NaN payloads included
            bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
            a, b = a.contiguous().view(bits), b.contiguous().view(bits)
        assert torch.equal(a, b), key


def test_round_trip_at_95_percent_sparsity(tmp_path: Path) -> None:
    model = pruned_mlp(0.95)
    state = model.state_dict()
    dense_path, sparse_path = tmp_path / "dense.pt", tmp_path / "sparse.pt"
    torch.save(state, dense_path)

    stats = save_sparse(model, sparse_path)

    assert isinstance(stats, SparseExportStats)
    assert stats.path == str(sparse_path)
    assert stats.file_bytes == sparse_path.stat().st_size
    assert stats.dense_bytes == sum(t.numel() * t.element_size() for t in state.values())
    assert stats.ratio == pytest.approx(stats.file_bytes / stats.dense_bytes)
    ratio = sparse_path.stat().st_size / dense_path.stat().st_size
    print(f"sparse export at 95% sparsity: {ratio:.4f} of torch.save(state_dict)")
    assert ratio <= 0.12

    loaded = load_sparse(sparse_path)
    assert_bit_identical(loaded, state)
    fresh = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    fresh.load_state_dict(loaded)
    x = torch.randn(4, 64)
    assert torch.equal(fresh(x), model(x))


def test_dense_tensors_stay_dense(tmp_path: Path) -> None:
    model = pruned_mlp(0.95)
    path = tmp_path / "model.pt"
    stats = save_sparse(model, path, min_sparsity=0.3)

    assert stats.sparse_keys == ("0.weight", "2.weight", "4.weight")
    assert stats.dense_keys == ("0.bias", "2.bias", "4.bias")
    raw = torch.load(path, weights_only=True)  # plain containers only: loadable without trust
    assert raw["format"] == FORMAT_NAME
    assert raw["version"] == FORMAT_VERSION
    for key in stats.dense_keys:
        assert raw["tensors"][key]["kind"] == "dense"
        assert torch.equal(raw["tensors"][key]["tensor"], model.state_dict()[key])
    for key in stats.sparse_keys:
        entry = raw["tensors"][key]
        assert entry["kind"] == "sparse"
        assert entry["mask"].dtype == torch.uint8
        assert entry["values"].numel() == int((model.state_dict()[key] != 0).sum())


def test_min_sparsity_threshold(tmp_path: Path) -> None:
    state = {"half": torch.tensor([0.0, 1.0, 0.0, 2.0]), "quarter": torch.tensor([0.0, 1, 2, 3])}
    assert save_sparse(state, tmp_path / "a.pt", min_sparsity=0.5).sparse_keys == ("half",)
    assert save_sparse(state, tmp_path / "b.pt", min_sparsity=0.25).sparse_keys == (
        "half",
        "quarter",
    )
    assert save_sparse(state, tmp_path / "c.pt", min_sparsity=1.0).sparse_keys == ()
    for name in ("a.pt", "b.pt", "c.pt"):
        assert_bit_identical(load_sparse(tmp_path / name), state)


def test_awkward_tensors_round_trip_bit_identically(tmp_path: Path) -> None:
    tied = torch.randn(4, 4)
    base = torch.zeros(50, 50)
    base[3, :5] = torch.tensor([1.0, 0.0, -0.0, 2.0, 0.0])
    state = {
        "signed_zeros": torch.tensor([0.0, -0.0, 0.0, 5.0, -0.0, 0.0], dtype=torch.float16),
        "nan_inf": torch.tensor([0.0, float("nan"), 0.0, float("-inf"), 0.0], dtype=torch.float64),
        "bf16": torch.tensor([[0.0, 1.5], [0.0, 0.0]], dtype=torch.bfloat16),
        "ints": torch.tensor([0, 0, 7, 0, -3], dtype=torch.int32),
        "bools": torch.tensor([True, False, False, False]),
        "complex": torch.tensor([0j, complex(-0.0, 0.0), 1 + 2j, 0j]),
        "scalar": torch.tensor(0.0),
        "empty": torch.zeros(0, 3),
        "row_view": base[3],
        "tied_a": tied,
        "tied_b": tied,
        "non_contiguous": torch.tensor([[0.0, 1.0], [0.0, 0.0], [3.0, 0.0]]).t(),
    }
    path = tmp_path / "awkward.pt"
    stats = save_sparse(state, path)
    loaded = load_sparse(path)

    assert_bit_identical(loaded, state)
    assert loaded["tied_a"] is loaded["tied_b"]
    assert "empty" in stats.dense_keys
    assert "tied_a" in stats.dense_keys
    assert "tied_b" not in stats.dense_keys + stats.sparse_keys  # stored once
    # The 50-element row is stored alone, not with its 2500-element base storage.
    assert path.stat().st_size < 2500 * 4


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pt"
    save_sparse(pruned_mlp(0.9), path)
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]  # no temporary file left behind
    original = path.read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_sparse(pruned_mlp(0.5, seed=1), path)
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]
    assert path.read_bytes() == original  # the old file is intact


def test_file_permissions_follow_umask(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_sparse({"w": torch.zeros(3)}, path)
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_plain_state_dict_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "dense.pt"
    torch.save(pruned_mlp(0.5).state_dict(), path)
    with pytest.raises(
        ValueError,
        match=r"dense\.pt.*not a lightning_autoprune sparse export.*"
        r"plain state dict of 6 tensors",
    ):
        load_sparse(path)


@pytest.mark.parametrize(
    ("content", "found"),
    [
        ([1, 2, 3], "found a list"),
        ({"format": "something-else", "version": 1}, "format 'something-else'"),
        ({"weights": 3}, r"keys \['weights'\]"),
    ],
)
def test_other_torch_files_are_rejected(tmp_path: Path, content: object, found: str) -> None:
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match=f"other\\.pt.*not a lightning_autoprune.*{found}"):
        load_sparse(path)


def test_non_torch_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.txt.*torch\.load\(weights_only=True\) cannot"):
        load_sparse(path)


def test_newer_version_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    torch.save({"format": FORMAT_NAME, "version": FORMAT_VERSION + 1, "tensors": {}}, path)
    with pytest.raises(ValueError, match=r"version 2.*up to 1"):
        load_sparse(path)


def test_corrupt_entry_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pt"
    save_sparse({"w": torch.tensor([0.0, 0.0, 1.0, 0.0])}, path)
    payload = torch.load(path, weights_only=True)
    payload["tensors"]["w"]["values"] = torch.tensor([1.0, 2.0])
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"corrupt entry 'w'.*marks 1 values, 2 stored"):
        load_sparse(path)


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_sparse(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_sparse({"w": torch.zeros(1)}, tmp_path / "no_dir" / "w.pt")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"min_sparsity": 1.5}, ValueError, r"`min_sparsity` must be a float in \[0, 1\], got 1.5"),
        ({"min_sparsity": "0.3"}, TypeError, "`min_sparsity` must be a float"),
    ],
)
def test_argument_errors(tmp_path: Path, kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        save_sparse({"w": torch.zeros(2)}, tmp_path / "w.pt", **kwargs)  # type: ignore[arg-type]


def test_state_dict_values_must_be_tensors(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"`state_dict_or_module\['step'\]` must be a tensor"):
        save_sparse({"step": 3}, tmp_path / "w.pt")  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"must be a torch\.nn\.Module or a mapping"):
        save_sparse([torch.zeros(1)], tmp_path / "w.pt")  # type: ignore[arg-type]
