from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_autoprune.core.masks import (
    apply_mask_,
    count_zeros,
    mask_sparsity,
    pack_mask,
    sparsity,
    unpack_mask,
    zero_optimizer_state_,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=1, max_size=3), st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(shape: list[int], seed: int) -> None:
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.5
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8
    assert packed.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_mask(packed, mask.shape), mask)


def test_unpack_rejects_too_few_bits() -> None:
    with pytest.raises(ValueError, match=r"holds 8 entries, but shape \(3, 3\) needs 9"):
        unpack_mask(torch.zeros(1, dtype=torch.uint8), (3, 3))


def test_apply_mask_zeroes_nan_and_inf() -> None:
    w = torch.tensor([float("nan"), float("inf"), 2.0])
    apply_mask_(w, torch.tensor([False, False, True]))
    assert torch.equal(w, torch.tensor([0.0, 0.0, 2.0]))


def test_zero_optimizer_state_clears_moments_at_pruned_entries() -> None:
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.Adam([param], lr=0.1)
    param.grad = torch.ones(4)
    optimizer.step()
    mask = torch.tensor([True, False, True, False])
    zero_optimizer_state_(optimizer, param, mask)
    state = optimizer.state[param]
    assert torch.equal(state["exp_avg"] != 0, mask)
    assert torch.equal(state["exp_avg_sq"] != 0, mask)
    assert state["step"].numel() == 1  # scalar entries are left alone


def test_sparsity_counts_exact_zeros() -> None:
    assert count_zeros([torch.tensor([0.0, -0.0, 1e-30])]) == (2, 3)
    assert sparsity(torch.zeros(0)) == 0.0
    assert mask_sparsity({}) == 0.0
