"""A user's own layer, from a role outside the repository, and set-up, validate and tear-down steps."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest

from knobflow import engine, spec
from knobflow.store import Store
from tests.conftest import REPO, knobflow

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples" / "custom-layer"


def _trial_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if re.match(r"^trial +\d+", line)]


def test_custom_layer_from_a_roles_path_outside_the_repository_runs_and_is_reverted(tmp_path: Path, home: Path) -> None:
    roles = tmp_path / "ops" / "my-roles"
    shutil.copytree(EXAMPLE / "roles", roles)
    exp_dir = tmp_path / "experiments"
    exp_dir.mkdir()
    shutil.copy(EXAMPLE / "hashapp.py", exp_dir / "hashapp.py")
    env_file = tmp_path / "etc" / "hashapp.env"
    env_file.parent.mkdir()
    original = "# the settings running today\nCHUNK_KB=1\nTHREADS=1\n"
    env_file.write_text(original)
    env_file.chmod(0o640)
    text = (EXAMPLE / "experiment.yaml").read_text()
    text = text.replace("  - roles\n", "  - ../ops/my-roles\n").replace("trials: 8", "trials: 3")
    text = text.replace("{{ knobflow.home }}/hashapp.env", str(env_file)).replace('"33554432"', '"4194304"')
    f = exp_dir / "custom.yaml"
    f.write_text(text)
    exp = spec.load(f)
    assert exp.roles_path()[0] == roles.resolve()
    assert not (exp_dir / "roles").exists() and not str(roles).startswith(str(REPO))

    proc = knobflow("run", str(f), home=home, check=True)
    lines = _trial_lines(proc.stdout)
    assert len(lines) == 3, proc.stdout
    # The program read what the layer wrote: each trial's metrics echo its chunk size and threads.
    store = Store(f"sqlite:///{home / 'knobflow.db'}")
    study = store.open(exp)
    records = [t for t in store.trials(study) if t.state.name == "COMPLETE"]
    assert len(records) == 3
    for t in records:
        metrics = t.user_attrs["metrics"]
        assert metrics["chunk_kb"] == t.params["chunk_kb"] and metrics["threads"] == t.params["threads"], t
    assert "finish: target reverted" in proc.stdout
    # Exactly as before: content, mode, and no saved state left behind.
    assert env_file.read_text() == original
    assert env_file.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in env_file.parent.iterdir()) == ["hashapp.env"]

    # `knobflow remeasure`: the baseline and trial 1 again, interleaved, outside the study.
    out_json = tmp_path / "remeasure.json"
    again = knobflow("remeasure", str(f), "--times", "2", "--trial", "1", "--out", str(out_json), home=home, check=True)
    runs = [line.split()[2:4] for line in again.stdout.splitlines() if line.startswith("  run ")]
    assert [r[0] for r in runs] == ["baseline", "trial", "trial", "baseline"], again.stdout
    doc = json.loads(out_json.read_text())
    assert doc["candidate_trial"] == 1 and doc["times"] == 2
    assert doc["baseline"]["stats"]["n"] == 2 and doc["candidate"]["stats"]["n"] == 2
    assert all(m["chunk_kb"] == 1 for m in doc["baseline"]["metrics"])
    assert all(m["chunk_kb"] == records[1].params["chunk_kb"] for m in doc["candidate"]["metrics"])
    assert "gain of the medians:" in again.stdout
    assert len(store.trials(study)) == 3, "re-measuring records no trial"
    assert env_file.read_text() == original


def _role(root: Path, name: str, tasks: dict[str, str]) -> None:
    (root / name / "tasks").mkdir(parents=True)
    for file, body in tasks.items():
        (root / name / "tasks" / f"{file}.yml").write_text("---\n" + body)


def _steps_experiment(tmp_path: Path, *, fail_validation: bool) -> Path:
    """An experiment whose set-up, layer validation and tear-down steps append to a journal."""
    roles = tmp_path / "roles"
    journal = tmp_path / "journal.txt"
    append = '- name: Note {what}\n  ansible.builtin.shell: "echo {what} >> {journal}"\n  changed_when: true\n'
    _role(
        roles,
        "target_up",
        {
            "main": append.format(what="setup", journal=journal),
            "stop": append.format(what="teardown", journal=journal),
        },
    )
    check = "knobflow_tunables | map(attribute='name') | list == ['workers'] and knobflow_tunables[0].high == 8"
    _role(
        roles,
        "checked_layer",
        {
            "main": append.format(what="apply", journal=journal),
            "revert": append.format(what="revert", journal=journal),
            "validate": append.format(what="validate", journal=journal)
            + "- name: Refuse what the target cannot take\n"
            + "  ansible.builtin.assert:\n"
            + f"    that: {'false' if fail_validation else repr(check)}\n"
            + '    fail_msg: "tunable workers: the target allows at most 4"\n',
        },
    )
    f = tmp_path / "steps.yaml"
    f.write_text(
        textwrap.dedent(
            f"""\
            name: steps-{"bad" if fail_validation else "ok"}
            objective: {{metric: score, direction: maximize}}
            tunables:
              - {{name: workers, layer: service, type: int, low: 1, high: 8, default: 2}}
            layers:
              service: {{role: checked_layer}}
            setup:
              - {{role: target_up}}
            teardown:
              - {{role: target_up, tasks_from: stop}}
            budget: {{trials: 2}}
            benchmark:
              role: bench_command
              warmup: 0
              repeats: 1
              vars:
                bench_command_argv: ["{{{{ ansible_playbook_python }}}}", "-c", "print('{{\\"score\\": 1}}')"]
            """
        )
    )
    return f


def test_setup_and_validation_run_before_the_first_trial_and_teardown_after_finish(tmp_path: Path, home: Path) -> None:
    f = _steps_experiment(tmp_path, fail_validation=False)
    assert engine.validating_layers(spec.load(f)) == ["service"]
    knobflow("run", str(f), home=home, check=True)
    journal = (tmp_path / "journal.txt").read_text().split()
    assert journal == ["setup", "validate", "apply", "apply", "revert", "teardown"], journal


def test_a_tunable_the_target_refuses_stops_the_run_before_any_trial(tmp_path: Path, home: Path) -> None:
    f = _steps_experiment(tmp_path, fail_validation=True)
    proc = knobflow("run", str(f), home=home)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "the target refused the tunables" in out and "the target allows at most 4" in out, out
    journal = (tmp_path / "journal.txt").read_text().split()
    assert "apply" not in journal, journal
    assert journal[:2] == ["setup", "validate"] and journal[-1] == "teardown", journal
    store = Store(f"sqlite:///{home / 'knobflow.db'}")
    # Nothing ran: the baseline is still only queued, and the next run tries the set-up again.
    assert [t.state.name for t in store.trials(store.open(spec.load(f)))] == ["WAITING"]
