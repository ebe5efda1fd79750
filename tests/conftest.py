"""Shared fixtures. Tests run on small arrays so that the fast suite stays within minutes.

Skips: only what is truly optional may skip (ESRF PyNX, CUDA, and Chromium outside CI); a
missing core or test-extra dependency fails. With ``BCDI_GAPFILL_REQUIRE_PYNX=1`` (set by
``make test-pynx``, which CI runs) a test skipped for want of PyNX fails instead, so the
PyNX run cannot pass by skipping.
"""
import os

import numpy as np
import pytest
import torch
from hypothesis import settings

# Every Hypothesis test draws the same examples on every run and machine (a CI failure is
# reproducible), keeps no example database between runs, and is never timed.
settings.register_profile("bcdi_gapfill", derandomize=True, database=None, deadline=None)
settings.load_profile("bcdi_gapfill")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def small_pattern():
    from bcdi_gapfill.core.simulate import simulate_pattern
    return simulate_pattern(64, 11, peak_counts=1e6)


@pytest.fixture(scope="session")
def tiny_bank():
    """A PortionBank cut from two small simulated patterns."""
    from bcdi_gapfill.nn.dataset import PortionBank, portions_from_array
    from bcdi_gapfill.core.simulate import simulate_pattern
    banks = []
    for seed in (1, 2):
        p = simulate_pattern(64, seed, peak_counts=1e6)
        banks.append(portions_from_array(p.counts, p.expected, 8, np.random.default_rng(seed), 3.0))
    return PortionBank.concatenate(banks)


def _pynx_required() -> bool:
    return os.environ.get("BCDI_GAPFILL_REQUIRE_PYNX") == "1"


def _skipped_for_pynx(report) -> bool:
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return False
    return "pynx" in str(report.longrepr[2]).lower()


def _fail_a_pynx_skip(report) -> None:
    if _pynx_required() and _skipped_for_pynx(report):
        report.outcome = "failed"
        report.longrepr = f"PyNX is required in this run (BCDI_GAPFILL_REQUIRE_PYNX=1): {report.longrepr[2]}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):   # a skip inside a test
    outcome = yield
    _fail_a_pynx_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):   # a module-level skip (test_pynx_parity.py)
    outcome = yield
    _fail_a_pynx_skip(outcome.get_result())
