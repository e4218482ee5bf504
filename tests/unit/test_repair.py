"""Refused proposals of an expensive model-based sampler (Optuna's GP) are repaired, not re-modelled.

knobflow refuses a proposal that breaks a constraint or repeats a measured configuration and asks
again; a sampler whose model ignores failed trials proposes the same point each time, and each
ask costs a model fit (10 to 60 s for Optuna's GP over 31 knobs), up to 64 times per proposal.
"""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import FrozenTrial

from knobflow.expr import compile_expr
from knobflow.space import Param, Space
from knobflow.tuners import optuna as kopt
from knobflow.tuners.base import propose_checked
from knobflow.tuners.optuna import missing_modules

KNOBS = [f"k{i}" for i in range(10)]
STUBBORN = {**{k: 0.5 for k in KNOBS}, "k0": 0.6, "k1": 0.55}  # just over the boundary k0 + k1 <= 1


def _space() -> Space:
    params = [Param(k, FloatDistribution(0.0, 1.0), 0.1, "app") for k in KNOBS]
    return Space(params, [compile_expr("k0 + k1 <= 1", boolean=True)])


class Stubborn(optuna.samplers.BaseSampler):
    """A model that proposes the same point whatever failed before (as a GP that ignores failed
    trials does) and counts its fits."""

    fits = 0

    def __init__(self, point: dict[str, float]):
        self.point = point

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {k: FloatDistribution(0.0, 1.0) for k in KNOBS}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        Stubborn.fits += 1
        return dict(self.point)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        raise AssertionError("every knob is in the relative search space")


def _register(monkeypatch: pytest.MonkeyPatch, point: dict[str, float], repair: bool) -> None:
    def factory(seed: int | None, options: dict[str, Any], _: Any) -> optuna.samplers.BaseSampler:
        base = Stubborn(point)
        return kopt.RepairingSampler(base, seed) if repair else base

    monkeypatch.setitem(kopt.SAMPLERS, "stubborn", kopt.SamplerSpec(factory, "test double"))
    Stubborn.fits = 0


def _history(space: Space, configs: list[dict[str, float]]) -> tuple[optuna.Study, list[FrozenTrial]]:
    study = optuna.create_study(direction="maximize")
    for i, c in enumerate(configs):
        study.add_trial(optuna.trial.create_trial(params=c, distributions=space.distributions(), value=float(i)))
    return study, study.get_trials(deepcopy=False)


def _some_configs(n: int) -> list[dict[str, float]]:
    return [{k: round(0.05 * ((i + j) % 9), 2) for j, k in enumerate(KNOBS)} for i in range(n)]


@pytest.mark.parametrize("repair", [True, False])
def test_a_refused_proposal_is_repaired_next_to_the_models_choice(
    monkeypatch: pytest.MonkeyPatch, repair: bool
) -> None:
    _register(monkeypatch, STUBBORN, repair)
    space = _space()
    study, history = _history(space, _some_configs(6))
    tuner = kopt.OptunaTuner("stubborn", seed=3)
    p = propose_checked(tuner, study, space, history, seed=3)
    assert space.problems(p.params) == []
    if not repair:  # the old loop: 64 model fits, then a random configuration
        assert (p.source, Stubborn.fits) == ("random-fallback", kopt.MAX_ATTEMPTS)
        return
    assert (p.source, Stubborn.fits) == ("stubborn", 1)
    changed = {k for k in KNOBS if p.params[k] != STUBBORN[k]}
    assert changed & {"k0", "k1"}, "the repair changed a knob of the broken constraint"
    assert len(changed) <= len(KNOBS) // 2, ("the repair kept most of the model's choice", changed)


def test_a_repeated_configuration_is_repaired_with_one_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    measured = _some_configs(6)
    _register(monkeypatch, measured[2], True)
    space = _space()
    study, history = _history(space, measured)
    p = propose_checked(kopt.OptunaTuner("stubborn", seed=4), study, space, history, seed=4)
    assert (p.source, Stubborn.fits) == ("stubborn", 1)
    assert p.params not in measured and sum(p.params[k] != measured[2][k] for k in KNOBS) >= 1


def test_repairs_are_seeded_and_a_new_proposal_asks_the_model_again(monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, STUBBORN, True)
    space = _space()
    study, history = _history(space, _some_configs(6))
    first = propose_checked(kopt.OptunaTuner("stubborn", seed=9), study, space, history, seed=9)
    again = propose_checked(kopt.OptunaTuner("stubborn", seed=9), study, space, history, seed=9)
    assert first.params == again.params and Stubborn.fits == 2


def test_the_sampler_asks_the_model_again_after_a_completed_trial() -> None:
    """Outside knobflow's shadow study (a trial completes instead of failing) nothing is repaired."""
    Stubborn.fits = 0
    sampler = kopt.RepairingSampler(Stubborn(STUBBORN), 1)
    study = optuna.create_study(sampler=sampler)
    for _ in range(3):
        t = study.ask()
        for k in KNOBS:
            t.suggest_float(k, 0.0, 1.0)
        study.tell(t, 1.0)
    assert Stubborn.fits == 3 and sampler.repairs == 0
    assert all(t.params == STUBBORN for t in study.trials)


@pytest.mark.skipif(bool(missing_modules("gp")), reason="Optuna's GP sampler needs torch (the gp extra)")
def test_gp_fits_its_model_once_per_proposal_on_a_constrained_space(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real GP: its optimum (k0 = k1 = 1) breaks the constraint; every proposal is still the
    GP's own (not the random fallback), feasible, and costs one model fit."""
    fits: list[int] = []
    real = optuna.samplers.GPSampler._sample_relative_impl

    def counting(self: Any, *args: Any) -> dict[str, Any]:
        fits.append(1)
        return real(self, *args)

    monkeypatch.setattr(optuna.samplers.GPSampler, "_sample_relative_impl", counting)
    moves: list[str] = []
    move = kopt.RepairingSampler._move

    def counting_moves(self: Any, name: str, *args: Any) -> Any:
        moves.append(name)
        return move(self, name, *args)

    monkeypatch.setattr(kopt.RepairingSampler, "_move", counting_moves)
    space = _space()
    study = optuna.create_study(direction="maximize")
    for _ in range(18):
        history = study.get_trials(deepcopy=False)
        before = len(fits)
        p = propose_checked(kopt.OptunaTuner("gp", seed=2), study, space, history, seed=2)
        assert space.problems(p.params) == [] and p.source == "gp", p
        assert len(fits) - before <= 1
        value = p.params["k0"] + p.params["k1"] + 0.1 * p.params["k2"]
        study.add_trial(optuna.trial.create_trial(params=p.params, distributions=space.distributions(), value=value))
    assert len(fits) == 8, "10 random start-up trials, then one GP fit per proposal"
    assert moves, "the GP proposed beyond the constraint and was repaired"
    assert max(t.params["k0"] + t.params["k1"] for t in study.trials[10:]) > 0.95, "the GP goes to the edge"
