"""Tuners backed by Optuna's samplers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState


def _tpe(seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    kwargs: dict[str, Any] = {"multivariate": True, "constant_liar": True, "n_startup_trials": 5}
    kwargs.update(options)
    return optuna.samplers.TPESampler(seed=seed, **kwargs)


def _random(seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed, **options)


SAMPLERS: dict[str, Callable[[int | None, dict[str, Any]], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "random": _random,
}


def _derive_seed(seed: int, n: int) -> int:
    digest = hashlib.sha256(f"{seed}:{n}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass
class OptunaTuner:
    """An Optuna sampler behind the ask/tell interface.

    The sampler is rebuilt for every ask with a seed derived from (experiment seed, number of
    trials so far), so a resumed experiment suggests what an uninterrupted one would have.
    """

    name: str
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def _sampler(self, study: optuna.Study) -> optuna.samplers.BaseSampler:
        n = len(study._storage.get_all_trials(study._study_id, deepcopy=False))
        seed = None if self.seed is None else _derive_seed(self.seed, n)
        return SAMPLERS[self.name](seed, dict(self.options))

    def ask(self, study: optuna.Study, distributions: dict[str, Any]) -> optuna.Trial:
        study.sampler = self._sampler(study)
        return study.ask(fixed_distributions=distributions)

    def tell(self, study: optuna.Study, trial_number: int, state: TrialState, value: float | None) -> None:
        if state == TrialState.COMPLETE:
            study.tell(trial_number, value, skip_if_finished=True)
        else:
            study.tell(trial_number, state=state, skip_if_finished=True)
