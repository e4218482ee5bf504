"""The tuner interface: ask for a configuration, tell the result."""

from __future__ import annotations

from typing import Any, Protocol

import optuna
from optuna.trial import TrialState


class Tuner(Protocol):
    """A tuner proposes configurations for a study and learns from their results.

    ``ask`` returns an Optuna trial whose ``params`` hold one value per tunable (within bounds and
    on step); ``tell`` records the outcome. Implementations keep no state outside the study, so a
    killed process loses nothing and any process can continue an experiment.
    """

    name: str

    def ask(self, study: optuna.Study, distributions: dict[str, Any]) -> optuna.Trial: ...

    def tell(
        self,
        study: optuna.Study,
        trial_number: int,
        state: optuna.trial.TrialState,
        value: float | None,
    ) -> None: ...


def tell(study: optuna.Study, trial_number: int, state: TrialState, value: float | None) -> None:
    """Tell the study a trial's outcome; a trial already finished is left as it is."""
    if state == TrialState.COMPLETE:
        study.tell(trial_number, value, skip_if_finished=True)
    else:
        study.tell(trial_number, state=state, skip_if_finished=True)
