"""Fixtures shared by the world's tests: the built-in world of seed 0 and its gold judge, built once per module
(as each module did for itself before; module scope keeps a test that mutates them from reaching another
module)."""

from __future__ import annotations

import pytest

from rlhfkit.worlds import GoldJudge, World


@pytest.fixture(scope="module")
def world():
    return World.build(0)


@pytest.fixture(scope="module")
def judge(world):
    return GoldJudge(world)
