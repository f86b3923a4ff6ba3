"""Shared fixtures for the reward tests."""

from __future__ import annotations

import pytest

from r1lightning.rewards import accuracy


@pytest.fixture(scope="session")
def mv_pool():
    """The math-verify process pool, started once per session (spawning workers costs seconds)."""
    accuracy.warmup_pool()
    yield
    accuracy.shutdown_pool()
