"""The bench_command module's aggregates (the module file is loaded as Ansible would run it)."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO


def _module():
    path = REPO / "roles" / "bench_command" / "library" / "bench_command_run.py"
    spec = importlib.util.spec_from_file_location("bench_command_run", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
