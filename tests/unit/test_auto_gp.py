"""auto's Gaussian process: analytic gradients of the kernel with and without its additive part."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize

from knobflow.tuners.auto import GP, _sq_dists


@pytest.mark.parametrize("additive", [False, True])
def test_marginal_likelihood_gradient_matches_finite_differences(additive: bool) -> None:
    rng = np.random.default_rng(0)
    u, c = rng.random((12, 4)), rng.integers(0, 3, (12, 2))
    D, y = _sq_dists(u, c, u, c), rng.standard_normal(12)
    gp = GP(d=6, n_cat=2, additive=additive)
    theta = gp._theta() + rng.normal(0.0, 0.3, gp._theta().size)
    numeric = optimize.approx_fprime(theta, lambda t: gp._nll(t, D, y)[0], 1e-6)
    analytic = gp._nll(theta, D, y)[1]
    assert np.max(np.abs(numeric - analytic)) < 1e-3 * max(1.0, np.max(np.abs(analytic)))
