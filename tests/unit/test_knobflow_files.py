"""roles/knobflow_common/module_utils/knobflow_files.py, the file handling the layer roles' modules
share: the original saved once, atomic writes keeping mode and owner, an exact revert (bytes, mode,
owner, times; or no file and none of the folders knobflow made). Imported as the modules import
it, ``ansible.module_utils.knobflow_files``."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import roles_module_utils


def _files() -> Any:
    roles_module_utils()
    return importlib.import_module("ansible.module_utils.knobflow_files")


F = _files()


class Exited(Exception):
    pass


class FakeModule:
    """What revert and change_file use of an AnsibleModule."""

    def __init__(self, check_mode: bool = False) -> None:
        self.check_mode = check_mode
        self.exited: dict[str, Any] | None = None

    def exit_json(self, **kwargs: Any) -> None:
        self.exited = kwargs
        raise Exited

    def fail_json(self, **kwargs: Any) -> None:
        raise AssertionError(kwargs["msg"])


def _state(path: Path) -> tuple[bytes, int, int, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.knobflow-*"))


def test_an_existing_file_is_put_back_byte_for_byte_with_mode_owner_and_times(tmp_path: Path) -> None:
    path = tmp_path / "app.conf"
    original = b"a = 1\r\nlatin-1: \xe9\xff\r\nno final newline"
    path.write_bytes(original)
    path.chmod(0o640)
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    if os.geteuid() == 0:  # as root, an owner other than the one writing shows that it is kept
        os.chown(path, 4242, 4343)
    before = _state(path)
    text = F.read(str(path))
    assert text is not None and text.encode("utf-8", "surrogateescape") == original

    F.write_file(str(path), "a = 2\n", text)
    assert path.read_bytes() == b"a = 2\n"
    st = path.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == before[1:4], "the write keeps mode and owner"
    assert _leftovers(tmp_path) == ["app.conf.knobflow-orig"]
    assert _state(tmp_path / "app.conf.knobflow-orig")[:4] == before[:4]

    # A second change saves nothing new: the saved original stays the very first one.
    F.write_file(str(path), "a = 3\n", F.read(str(path)))
    assert (tmp_path / "app.conf.knobflow-orig").read_bytes() == original

    # Check mode reports the revert and changes nothing.
    assert F.revert(FakeModule(check_mode=True), str(path)) == (True, "a = 3\n", text)
    assert path.read_bytes() == b"a = 3\n" and _leftovers(tmp_path) == ["app.conf.knobflow-orig"]

    assert F.revert(FakeModule(), str(path)) == (True, "a = 3\n", text)
    assert _state(path) == before
    assert _leftovers(tmp_path) == []
    # Reverting again finds no saved state: nothing to do.
    assert F.revert(FakeModule(), str(path)) == (False, text, text)
    assert _state(path) == before


def test_save_original_is_written_once(tmp_path: Path) -> None:
    path = tmp_path / "x.conf"
    path.write_text("first\n")
    F.save_original(str(path), "first\n")
    path.write_text("second\n")
    F.save_original(str(path), "second\n")
    assert (tmp_path / "x.conf.knobflow-orig").read_text() == "first\n"
    absent = tmp_path / "new" / "y.conf"
    F.save_original(str(absent), None)
    marker = tmp_path / "new" / "y.conf.knobflow-absent"
    assert json.loads(marker.read_text()) == {"created_dirs": [str(tmp_path / "new")]}
    absent.write_text("now there is one\n")
    F.save_original(str(absent), "now there is one\n")
    assert not (tmp_path / "new" / "y.conf.knobflow-orig").exists(), "the first original was: no file"
    assert json.loads(marker.read_text()) == {"created_dirs": [str(tmp_path / "new")]}


def test_a_file_that_was_not_there_goes_with_the_folders_made_for_it(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "app.conf"
    made = [str(tmp_path / "a"), str(tmp_path / "a" / "b"), str(tmp_path / "a" / "b" / "c")]
    assert F.missing_dirs(str(path)) == made
    F.write_file(str(path), "k = v\n", None)
    assert path.read_text() == "k = v\n"
    assert (path.stat().st_mode & 0o7777) == 0o644, "a new file gets mode 0644"
    marker = path.parent / "app.conf.knobflow-absent"
    assert json.loads(marker.read_text()) == {"created_dirs": made}
    F.write_file(str(path), "k = w\n", F.read(str(path)))
    assert _leftovers(path.parent) == ["app.conf.knobflow-absent"], "still: there was no file"

    assert F.revert(FakeModule(check_mode=True), str(path)) == (True, "k = w\n", None)
    assert path.exists() and marker.exists()

    assert F.revert(FakeModule(), str(path)) == (True, "k = w\n", None)
    assert list(tmp_path.iterdir()) == [], "the file and every folder knobflow made are gone"


def test_revert_keeps_a_created_folder_that_something_else_uses_now(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "app.conf"
    F.write_file(str(path), "k = v\n", None)
    (tmp_path / "a" / "other").write_text("not knobflow's\n")
    F.revert(FakeModule(), str(path))
    assert not path.parent.exists(), "b was knobflow's and is empty"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["other"]


def test_an_empty_marker_of_an_older_version_removes_the_file_only(tmp_path: Path) -> None:
    path = tmp_path / "d" / "app.conf"
    path.parent.mkdir()
    path.write_text("k = v\n")
    (tmp_path / "d" / "app.conf.knobflow-absent").write_text("")
    assert F.revert(FakeModule(), str(path)) == (True, "k = v\n", None)
    assert path.parent.is_dir() and list(path.parent.iterdir()) == []


def test_write_none_removes_and_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.conf"
    path.write_text("x\n")
    F.write_file(str(path), None, "x\n")
    assert not path.exists() and (tmp_path / "gone.conf.knobflow-orig").read_text() == "x\n"
    assert F.revert(FakeModule(), str(path)) == (True, None, "x\n")
    assert path.read_text() == "x\n"
    F.write_file(str(tmp_path / "never.conf"), None, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gone.conf"], "no file before, none wanted: nothing"

    folder = tmp_path / "a-directory"
    folder.mkdir()
    with pytest.raises(OSError):
        F.write(str(folder), "cannot replace a directory\n")
    assert not (tmp_path / "a-directory.knobflow-tmp").exists()


def test_change_file_records_the_change_stops_in_check_mode_and_writes_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "app.env"
    check = FakeModule(check_mode=True)
    result: dict[str, Any] = {"changed": False, "path": str(path)}
    with pytest.raises(Exited):
        F.change_file(check, str(path), "A=1\n", None, result)
    assert check.exited == {"changed": True, "path": str(path), "diff": F.file_diff(str(path), None, "A=1\n")}
    assert list(tmp_path.iterdir()) == [], "check mode writes nothing"

    result = {"changed": False}
    F.change_file(FakeModule(), str(path), "A=1\n", None, result)
    assert result["changed"] and result["diff"]["after"] == "A=1\n"
    assert path.read_text() == "A=1\n" and _leftovers(path.parent) == ["app.env.knobflow-absent"]
    assert F.revert(FakeModule(), str(path)) == (True, "A=1\n", None)
    assert list(tmp_path.iterdir()) == []


def test_file_diff_names_the_file() -> None:
    assert F.file_diff("/p", None, "new\n") == {
        "before": "",
        "after": "new\n",
        "before_header": "/p",
        "after_header": "/p",
    }
