"""The bench_command module's aggregates (the module file is loaded as Ansible would run it)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import role_module


def _module() -> Any:
    return role_module("bench_command", "bench_command_run")


@pytest.mark.parametrize(
    ("values", "how", "expected"),
    [
        ([1.0, 2.0, 100.0], "median", 2.0),
        ([1.0, 2.0, 3.0], "mean", 2.0),
        ([1.0, 2.0, 3.0, 100.0], "trimmed_mean", 2.5),  # drops 1 and 100
        ([50.0] + [10.0] * 18 + [-30.0], "trimmed_mean", 10.0),  # 20 runs: drops two at each end
        ([4.0, 6.0], "trimmed_mean", 5.0),  # too few runs to trim
        ([3.0, 1.0], "min", 1.0),
        ([3.0, 1.0], "max", 3.0),
    ],
)
def test_combine(values: list[float], how: str, expected: float) -> None:
    assert _module().combine(values, how) == pytest.approx(expected)
