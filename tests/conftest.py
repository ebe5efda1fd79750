"""Shared fixtures. Tests run on small arrays so that the fast suite stays within minutes."""
import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def small_pattern():
    from bcdi_gapfill.simulate import simulate_pattern
    return simulate_pattern(64, 11, peak_counts=1e6)


@pytest.fixture(scope="session")
def tiny_bank():
    """A PortionBank cut from two small simulated patterns."""
    from bcdi_gapfill.dataset import PortionBank, portions_from_array
    from bcdi_gapfill.simulate import simulate_pattern
    banks = []
    for seed in (1, 2):
        p = simulate_pattern(64, seed, peak_counts=1e6)
        banks.append(portions_from_array(p.counts, p.expected, 8, np.random.default_rng(seed), 3.0))
    return PortionBank.concatenate(banks)
