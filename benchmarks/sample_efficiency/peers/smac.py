"""SMAC3 (``pip install smac``) as a peer tuner: its HPO facade (random forest, log EI, Sobol initial
design) through ask/tell, behind knobflow's ``propose`` interface, so every proposal goes through
the same checked path (:func:`knobflow.tuners.base.ask`) as knobflow's own tuners.

Translation of the knobflow space to a ConfigSpace:

* categorical -> ``Categorical`` over the choices' text (decoded back to the original values);
* integer, or float on a step -> ``Integer`` (log scale kept) over the values, or over the step
  index when the step is not 1 (ConfigSpace has no stepped ranges);
* float -> ``Float`` (log scale kept);
* a condition ``{parent: value}`` -> ``EqualsCondition``, ``{parent: [values]}`` -> ``InCondition``,
  several -> ``AndConjunction``. Conditions written as expressions are not translated: such a
  tunable is left unconditional in SMAC and dropped from a proposal where knobflow finds it inactive.
* constraints between tunables (``xmx_mb <= memory_limit_mb * 0.9``) cannot be written in
  ConfigSpace, whose forbidden clauses compare a tunable with a constant or with one other
  tunable, without arithmetic. They are enforced by **rejection**: when SMAC proposes a
  configuration knobflow refuses (a broken constraint), the peer tells SMAC it crashed, with the
  worst cost seen so far, and asks again; rejected proposals are not trials and do not count
  against the budget (``rejections`` counts them). A proposal of a configuration already measured
  is told that configuration's measured cost and asked again.

SMAC is told the scenario is deterministic (one evaluation per configuration), as knobflow never
re-runs a configuration; measured values are noisy all the same. SMAC is stateful: one peer serves
one run. It writes its run history to a temporary directory removed by :meth:`close`.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from knobflow.space import Space
from knobflow.tuners.base import Proposal

MAX_ASKS = 200  # SMAC proposals per knobflow proposal before giving up (knobflow then draws at random)


def available() -> str | None:
    """Why the SMAC peer cannot run here, or None."""
    try:
        import ConfigSpace  # noqa: F401
        import smac  # noqa: F401
    except ImportError as exc:
        return f"SMAC3 is not installed ({exc}): pip install smac"
    return None


class _Codec:
    """One tunable in ConfigSpace terms."""

    def __init__(self, name: str, dist: Any, default: Any):
        import ConfigSpace as CS

        self.name = name
        self.dist = dist
        self.labels: list[str] | None = None
        self.step_index = False
        if isinstance(dist, CategoricalDistribution):
            labels = [str(c) for c in dist.choices]
            if len(set(labels)) != len(labels):
                labels = [f"{i}:{c}" for i, c in enumerate(dist.choices)]
            self.labels = labels
            self.hp = CS.Categorical(name, labels, default=self.encode(default))
        elif dist.step is not None and dist.step != 1:
            self.step_index = True
            count = round((dist.high - dist.low) / dist.step)
            self.hp = CS.Integer(name, (0, count), default=self.encode(default))
        elif isinstance(dist, IntDistribution) or (isinstance(dist, FloatDistribution) and dist.step == 1):
            self.hp = CS.Integer(name, (int(dist.low), int(dist.high)), log=dist.log, default=int(default))
        else:
            self.hp = CS.Float(name, (float(dist.low), float(dist.high)), log=dist.log, default=float(default))

    def encode(self, value: Any) -> Any:
        if self.labels is not None:
            for label, choice in zip(self.labels, self.dist.choices, strict=True):
                if type(choice) is type(value) and choice == value:
                    return label
            raise ValueError(f"{self.name}: {value!r} is not a choice")
        if self.step_index:
            return round((value - self.dist.low) / self.dist.step)
        return int(value) if isinstance(self.dist, IntDistribution) else float(value)

    def decode(self, value: Any) -> Any:
        if self.labels is not None:
            return self.dist.choices[self.labels.index(value)]
        if self.step_index:
            x = self.dist.low + int(value) * self.dist.step
            return int(x) if isinstance(self.dist, IntDistribution) else float(round(x, 12))
        return int(value) if isinstance(self.dist, IntDistribution) else float(value)


def configspace(space: Space, seed: int) -> tuple[Any, dict[str, _Codec]]:
    """The ConfigSpace of a knobflow space, and each tunable's codec."""
    import ConfigSpace as CS

    cs = CS.ConfigurationSpace(seed=seed)
    codecs = {n: _Codec(n, p.distribution, p.default) for n, p in space.params.items()}
    cs.add([c.hp for c in codecs.values()])
    for name, p in space.params.items():
        if p.condition is None or p.condition.expr is not None or not p.condition.equals:
            continue
        parts = []
        for parent, values in p.condition.equals:
            enc = [codecs[parent].encode(v) for v in values]
            child, hp = codecs[name].hp, codecs[parent].hp
            parts.append(CS.EqualsCondition(child, hp, enc[0]) if len(enc) == 1 else CS.InCondition(child, hp, enc))
        cs.add(parts[0] if len(parts) == 1 else CS.AndConjunction(*parts))
    return cs, codecs


class SmacPeer:
    """SMAC's HPO facade proposing for one run of ``n_trials`` trials."""

    name = "smac"
    repeats_configurations = False

    def __init__(self, *, space: Space, seed: int, n_trials: int):
        from smac import HyperparameterOptimizationFacade, Scenario

        self.space = space
        self.cs, self.codecs = configspace(space, seed)
        self._dir = Path(tempfile.mkdtemp(prefix="knobflow-smac-"))
        scenario = Scenario(
            self.cs, deterministic=True, n_trials=n_trials, seed=seed, output_directory=self._dir / "smac"
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.smac = HyperparameterOptimizationFacade(scenario, None, overwrite=True, logging_level=40)
        self._told: set[int] = set()  # trial numbers told to SMAC
        self._pending: dict[str, Any] = {}  # space key -> SMAC's TrialInfo of a proposal not yet told
        self._costs: dict[str, float] = {}  # space key -> cost told
        self.rejections = 0

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    # Conversions ---------------------------------------------------------------------------------
    def to_params(self, config: Mapping[str, Any]) -> dict[str, Any]:
        values = dict(config)
        return self.space.suggest(
            lambda n, _d: self.codecs[n].decode(values[n]) if n in values else self.space.params[n].default
        )

    def to_config(self, params: Mapping[str, Any]) -> Any:
        from ConfigSpace import Configuration

        active = {h for h in self.cs.get_active_hyperparameters(self._encode_all(params))}
        return Configuration(self.cs, values={n: self.codecs[n].encode(v) for n, v in params.items() if n in active})

    def _encode_all(self, params: Mapping[str, Any]) -> Any:
        from ConfigSpace import Configuration

        # Every tunable at a value (inactive ones at their default), to ask which are active in SMAC's space.
        full = {n: self.codecs[n].encode(params.get(n, p.default)) for n, p in self.space.params.items()}
        return Configuration(self.cs, values=full, allow_inactive_with_values=True)

    # Telling ---------------------------------------------------------------------------------------
    def _worst(self) -> float:
        return max(self._costs.values(), default=1.0)

    def _tell(self, info: Any, cost: float | None) -> None:
        from smac.runhistory.dataclasses import TrialValue
        from smac.runhistory.enumerations import StatusType

        if cost is None:
            value = TrialValue(cost=self._worst(), status=StatusType.CRASHED)
        else:
            value = TrialValue(cost=cost, status=StatusType.SUCCESS)
        self.smac.tell(info, value, save=False)

    def _sync(self, study: optuna.Study, history: list[FrozenTrial]) -> None:
        """Tell SMAC every finished trial it has not been told (the baseline, random fallbacks, ...)."""
        from smac.runhistory.dataclasses import TrialInfo

        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        for t in history:
            if t.number in self._told or t.state not in (TrialState.COMPLETE, TrialState.FAIL):
                continue
            self._told.add(t.number)
            key = self.space.key(t.params)
            info = self._pending.pop(key, None)
            if info is None:
                try:
                    info = TrialInfo(config=self.to_config(t.params), seed=self.smac.scenario.seed)
                except (ValueError, KeyError):
                    continue  # not a configuration of SMAC's space (an expression condition): not learned from
            cost = sign * float(t.value) if t.state == TrialState.COMPLETE and t.value is not None else None
            self._tell(info, cost)
            if cost is not None:
                self._costs[key] = cost

    # The tuner interface ----------------------------------------------------------------------------
    def propose(self, study: optuna.Study, space: Space, history: list[FrozenTrial], reject: Any) -> Proposal | None:
        self._sync(study, history)
        for _ in range(MAX_ASKS):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                info = self.smac.ask()
            params = self.to_params(info.config)
            why = reject(params)
            if why is None:
                self._pending[space.key(params)] = info
                return Proposal(params, source=self.name)
            key = space.key(params)
            self._tell(info, self._costs.get(key) if why == "already measured" else None)
            if why != "already measured":
                self.rejections += 1
        return None
