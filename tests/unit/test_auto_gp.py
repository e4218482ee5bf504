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


def test_the_pick_skips_refused_candidates_instead_of_falling_back_to_random() -> None:
    """Near an incumbent on a constraint's boundary most of the best-scored candidates break the
    constraint. auto must still propose its best *acceptable* candidate: with only the first 64
    checked, 7% of its proposals on the constrained simulator were random fallbacks."""
    from optuna.distributions import FloatDistribution

    from knobflow.space import Param, Space
    from knobflow.tuners.auto import AutoTuner, Encoder

    space = Space([Param("x", FloatDistribution(0.0, 1.0), 0.5, "stack")])
    enc = Encoder(space)
    u = np.linspace(0.0, 1.0, 1001)[:, None]
    c = np.zeros((1001, 0), np.int64)
    scores = u[:, 0].copy()  # the model prefers large x, but x > 0.8 breaks a constraint
    tuner = AutoTuner(seed=0)

    def reject(cfg: dict) -> str | None:
        return "x <= 0.8" if cfg["x"] > 0.8 else None

    got = tuner._pick(enc, u, c, scores, lambda cs: np.array([cfg["x"] for cfg in cs]), reject, "auto/gp-ei")
    assert got is not None and got.source == "auto/gp-ei"
    assert got.params["x"] == pytest.approx(0.8)
    assert tuner._pick(enc, u, c, scores, lambda cs: np.zeros(len(cs)), lambda cfg: "no", "auto/gp-ei") is None


def test_the_second_phase_starts_at_the_20th_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the 20th trial the GP fits rank-transformed values with the long length-scale prior;
    from it on, standardised values with the prior shifted by LATE_LS_SHIFT (docstring, 5.)."""
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    from knobflow import space as space_module
    from knobflow.tuners import auto

    fits: list[tuple[int, float, np.ndarray]] = []
    real_fit = auto.GP.fit

    def fit(self: auto.GP, D: np.ndarray, y: np.ndarray) -> None:
        fits.append((y.size, self.ls_shift, y.copy()))
        real_fit(self, D, y)

    monkeypatch.setattr(auto.GP, "fit", fit)
    sp = space_module.Space(
        [
            space_module.Param("x", FloatDistribution(0.0, 1.0), 0.5, "stack"),
            space_module.Param("n", IntDistribution(1, 64), 8, "stack"),
        ]
    )
    study = optuna.create_study(direction="minimize")
    rng = np.random.default_rng(0)
    tuner = auto.AutoTuner(seed=1)
    for _ in range(auto.LATE_AT + 2):
        p = tuner.propose(study, sp, study.get_trials(deepcopy=False), lambda cfg: None)
        assert p is not None
        x, n = p.params["x"], p.params["n"]
        value = float(np.exp(5 * x) + n + rng.normal())  # heavy-tailed on purpose
        study.add_trial(optuna.trial.create_trial(params=p.params, distributions=sp.distributions(), value=value))
    early = [f for f in fits if f[0] < auto.LATE_AT]  # fitted on fewer than 20 trials
    late = [f for f in fits if f[0] >= auto.LATE_AT]
    assert len(early) >= 10 and len(late) == 2
    for _, shift, z in early:
        assert shift == 0.0
        assert sorted(z.tolist()) == pytest.approx(sorted(auto._copula(z).tolist()))  # normal scores of ranks
    for _, shift, z in late:
        assert shift == auto.LATE_LS_SHIFT
        assert float(z.mean()) == pytest.approx(0.0, abs=1e-9) and float(z.std()) == pytest.approx(1.0)
        assert sorted(z.tolist()) != pytest.approx(sorted(auto._copula(z).tolist()))
    gp = auto.GP(d=2, ls_shift=auto.LATE_LS_SHIFT)
    assert gp.prior_mu == pytest.approx(auto.GP(d=2).prior_mu + auto.LATE_LS_SHIFT)
