"""Example Airflow DAGs that use knobflow's operators by hand (not the generated one-DAG-per-file).

* ``example_knobflow_composed``: a dry run of the experiment first (it checks the file, the hosts
  and the tunables, and changes nothing), then the experiment as a task group with two retries per
  trial task (a retry never reports a trial twice), then a task of your own that reads the result.
* ``example_knobflow_on_best``: scheduled on the experiment's best-configuration Asset: it runs each
  time the experiment finishes and reads the best configuration from the Asset event.

Both use ``experiments/sqlite-demo.yaml`` (a real SQLite workload on this machine). Copy this file
into your DAGs folder and point ``EXPERIMENT`` at your own experiment file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task

from knobflow.airflow.operators import KnobflowPrepareOperator, best_asset, knobflow_experiment

EXPERIMENT = str(Path(__file__).resolve().parent.parent / "experiments" / "sqlite-demo.yaml")
EXPERIMENT_NAME = "sqlite-demo"

with DAG(
    dag_id="example_knobflow_composed",
    description="knobflow's operators composed by hand: dry run, experiment, your own report",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["knobflow", "example"],
    doc_md=__doc__,
) as composed:
    check = KnobflowPrepareOperator(task_id="dry_run", experiment=EXPERIMENT, dry_run=True)
    experiment = knobflow_experiment(
        EXPERIMENT,
        group_id="tune",
        experiment_name=EXPERIMENT_NAME,
        trials=4,  # the experiment's total: 4 trials, the baseline first
        trial_retries=2,
        note="example_knobflow_composed",
    )

    @task
    def report(summary: dict[str, Any] | None = None) -> str:
        """Your own step after the experiment: here, a line with the best configuration."""
        if not summary or not summary.get("best"):
            return "no completed trial"
        best = summary["best"]
        line = f"best trial {best['number']}: {best['value']:.1f} ({summary['gain_pct']:+.1f}% over the baseline)"
        print(line, best["params"])
        return line

    finish = experiment.children["tune.finish"]
    check >> experiment
    report(finish.output)


with DAG(
    dag_id="example_knobflow_on_best",
    description="runs whenever the sqlite-demo experiment publishes a new best configuration",
    schedule=[best_asset(EXPERIMENT_NAME)],
    catchup=False,
    tags=["knobflow", "example"],
) as on_best:

    @task
    def use_best(**context: Any) -> dict[str, Any]:
        """Read the best configuration from the Asset event that triggered this run."""
        events = context["triggering_asset_events"][best_asset(EXPERIMENT_NAME)]
        extra = dict(events[-1].extra)
        if extra.get("params") is None:
            print(f"experiment {extra.get('experiment')}: no best configuration yet")
        else:
            print(f"experiment {extra['experiment']}: trial {extra['trial']} {extra['params']}")
        return extra

    use_best()
