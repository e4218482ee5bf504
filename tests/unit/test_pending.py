"""Proposing while trials run: auto's constant liar, and no running configuration proposed twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from optuna.trial import TrialState

from knobflow import spec
from knobflow.store import Store
from knobflow.tuners import registry
from knobflow.tuners.base import ask, tell
from knobflow.tuners.pending import PendingAware, pending_aware
from tests.conftest import REPO


def _study_with_history(home: Path, n: int = 12):
    exp = spec.load(REPO / "experiments" / "sqlite-demo.yaml")
    study = Store(f"sqlite:///{home / 'k.db'}").open(exp)
    tuner = registry.create("auto", seed=3)
    for i in range(n):
        t = ask(tuner, study, exp.space())
        tell(study, t.number, TrialState.COMPLETE, float((i * 7) % 11) + t.params["batch_size"] / 100)
    return exp, study


def _history(study):
    return study._storage.get_all_trials(study._study_id, deepcopy=False)


def test_auto_alone_proposes_the_running_configuration_again_and_the_wrapper_does_not(home: Path) -> None:
    exp, study = _study_with_history(home)
    space = exp.space()
    auto = registry.create("auto", seed=3)
    first = auto.propose(study, space, _history(study), lambda p: None)
    assert first is not None
    # A worker starts that configuration: the trial is RUNNING with its params.
    study.enqueue_trial(first.params, skip_if_exists=False)
    running = ask(registry.create("random"), study, space)
    assert running.params == first.params
    history = _history(study)
    assert any(t.state == TrialState.RUNNING for t in history)
    again = registry.create("auto", seed=3).propose(study, space, history, lambda p: None)
    # auto's model only sees finished trials: a second worker would measure the same configuration.
    assert again is not None and space.key(again.params) == space.key(first.params)

    seen: list = []
    inner = registry.create("auto", seed=3)
    original = inner.propose

    def spy(study_, space_, history_, reject_):
        seen.append(history_)
        return original(study_, space_, history_, reject_)

    inner.propose = spy  # type: ignore[method-assign]
    wrapped = pending_aware(inner)
    assert isinstance(wrapped, PendingAware) and wrapped.lie and wrapped.name == "auto"
    other = wrapped.propose(study, space, history, lambda p: None)
    assert other is not None and space.key(other.params) != space.key(first.params)
    # The model saw the running trial as finished with the worst value observed so far.
    [given] = seen
    lies = [t for t in given if t.user_attrs.get("constant_liar")]
    assert len(lies) == 1 and lies[0].params == first.params
    done = [t.values[0] for t in history if t.state == TrialState.COMPLETE]
    assert lies[0].values == [min(done)]  # sqlite-demo maximises: the worst is the lowest


def test_optuna_tuners_are_not_lied_to_but_never_repeat_a_running_configuration(home: Path) -> None:
    exp, study = _study_with_history(home, n=3)
    space = exp.space()
    study.enqueue_trial(exp.defaults(), skip_if_exists=False)
    running = ask(registry.create("random"), study, space)
    wrapped = pending_aware(registry.create("random", seed=1))
    assert not wrapped.lie
    rejected = []

    class Repeat:
        name = "repeat"
        repeats_configurations = False

        def propose(self, study_, space_, history_, reject_):
            rejected.append(reject_(dict(running.params)))
            from knobflow.tuners.base import Proposal

            return Proposal(dict(running.params))

    assert pending_aware(Repeat()).propose(study, space, _history(study), lambda p: None) is None
    assert rejected == ["running now"]
    assert wrapped.propose(study, space, _history(study), lambda p: None) is not None


def test_without_running_trials_the_wrapper_changes_nothing(home: Path) -> None:
    exp, study = _study_with_history(home)
    space = exp.space()
    a = registry.create("auto", seed=5).propose(study, space, _history(study), lambda p: None)
    b = pending_aware(registry.create("auto", seed=5)).propose(study, space, _history(study), lambda p: None)
    assert a is not None and b is not None and a.params == b.params


def test_wrapping_a_tuner_does_not_import_auto_and_scipy() -> None:
    # Each trial task runs in a fresh process: at parallel > 1 the wrapper is built on every trial,
    # and importing auto's module (SciPy) there cost about a second between two trials on a host.
    code = (
        "import sys\n"
        "import knobflow.engine\n"
        "from knobflow.tuners import registry\n"
        "from knobflow.tuners.pending import pending_aware\n"
        "wrapped = pending_aware(registry.create('random', seed=1))\n"
        "assert not wrapped.lie\n"
        "print(sorted(m for m in ('scipy', 'knobflow.tuners.auto') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
