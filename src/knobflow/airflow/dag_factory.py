"""One Airflow DAG per experiment file.

Shape: ``prepare`` >> ``trial`` (mapped over trial slots) >> ``finish``, built from the operators
and the task group in :mod:`knobflow.airflow.operators` (which your own DAGs can use too).

* ``prepare`` opens (or creates) the study, fails trials a dead process left running (reverting
  their hosts) and queues their configurations again, and returns one slot per trial still in the
  budget.
* ``trial`` is mapped over those slots. Each mapped instance is one trial: ask, lease a target
  host, one playbook run (apply + benchmark), tell. Its label in the UI is the trial number; its
  XCom holds the trial (params, objective, metrics, hosts, reason). A failed trial is a failed task
  instance; the others go on. When a stop rule fires the remaining instances are skipped.
* ``finish`` runs whatever happened (``all_done``): it summarises the experiment, reverts the
  target (or applies the best configuration, per ``finish``), updates the experiment's
  best-configuration Asset, and fails with a clear message when the experiment stopped on
  ``max_failed``.
* with ``promote:`` in the file: ``approve`` (Airflow's human-in-the-loop ApprovalOperator) and
  ``promote``, which applies the best configuration once a person approved it.

The trigger form (:func:`trigger_params`) offers trials, max_failed, tuner, parallel, hosts, dry
run and a note, each with a JSON schema so bad values are refused before a task runs.

A ``mode: continuous`` experiment is another shape (:func:`build_continuous_dag`): one task,
``round``, on the file's ``continuous.schedule``; each DAG run is one round of
:func:`knobflow.continuous.run_round`.

All tuning logic lives in :mod:`knobflow.engine` and :mod:`knobflow.continuous`; the tasks only
drive it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, task

from knobflow.spec import Experiment


def dag_id_for(name: str) -> str:
    return "knobflow_" + "".join(c if c.isalnum() or c in "_-." else "_" for c in name)


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


def _inventory_choices(exp: Experiment) -> tuple[list[str], int]:
    """The host patterns the trigger form offers (the inventory's groups, then its hosts) and how
    many hosts the inventory has. Read when the DAG is parsed; ([], 1) when the inventory cannot
    be read (the run then reports the problem)."""
    try:
        from ansible.inventory.manager import InventoryManager
        from ansible.parsing.dataloader import DataLoader

        inv = InventoryManager(loader=DataLoader(), sources=[str(exp.inventory())])
        # str(): Ansible's names are its own tagged str type, which Airflow cannot serialise.
        groups = sorted(str(g) for g in inv.groups if g != "ungrouped")
        hosts = [str(h.name) for h in inv.get_hosts("all")]
    except Exception:
        return [], 1
    return [*groups, *[h for h in hosts if h not in groups]], max(1, len(hosts))


def _tuner_choices(exp: Experiment) -> list[str]:
    """The tuners that can run this experiment's search space and objectives."""
    from knobflow import spec
    from knobflow.tuners import registry

    out = []
    for name in registry.names():
        options = exp.tuner_options() if name == exp.model.tuner.name else {}
        try:
            why = registry.check(
                name, options, spec._distributions(exp.model.tunables), objectives=len(exp.objective_list)
            )
        except Exception:
            why = "cannot check"
        if why is None:
            out.append(name)
    return out


def _parsing_for_a_task() -> bool:
    """Whether Airflow parses the DAG file to run one of its tasks (not the dag-processor, not
    ``dag.test()``)."""
    from airflow.sdk import get_parsing_context

    return get_parsing_context().task_id is not None


def trigger_params(exp: Experiment, *, for_task: bool = False) -> dict[str, Param]:
    """The trigger form of an experiment's DAG: JSON-schema Params, so the form (and the REST API)
    refuses a bad value before any task runs.

    ``for_task``: the DAG is parsed to run one task. The run's values were checked against the full
    form when it was triggered (the api-server checks them against the dag-processor's DAG); the
    task's process keeps the types and bounds, and skips the choices that cost time to compute
    (reading the inventory, checking every tuner against the search space: a second per trial).
    """
    m = exp.model
    choices, n_hosts = ([], 1024) if for_task else _inventory_choices(exp)
    max_parallel = max(m.parallel, n_hosts) if m.target.per_trial == "one" else 1
    hosts_schema: dict[str, Any] = {"enum": [None, *choices]} if choices else {"minLength": 1}
    tuner_schema: dict[str, Any] = {} if for_task else {"enum": [None, *_tuner_choices(exp)]}
    if m.target.per_trial == "one":
        parallel_text = f"(target.per_trial: one; at most {max_parallel}, the inventory's hosts)."
    else:
        parallel_text = "(this experiment runs each trial on all its hosts, target.per_trial: all, so 1)."
    return {
        "trials": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=1024,
            title="Trials",
            description=f"Total trials for the experiment (empty: the file's {m.budget.trials}). "
            "Raise it to add trials to a finished experiment.",
        ),
        "max_failed": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Max failed trials",
            description=f"Stop after this many failed trials (empty: the file's {m.budget.max_failed}).",
        ),
        "tuner": Param(
            None,
            type=["null", "string"],
            **tuner_schema,
            title="Tuner",
            description=f"The tuner for this run's trials (empty: the file's {m.tuner.name!r}).",
        ),
        "parallel": Param(
            m.parallel,
            type="integer",
            minimum=1,
            maximum=max_parallel,
            title="Parallel trials",
            description="Trials in flight at once, each on its own free host of the target " + parallel_text,
        ),
        "hosts": Param(
            None,
            type=["null", "string"],
            title="Target hosts",
            description=f"An inventory group or host to tune (empty: the file's target.hosts {m.target.hosts!r}).",
            **hosts_schema,
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Check instead of tune: validate the file, the hosts and the tunables, and show what "
            "applying the baseline would change (Ansible check mode). Nothing is changed or recorded.",
        ),
        "note": Param(
            None,
            type=["null", "string"],
            maxLength=500,
            title="Note",
            description="Free text kept with every trial of this run (why it was run, what changed).",
        ),
    }


def build_dag(exp: Experiment) -> DAG:
    """Build the DAG of one validated experiment (its file is re-read when tasks run).

    Shape: ``prepare`` >> ``trial`` (mapped) >> ``finish``, from
    :func:`knobflow.airflow.operators.knobflow_experiment`; with ``promote:`` in the file, then
    ``approve`` (a human-in-the-loop approval, unless ``promote.approval`` is false) >> ``promote``.
    """
    if exp.model.mode == "continuous":
        return build_continuous_dag(exp)
    from knobflow.airflow.operators import KnobflowPromoteOperator, best_asset, knobflow_experiment

    assert exp.path is not None, "experiments loaded from a file only"
    path = str(exp.path)
    m = exp.model
    doc = (
        f"### knobflow experiment `{m.name}`\n\n{m.description}\n\n"
        f"* file: `{path}`\n* objective: {exp.objective_text()}\n"
        f"* tunables: {', '.join(t.name for t in m.tunables)}\n* tuner: `{m.tuner.name}`\n"
        f"* budget: {m.budget.trials} trials, at most {m.budget.max_failed} failed\n"
        f"* target: `{m.target.hosts}` (per trial: {m.target.per_trial}); parallel {m.parallel}\n"
        f"* the best configuration is published as the Asset `{best_asset(m.name).uri}`\n"
    )
    params = trigger_params(exp, for_task=_parsing_for_a_task())
    with DAG(
        dag_id=dag_id_for(m.name),
        description=(m.description or f"knobflow experiment {m.name}")[:200],
        doc_md=doc,
        schedule=None,
        catchup=False,
        max_active_runs=1,
        tags=["knobflow", "experiment"],
        params=params,
        render_template_as_native_obj=True,
        default_args={"retries": 0},
    ) as dag:
        group = knobflow_experiment(
            path,
            experiment_name=m.name,
            prefix_group_id=False,
            max_parallel=int(params["parallel"].schema["maximum"]),
            trials="{{ params.trials }}",
            max_failed="{{ params.max_failed }}",
            tuner="{{ params.tuner }}",
            parallel="{{ params.parallel }}",
            hosts="{{ params.hosts }}",
            note="{{ params.note }}",
            dry_run="{{ params.dry_run }}",
        )
        # `knobflow run` (dag.test()) has no person to approve: it leaves promote to `knobflow promote`.
        if m.promote is not None and os.environ.get("KNOBFLOW_DRIVER") != "cli":
            promote = KnobflowPromoteOperator(task_id="promote", experiment=path, tuner="{{ params.tuner }}")
            finish = group.children["finish"]
            if m.promote.approval:
                from datetime import timedelta

                from airflow.providers.standard.operators.hitl import ApprovalOperator

                approve = ApprovalOperator(
                    task_id="approve",
                    subject=f"Promote the best configuration of knobflow experiment {m.name}?",
                    body="The best trial of the experiment, applied to "
                    f"`{m.promote.hosts or m.target.hosts}` on approval:\n\n"
                    "```json\n{{ ti.xcom_pull(task_ids='finish') | tojson(indent=2) }}\n```",
                    response_timeout=timedelta(seconds=m.promote.approval_timeout),
                    defaults="Reject",
                )
                finish >> approve >> promote
            else:
                finish >> promote
    return dag


def _declared_name(path: Path) -> str | None:
    """The ``name`` an experiment file declares, read without validating the file (None if unreadable)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def load_experiment_dags(files: list[Path], *, only: str | None = None) -> tuple[dict[str, DAG], dict[str, str]]:
    """Build a DAG per valid experiment file. Returns (dags by id, errors by file).

    ``only`` (a DAG id): build that DAG alone. A task's process parses the DAG file only to run
    one of its tasks (Airflow tells it which DAG: ``get_parsing_context().dag_id``); validating and
    building every other experiment's DAG there would cost each trial seconds.
    """
    from knobflow import spec

    dags: dict[str, DAG] = {}
    errors: dict[str, str] = {}
    for f in files:
        if only is not None:
            name = _declared_name(f)
            if name is not None and dag_id_for(name) != only:
                continue
        try:
            exp = spec.load(f)
        except spec.SpecError as exc:
            errors[str(f)] = str(exc)
            continue
        if exp.model.runner == "client":  # clients of the tuning service run its trials: no DAG
            continue
        dag_id = dag_id_for(exp.name)
        if dag_id in dags:
            errors[str(f)] = f"experiment name {exp.name!r} is used by another file too; skipped"
            continue
        dags[dag_id] = build_dag(exp)
    return dags, errors
