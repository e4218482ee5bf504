"""COCO ``bbob-mixint`` functions (PyPI package ``coco-experiment``, module ``cocoex``), minimised.

In dimension 10 a bbob-mixint function has two variables of each kind: with 2, 4, 8 and 16
integer values and continuous in [-5, 5]. Here the 2- and 4-valued integers become unordered
categoricals: their choices are labels ``c0, c1, ...`` and label ``cj`` stands for the integer
``perm[j]``, with ``perm`` a fixed random permutation per variable, so the order of the labels
tells nothing. The 8- and 16-valued ones stay integers, the continuous ones floats.

The optimum is on the integer lattice and known: COCO writes the best parameter of a problem
(``Problem._best_parameter("print")``), and its value is the optimum. Evaluations are noise-free.
The default is COCO's ``initial_solution`` (the middle of every domain); being arbitrary, the
reference for normalized regret is the median of random configurations.
"""

from __future__ import annotations

import importlib.util
import os
import random
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from benchmarks.sample_efficiency.problem import Problem
from knobflow.space import Param, Space

DIMENSION = 10
INSTANCE = 1
FUNCTIONS = {2: "ellipsoid", 8: "rosenbrock", 15: "rastrigin", 21: "gallagher101"}
CATEGORICAL_BELOW = 4  # integer variables with at most this many values become categoricals


def available() -> str | None:
    """Why the bbob-mixint problems cannot run here, or None when they can."""
    if importlib.util.find_spec("cocoex") is None:
        return "the PyPI package coco-experiment is not installed (pip install coco-experiment)"
    return None


class BbobMixint(Problem):
    family = "bbob-mixint"
    maximize = False
    reference_kind = "random-median"
    version = "1"

    def __init__(self, function: int):
        self.function = function
        self.name = f"bbob-mixint-f{function:02d}-d{DIMENSION}"
        self._suite: Any = None
        self._problem: Any = None
        lower, upper, initial = self._bounds()
        rng = random.Random(f"{self.name}:labels")
        self.permutations: dict[str, list[int]] = {}
        params = []
        for i, (lo, hi, x0) in enumerate(zip(lower, upper, initial, strict=True)):
            name = f"x{i}"
            if i < self.coco.number_of_integer_variables:
                count = int(hi - lo) + 1
                if count <= CATEGORICAL_BELOW:
                    perm = list(range(int(lo), int(hi) + 1))
                    rng.shuffle(perm)
                    self.permutations[name] = perm
                    labels = [f"c{j}" for j in range(count)]
                    params.append(Param(name, CategoricalDistribution(labels), labels[perm.index(int(x0))], "bbob"))
                else:
                    params.append(Param(name, IntDistribution(int(lo), int(hi)), int(x0), "bbob"))
            else:
                params.append(Param(name, FloatDistribution(float(lo), float(hi)), float(x0), "bbob"))
        self.space = Space(params)

    @property
    def coco(self) -> Any:
        """The cocoex problem (made on first use, in each process)."""
        if self._problem is None:
            import cocoex

            self._suite = cocoex.Suite(
                "bbob-mixint",
                "",
                f"dimensions:{DIMENSION} function_indices:{self.function} instance_indices:{INSTANCE}",
            )
            self._problem = next(iter(self._suite))
        return self._problem

    def _bounds(self) -> tuple[list[float], list[float], list[float]]:
        p = self.coco
        return list(p.lower_bounds), list(p.upper_bounds), list(p.initial_solution)

    def vector(self, params: Mapping[str, Any]) -> np.ndarray:
        """The point of the cocoex problem a configuration stands for."""
        x = []
        for i in range(DIMENSION):
            name = f"x{i}"
            v = params[name]
            if name in self.permutations:
                x.append(float(self.permutations[name][int(str(v)[1:])]))
            else:
                x.append(float(v))
        return np.array(x)

    def true_value(self, params: Mapping[str, Any]) -> float | None:
        return float(self.coco(self.vector(params)))

    def compute_optimum(self) -> tuple[float, str]:
        cwd = os.getcwd()
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)  # COCO writes the best parameter to a file in the working directory
            try:
                self.coco._best_parameter("print")
                with open("._bbob_problem_best_parameter.txt") as fh:
                    best = np.array([float(t) for t in fh.read().split()])
            finally:
                os.chdir(cwd)
        return float(self.coco(best)), "known (COCO's best parameter, on the integer lattice)"
