"""Fixtures shared by the unit tests of the service's edge (settings, delivery, the loop)."""

from __future__ import annotations

import os
import time

import pytest


@pytest.fixture
def clean_env(monkeypatch):
    """No TDM_* variable from the shell reaches Settings()."""
    for key in list(os.environ):
        if key.startswith("TDM_"):
            monkeypatch.delenv(key)


@pytest.fixture
def clock(monkeypatch):
    """time.monotonic under the test's control: a one-item list to move it forward."""
    now = [1024.0]  # a binary fraction: the tests' steps add up exactly
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    return now
