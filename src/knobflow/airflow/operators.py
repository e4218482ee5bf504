"""knobflow's Airflow operators and the trial task group, for the generated DAGs and for your own.

An experiment runs as three steps (all tuning logic lives in :mod:`knobflow.engine`):

* :class:`KnobflowPrepareOperator` opens (or creates) the experiment's study, fails the trials a
  dead process left running (reverting their target hosts) and returns one slot per trial left in
  the budget;
* :class:`KnobflowTrialOperator`, mapped over those slots, runs one trial per task instance: ask
  the tuner, lease a target host, apply + benchmark in one playbook run, tell;
* :class:`KnobflowFinishOperator` summarises, puts the target where the experiment says, and
  publishes the best configuration as an Airflow Asset (:func:`best_asset`).

:func:`knobflow_experiment` composes the three in a task group. :class:`KnobflowPromoteOperator`
applies an experiment's best configuration to target hosts (after an approval step, in the
generated DAGs when the file asks for one).

Every operator takes the experiment file's path and optional overrides of the file (``trials``,
``max_failed``, ``tuner``, ``parallel``, ``hosts``); all of them are templated, so a DAG can pass its
run's Params (``"{{ params.trials }}"``, rendered as native objects when the DAG sets
``render_template_as_native_obj=True``). ``knobflow_conn_id`` names a ``knobflow`` connection whose
store (a shared PostgreSQL database, say) replaces the file's ``storage``.

This module is imported by every Airflow process that parses a DAG using it: knobflow's own
modules are imported inside ``execute``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context, TaskGroup

    from knobflow.engine import Limits
    from knobflow.spec import Experiment

TRIAL_LABEL = "{{ knobflow_trial_label | default('trial') }}"


def best_asset(experiment_name: str) -> Asset:
    """The Asset an experiment's finish step updates with its best configuration.

    Its events carry ``extra = {"experiment", "trial", "params", "value", "gain_pct", "metric"}``;
    schedule a DAG on it (``schedule=best_asset("my-exp")``) to act on each new result.
    """
    return Asset(name=f"knobflow-best-{experiment_name}", uri=f"knobflow://experiments/{experiment_name}/best")


def _none_if_blank(value: Any) -> Any:
    """A rendered template of an unset Param is None, or the text "None"/"" without native rendering."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "None", "null")):
        return None
    return value


def _int_or_none(name: str, value: Any) -> int | None:
    value = _none_if_blank(value)
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None


def _flag(value: Any) -> bool:
    value = _none_if_blank(value)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class KnobflowBaseOperator(BaseOperator):
    """What every knobflow operator takes.

    :param experiment: path to the experiment file (YAML). Read again each time a task runs.
    :param trials: total trials of the experiment (the file's ``budget.trials`` when None). Raise it
        to continue a finished experiment.
    :param max_failed: stop after this many failed trials (the file's ``budget.max_failed`` when None).
    :param tuner: a tuner name replacing the file's ``tuner.name`` (for this run only).
    :param parallel: how many trials may run at once (the file's ``parallel`` when None); needs
        ``target.per_trial: one``. At most one benchmark runs on a host at a time whatever this says.
    :param hosts: an inventory host or group (an Ansible host pattern) replacing ``target.hosts``.
    :param knobflow_conn_id: a ``knobflow`` connection naming the store; None keeps the file's
        ``storage`` (or ``$KNOBFLOW_HOME/knobflow.db``).
    """

    template_fields: Sequence[str] = ("experiment", "trials", "max_failed", "tuner", "parallel", "hosts")
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        experiment: str,
        trials: int | str | None = None,
        max_failed: int | str | None = None,
        tuner: str | None = None,
        parallel: int | str | None = None,
        hosts: str | None = None,
        knobflow_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.experiment = experiment
        self.trials = trials
        self.max_failed = max_failed
        self.tuner = tuner
        self.parallel = parallel
        self.hosts = hosts
        self.knobflow_conn_id = knobflow_conn_id

    # Helpers shared by the operators -------------------------------------------------------
    def overrides(self) -> dict[str, Any]:
        """The fields of the file this task's arguments replace (validated like the file)."""
        out: dict[str, Any] = {}
        tuner = _none_if_blank(self.tuner)
        if tuner is not None:
            out["tuner.name"] = str(tuner)
            if str(tuner) != _declared(self.experiment, "tuner", "name"):
                out["tuner.options"] = {}  # the file's options are the file's tuner's
        parallel = _int_or_none("parallel", self.parallel)
        if parallel is not None:
            out["parallel"] = parallel
        hosts = _none_if_blank(self.hosts)
        if hosts is not None:
            out["target.hosts"] = str(hosts)
        if self.knobflow_conn_id:
            from knobflow.airflow.hooks import KnobflowHook

            out["storage"] = KnobflowHook(knobflow_conn_id=self.knobflow_conn_id).get_storage_url()
        return out

    def load_experiment(self) -> Experiment:
        """The experiment file with this task's overrides; a clear error naming the field when invalid."""
        from airflow.sdk.exceptions import AirflowFailException

        from knobflow import spec

        try:
            return spec.load(self.experiment, overrides=self.overrides())
        except spec.SpecError as exc:  # retrying cannot fix a broken file
            raise AirflowFailException(f"the experiment is invalid:\n{exc}") from None

    def limits(self, exp: Experiment) -> Limits:
        from knobflow import engine

        return engine.limits(
            exp,
            trials=_int_or_none("trials", self.trials),
            max_failed=_int_or_none("max_failed", self.max_failed),
        )


class KnobflowPrepareOperator(KnobflowBaseOperator):
    """Open or create the experiment's study, recover interrupted trials, return this run's trial slots.

    Trials a dead process left running (a killed worker) are failed with the reason, their target
    hosts reverted and their configurations queued to run again. The experiment's set-up steps and
    the layer roles' validation run when there is a trial to run.

    :param dry_run: check instead of tune: validate the file and the inventory, show the baseline
        and what applying it would change on the target (Ansible check mode); return no slot and
        record nothing.
    :return: a list with one entry per trial still in the budget (map the trial task over it).
    """

    template_fields: Sequence[str] = (*KnobflowBaseOperator.template_fields, "dry_run_mode")

    def __init__(self, *, dry_run: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dry_run_mode = dry_run

    def execute(self, context: Context) -> list[int]:
        from knobflow import engine

        exp = self.load_experiment()
        if _flag(self.dry_run_mode):
            report = engine.dry_run(exp)
            for line in report.lines:
                self.log.info("%s", line)
            if not report.ok:
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException(f"dry run: {report.problem}")
            return []
        plan = engine.prepare(exp, self.limits(exp))
        self.log.info(
            "experiment %s: %d trials done (%d failed); budget %d; %d to run",
            plan.experiment,
            plan.done,
            plan.failed,
            plan.limits.trials,
            plan.slots,
        )
        if plan.recovered:
            self.log.info("recovered interrupted trials %s: their configurations are queued again", plan.recovered)
        if plan.stop_reason:
            self.log.info("%s", plan.stop_reason)
        return list(range(plan.slots))


class KnobflowTrialOperator(KnobflowBaseOperator):
    """One trial: ask the tuner, lease a target host, apply + benchmark in one playbook run, tell.

    Map it over the prepare step's output (``.partial(...).expand(slot=prepare.output)``). A trial
    whose benchmark fails is recorded as failed and fails the task without retries (a retry would
    not run it again). A retried task whose trial already finished returns that trial and runs
    nothing: retries never report a trial twice. A retry of a task that was killed mid-trial fails
    that trial as interrupted, reverts its host and runs the next trial in its place.

    :param slot: the trial's slot in this DAG run (an element of the prepare step's output).
    :param note: free text kept with the trial (who ran it, why).
    :return: the trial: number, state, params, objective value(s), metrics, hosts, reason.
    """

    template_fields: Sequence[str] = (*KnobflowBaseOperator.template_fields, "note")
    ui_color = "#d6ecd2"

    def __init__(self, *, slot: int, note: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slot = slot
        self.note = note

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from knobflow import engine

        exp = self.load_experiment()

        def label(text: str) -> None:
            context["knobflow_trial_label"] = text  # type: ignore[typeddict-unknown-key]

        try:
            result = engine.run_trial(
                exp,
                self.limits(exp),
                run_id=context["run_id"],
                slot=f"{context['run_id']}#{self.slot}",
                note=_none_if_blank(self.note),
                on_label=label,
                on_line=lambda line: self.log.info("%s", line),
            )
        except engine.ExperimentStopped as stop:
            label(f"slot {self.slot}: not run")
            raise AirflowSkipException(str(stop)) from None
        out = result.as_dict()
        label(f"trial {result.number}" + (" (baseline)" if result.baseline else ""))
        if result.replayed:
            self.log.info("this slot already ran trial %d (a retried task): it is not run again", result.number)
        self.log.info(
            "trial %d: %s on %s; objective %s; params %s; metrics %s",
            result.number,
            result.state,
            ", ".join(result.hosts) or "?",
            result.value,
            result.params,
            result.metrics,
        )
        # Every trial's record under one key, failed ones included (a failed task returns nothing).
        context["ti"].xcom_push(key="trial", value=out)
        if result.state != "complete":
            raise AirflowFailException(f"trial {result.number} failed: {result.reason}")
        return out


class KnobflowFinishOperator(KnobflowBaseOperator):
    """Summarise the experiment, put the target where the file says (revert, best, keep), and
    update the experiment's best-configuration Asset (:func:`best_asset`).

    Fails when the experiment stopped on ``max_failed`` (or its set-up failed, or no configuration
    was left to try), or when putting the target back failed; a planned end (budget, time limit,
    target value, patience) succeeds.
    Use ``trigger_rule="all_done"`` so it runs whatever the trials did.

    :param dry_run: a dry run's finish does nothing (skipped).
    :param publish_asset: add the best-configuration Asset to the task's outlets (default True).
    :return: best trial (number, value, params), gain over the baseline in %, trials, failed.
    """

    template_fields: Sequence[str] = (*KnobflowBaseOperator.template_fields, "dry_run_mode")

    def __init__(
        self,
        *,
        dry_run: bool | str = False,
        experiment_name: str | None = None,
        publish_asset: bool = True,
        **kwargs: Any,
    ) -> None:
        if publish_asset:
            name = experiment_name or _experiment_name(kwargs["experiment"])
            kwargs["outlets"] = [*kwargs.get("outlets", []), best_asset(name)]
        super().__init__(**kwargs)
        self.dry_run_mode = dry_run
        self.publish_asset = publish_asset

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from knobflow import engine

        if _flag(self.dry_run_mode):
            raise AirflowSkipException("dry run: nothing to finish")
        exp = self.load_experiment()
        summary = engine.finish(exp, self.limits(exp))
        best = summary.best
        self.log.info(
            "experiment %s: %d trials, %d failed; %s%s",
            summary.experiment,
            summary.trials,
            summary.failed,
            f"best trial {best.number}: {summary.metric} = {summary.best_value} {best.params}" if best else "no result",
            f"; gain over the baseline {summary.gain_pct:+.1f}%" if summary.gain_pct is not None else "",
        )
        out = {
            "best": None
            if best is None
            else {"number": best.number, "value": summary.best_value, "params": best.params},
            "gain_pct": summary.gain_pct,
            "trials": summary.trials,
            "failed": summary.failed,
            "finish": summary.finish_action,
        }
        if self.publish_asset:
            # Every finish updates the Asset; with no best yet (or several objectives) trial, params and
            # value are None, and a DAG scheduled on it should check.
            context["outlet_events"][best_asset(exp.name)].extra = {
                "experiment": exp.name,
                "trial": None if best is None else best.number,
                "params": None if best is None else best.params,
                "value": summary.best_value,
                "metric": summary.metric,
                "gain_pct": summary.gain_pct,
            }
        if engine.failed_stop(summary.stop_reason):  # max_failed, nothing left to try, a failed set-up
            raise AirflowFailException(summary.stop_reason)
        if summary.finish_error:
            raise AirflowFailException(summary.finish_error)
        return out


class KnobflowPromoteOperator(KnobflowBaseOperator):
    """Apply the experiment's best configuration to target hosts and leave it there.

    Put an approval step before it (Airflow's ``ApprovalOperator``): the generated DAG of a file with
    ``promote:`` does. Each host is leased while it is changed, and the applied values are checked
    on the target by the layer roles' verification.

    :param hosts: where to apply it (an inventory host or group; the file's ``promote.hosts`` or
        ``target.hosts`` when None).
    :return: the trial applied, its params, and the hosts changed.
    """

    ui_color = "#fbe3c2"

    def overrides(self) -> dict[str, Any]:
        out = super().overrides()
        out.pop("target.hosts", None)  # ``hosts`` says where to promote, not what was tuned
        return out

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from knobflow import engine

        exp = self.load_experiment()
        try:
            applied = engine.promote(
                exp, hosts=_none_if_blank(self.hosts), on_line=lambda line: self.log.info("%s", line)
            )
        except engine.PromoteFailed as exc:
            raise AirflowFailException(str(exc)) from None
        self.log.info("applied trial %d %s to %s", applied["trial"], applied["params"], ", ".join(applied["hosts"]))
        return applied


def _declared(path: str, *keys: str) -> Any:
    """A value of an experiment file read without validating it (None when absent or unreadable)."""
    import yaml

    try:
        with open(path) as fh:
            node: Any = yaml.safe_load(fh)
        for key in keys:
            node = node[key]
        return node
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def _experiment_name(path: str) -> str:
    """The ``name`` of an experiment file, read cheaply at parse time (templated paths: the path)."""
    if "{{" in path:
        return path
    import yaml

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
        return str(data["name"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return path


def knobflow_experiment(
    experiment: str,
    *,
    group_id: str = "knobflow",
    prefix_group_id: bool = True,
    experiment_name: str | None = None,
    max_parallel: int = 1,
    trials: int | str | None = None,
    max_failed: int | str | None = None,
    tuner: str | None = None,
    parallel: int | str | None = None,
    hosts: str | None = None,
    note: str | None = None,
    dry_run: bool | str = False,
    knobflow_conn_id: str | None = None,
    trial_retries: int = 0,
    standby: int = 1,
    trial_kwargs: dict[str, Any] | None = None,
) -> TaskGroup:
    """A task group running one experiment: ``prepare`` >> ``trial`` (mapped) >> ``finish``.

    :param experiment: path to the experiment file.
    :param group_id: the task group's id; its tasks are ``<group_id>.prepare``, ``.trial``, ``.finish``
        (``prepare``, ``trial``, ``finish`` with ``prefix_group_id=False``).
    :param experiment_name: the experiment's name, for the Asset (read from the file when None).
    :param max_parallel: at most this many trials of one DAG run at once (fixed when the DAG is
        parsed); ``parallel`` (per run) bounds it further through knobflow's slot leases.
    :param standby: trial tasks started ahead of the running ones (``max_active_tis_per_dagrun`` is
        ``max_parallel + standby``). A standby task does its start-up (the task process, parsing the
        DAG file, imports, opening the study) while the trials run, then waits for a slot and a
        free host; the next trial starts within a second of one finishing instead of after the
        scheduler, the executor and the start-up. It holds a worker slot while it waits; 0 turns
        this off.
    :param trial_retries: Airflow retries of each trial task (a retry never reports a trial twice).
    :param trial_kwargs: more arguments of the trial tasks (``pool``, ``queue`` of a Celery worker,
        ``retry_delay``, ``execution_timeout``, ``post_execute``, ...).
    :param note: kept with each trial of the run.
    The other parameters are :class:`KnobflowBaseOperator`'s; pass templates such as
    ``"{{ params.trials }}"`` to take them from the run's Params.
    """
    from airflow.sdk import TaskGroup

    common: dict[str, Any] = {
        "experiment": experiment,
        "trials": trials,
        "max_failed": max_failed,
        "tuner": tuner,
        "parallel": parallel,
        "hosts": hosts,
        "knobflow_conn_id": knobflow_conn_id,
    }
    with TaskGroup(
        group_id=group_id, prefix_group_id=prefix_group_id, tooltip=f"knobflow experiment {experiment}"
    ) as group:
        prepare = KnobflowPrepareOperator(task_id="prepare", dry_run=dry_run, retries=0, **common)
        trial = KnobflowTrialOperator.partial(
            task_id="trial",
            map_index_template=TRIAL_LABEL,
            max_active_tis_per_dagrun=max_parallel + max(0, standby),
            retries=trial_retries,
            note=note,
            **common,
            **(trial_kwargs or {}),
        ).expand(slot=prepare.output)
        finish = KnobflowFinishOperator(
            task_id="finish",
            trigger_rule="all_done",
            dry_run=dry_run,
            experiment_name=experiment_name,
            retries=0,
            **common,
        )
        trial >> finish
    return group
