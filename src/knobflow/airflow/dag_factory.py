"""One Airflow DAG per experiment file.

Shape: ``prepare`` >> ``trial`` (mapped over trial slots) >> ``finish``.

* ``prepare`` opens (or creates) the study, fails trials a dead process left running and queues
  their configurations again, and returns one slot per trial still in the budget.
* ``trial`` is mapped over those slots, at most ``parallel`` at a time. Each mapped instance is one
  trial: ask, one playbook run (apply + benchmark), tell. Its label in the UI is the trial number;
  its XCom holds the trial (params, objective, metrics, reason). A failed trial is a failed task
  instance; the others go on. When a stop rule fires (``max_failed`` reached) the remaining
  instances are skipped.
* ``finish`` runs whatever happened (``all_done``): it summarises the experiment, reverts the
  target (or applies the best configuration, per ``finish``) and fails with a clear message when
  the experiment stopped on ``max_failed``.

A ``mode: continuous`` experiment is another shape (:func:`build_continuous_dag`): one task,
``round``, on the file's ``continuous.schedule``; each DAG run is one round of
:func:`knobflow.continuous.run_round`.

All tuning logic lives in :mod:`knobflow.engine` and :mod:`knobflow.continuous`; the tasks only
drive it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, get_current_context, task

from knobflow.spec import Experiment

TRIAL_LABEL = "{{ knobflow_trial_label | default('trial') }}"


def dag_id_for(name: str) -> str:
    return "knobflow_" + "".join(c if c.isalnum() or c in "_-." else "_" for c in name)


def _limits(exp: Experiment, params: dict[str, Any]) -> Any:
    from knobflow import engine

    return engine.limits(exp, trials=params.get("trials"), max_failed=params.get("max_failed"))


def _load(path: str) -> Experiment:
    from knobflow import spec

    return spec.load(path)


def build_continuous_dag(exp: Experiment) -> DAG:
    """The DAG of a continuous experiment: one ``round`` task per run, on ``continuous.schedule``.

    A paused experiment, or a round still running, skips the task (its reason in the log); a
    failed benchmark is a round result (reward -1, the guardrails), not a failed task; an error in
    knobflow fails the task and leaves the round's prediction pending for the next run.
    """
    assert exp.path is not None, "experiments loaded from a file only"
    path = str(exp.path)
    m, c = exp.model, exp.continuous
    doc = (
        f"### knobflow continuous experiment `{m.name}`\n\n{m.description}\n\n"
        f"* file: `{path}`\n* objective: {exp.objective_text()}\n* tuner: `{m.tuner.name}`\n"
        f"* one round per run, schedule `{c.schedule}`; max_step {c.max_step}, reward_floor "
        f"{c.reward_floor}, pause_after {c.pause_after}\n"
    )
    with DAG(
        dag_id=dag_id_for(m.name),
        description=(m.description or f"knobflow continuous experiment {m.name}")[:200],
        doc_md=doc,
        schedule=c.schedule,
        catchup=False,
        max_active_runs=1,
        tags=["knobflow", "continuous"],
        default_args={"retries": 0},
    ) as dag:

        @task(task_id="round", multiple_outputs=False)
        def round_() -> dict[str, Any]:
            """One round: predict (or re-apply the pending prediction), apply + measure, reward, guardrails."""
            from airflow.sdk.exceptions import AirflowSkipException

            from knobflow import continuous

            report = continuous.run_round(_load(path))
            print(json.dumps(report.as_dict(), default=str))
            if report.action in ("paused", "busy"):
                raise AirflowSkipException(f"{report.action}: {'; '.join(report.guardrails) or report.failed}")
            return report.as_dict()

        round_()

    return dag


def build_dag(exp: Experiment) -> DAG:
    """Build the DAG of one validated experiment (its file is re-read when tasks run)."""
    if exp.model.mode == "continuous":
        return build_continuous_dag(exp)
    assert exp.path is not None, "experiments loaded from a file only"
    path = str(exp.path)
    m = exp.model
    doc = (
        f"### knobflow experiment `{m.name}`\n\n{m.description}\n\n"
        f"* file: `{path}`\n* objective: {exp.objective_text()}\n"
        f"* tunables: {', '.join(t.name for t in m.tunables)}\n* tuner: `{m.tuner.name}`\n"
        f"* budget: {m.budget.trials} trials, at most {m.budget.max_failed} failed\n"
    )
    with DAG(
        dag_id=dag_id_for(m.name),
        description=(m.description or f"knobflow experiment {m.name}")[:200],
        doc_md=doc,
        schedule=None,
        catchup=False,
        max_active_runs=1,
        tags=["knobflow", "experiment"],
        params={
            "trials": Param(
                None,
                type=["null", "integer"],
                minimum=1,
                maximum=1024,
                description="Total trials for the experiment (the file's budget.trials when empty). "
                "Raise it to add trials to a finished experiment.",
            ),
            "max_failed": Param(
                None,
                type=["null", "integer"],
                minimum=1,
                description="Stop after this many failed trials (the file's budget.max_failed when empty).",
            ),
        },
        default_args={"retries": 0},
    ) as dag:

        @task(task_id="prepare")
        def prepare() -> list[int]:
            """Open the study, recover interrupted trials, return the trial slots of this run."""
            from knobflow import engine

            ctx = get_current_context()
            exp_now = _load(path)
            plan = engine.prepare(exp_now, _limits(exp_now, dict(ctx["params"])))
            print(
                f"experiment {plan.experiment}: {plan.done} trials done ({plan.failed} failed); "
                f"budget {plan.limits.trials}; {plan.slots} to run"
            )
            if plan.recovered:
                print(f"recovered interrupted trials {plan.recovered}: their configurations are queued again")
            if plan.stop_reason:
                print(plan.stop_reason)
            return list(range(plan.slots))

        @task(
            task_id="trial",
            map_index_template=TRIAL_LABEL,
            max_active_tis_per_dagrun=m.parallel,
            multiple_outputs=False,
        )
        def trial(slot: int) -> dict[str, Any]:
            """One trial: ask the tuner, apply + benchmark in one playbook run, tell the result."""
            from airflow.sdk.exceptions import AirflowException, AirflowSkipException

            from knobflow import engine

            ctx = get_current_context()
            exp_now = _load(path)

            def label(text: str) -> None:
                ctx["knobflow_trial_label"] = text  # type: ignore[typeddict-unknown-key]

            try:
                result = engine.run_trial(
                    exp_now,
                    _limits(exp_now, dict(ctx["params"])),
                    run_id=ctx["run_id"],
                    on_label=label,
                    on_line=print,
                )
            except engine.ExperimentStopped as stop:
                label(f"slot {slot}: not run")
                raise AirflowSkipException(str(stop)) from None
            out = result.as_dict()
            print(
                f"trial {result.number}: {result.state}; objective {result.value}; params {result.params}; "
                f"metrics {result.metrics}"
            )
            # Every trial's record under one key, failed ones included (a failed task returns nothing).
            ctx["ti"].xcom_push(key="trial", value=out)
            if result.state != "complete":
                raise AirflowException(f"trial {result.number} failed: {result.reason}")
            return out

        @task(task_id="finish", trigger_rule="all_done", multiple_outputs=False)
        def finish() -> dict[str, Any]:
            """Summarise, put the target back (or apply the best), fail if max_failed was reached."""
            from airflow.sdk.exceptions import AirflowFailException

            from knobflow import engine

            ctx = get_current_context()
            exp_now = _load(path)
            summary = engine.finish(exp_now, _limits(exp_now, dict(ctx["params"])))
            best = summary.best
            print(
                f"experiment {summary.experiment}: {summary.trials} trials, {summary.failed} failed; "
                + (f"best trial {best.number}: {summary.metric} = {best.value} {best.params}" if best else "no result")
                + (f"; gain over the baseline {summary.gain_pct:+.1f}%" if summary.gain_pct is not None else "")
            )
            if summary.stop_reason and not summary.stop_reason.startswith("budget"):
                raise AirflowFailException(summary.stop_reason)
            if summary.finish_error:
                raise AirflowFailException(summary.finish_error)
            return {
                "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
                "gain_pct": summary.gain_pct,
                "trials": summary.trials,
                "failed": summary.failed,
            }

        slots = prepare()
        trials = trial.expand(slot=slots)
        done = finish()
        trials >> done

    return dag


def load_experiment_dags(files: list[Path]) -> tuple[dict[str, DAG], dict[str, str]]:
    """Build a DAG per valid experiment file. Returns (dags by id, errors by file)."""
    from knobflow import spec

    dags: dict[str, DAG] = {}
    errors: dict[str, str] = {}
    for f in files:
        try:
            exp = spec.load(f)
        except spec.SpecError as exc:
            errors[str(f)] = str(exc)
            continue
        dag_id = dag_id_for(exp.name)
        if dag_id in dags:
            errors[str(f)] = f"experiment name {exp.name!r} is used by another file too; skipped"
            continue
        dags[dag_id] = build_dag(exp)
    return dags, errors
