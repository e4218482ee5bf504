"""How knobflow's Ansible modules change a file they do not own, and put it back exactly.

A module imports what it needs with ``from ansible.module_utils.knobflow_files import ...``;
Ansible finds this file because the module's role lists ``knobflow_common`` under
``dependencies`` in its ``meta/main.yml`` (a loaded role's ``module_utils/`` folder, a
dependency's included, is on the module_utils search path), and ships it to the target with the
module.

The saved state lives next to the file:

* ``<path>.knobflow-orig``: a copy of the file as it was before knobflow's first change (content,
  mode, owner and times);
* ``<path>.knobflow-absent``: there was no file; JSON ``{"created_dirs": [...]}`` lists the
  folders knobflow made for it, outermost first (an empty marker, as older versions wrote, means
  none);
* ``<path>.knobflow-tmp``: the next content, for an atomic rename; gone once the write is done.

The saved state is written once, on the first change, and kept however many times the file
changes afterwards, until a revert puts the original back and deletes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

ORIG_SUFFIX = ".knobflow-orig"
ABSENT_SUFFIX = ".knobflow-absent"
TMP_SUFFIX = ".knobflow-tmp"
NEW_FILE_MODE = 0o644


def read(path):
    """The text of ``path``, or None when there is no file.

    Read as bytes and decoded as UTF-8 with surrogate escapes: line endings and bytes that are not
    UTF-8 come back unchanged when the text is written again.
    """
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None


def missing_dirs(path):
    """The parent directories of ``path`` that do not exist, outermost first."""
    out = []
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.isdir(parent):
        out.append(parent)
        nxt = os.path.dirname(parent)
        if nxt == parent:
            break
        parent = nxt
    return list(reversed(out))


def _keep_owner(path, st):
    """Give ``path`` the owner and group of the stat result ``st`` (nothing to do when they match)."""
    now = os.stat(path)
    if (now.st_uid, now.st_gid) != (st.st_uid, st.st_gid):
        os.chown(path, st.st_uid, st.st_gid)


def save_original(path, current):
    """On the first change: keep the file, or the fact that there was none and the folders made for it.

    ``current`` is what :func:`read` returned for ``path`` (None: no file). Does nothing when a
    saved state exists already, so that it always holds the very first original. Creates the
    missing parent directories of a new file.
    """
    backup, absent = path + ORIG_SUFFIX, path + ABSENT_SUFFIX
    if os.path.exists(backup) or os.path.exists(absent):
        return
    if current is None:
        created = missing_dirs(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(absent, "w") as f:
            json.dump({"created_dirs": created}, f)
    else:
        st = os.stat(path)
        shutil.copy2(path, backup)  # content, mode and times
        _keep_owner(backup, st)


def write(path, text):
    """Replace ``path`` with ``text`` atomically (None: remove the file).

    The file keeps its mode and owner; a new file gets mode 0644. The text goes to
    ``<path>.knobflow-tmp`` first, which is renamed over ``path`` (removed again on an error).
    """
    if text is None:
        if os.path.lexists(path):
            os.remove(path)
        return
    tmp = path + TMP_SUFFIX
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    try:
        with open(tmp, "wb") as f:
            f.write(text.encode("utf-8", "surrogateescape"))
        if st is None:
            os.chmod(tmp, NEW_FILE_MODE)
        else:
            _keep_owner(tmp, st)  # before chmod: a change of owner may clear setuid/setgid bits
            os.chmod(tmp, st.st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_file(path, text, current):
    """Change ``path`` from ``current`` (what :func:`read` returned) to ``text`` (None: no file).

    Saves the original on the first change (:func:`save_original`), then writes (:func:`write`).
    """
    if text is None and current is None:
        return
    save_original(path, current)
    write(path, text)


def change_file(module, path, text, current, result):
    """A module's change of a whole file from ``current`` to ``text`` (they differ), with ``result``
    (the dict the module exits with) updated: ``changed`` and the ``diff``.

    In check mode the module exits here. Otherwise the file is written (:func:`write_file`) and
    read back; the module fails when it does not hold ``text``.
    """
    result["changed"] = True
    result["diff"] = file_diff(path, current, text)
    if module.check_mode:
        module.exit_json(**result)
    write_file(path, text, current)
    if read(path) != text:
        module.fail_json(msg=f"verification failed: {path} does not hold what was written", **result)


def _created_dirs(absent):
    try:
        with open(absent) as f:
            created = json.load(f).get("created_dirs", [])
    except (OSError, ValueError, AttributeError):  # an empty marker (older versions) or a broken one
        return []
    return [d for d in created if isinstance(d, str)]


def revert(module, path):
    """Put back what was at ``path`` before knobflow's first change, then forget the saved state.

    * ``<path>.knobflow-orig``: renamed back over ``path``, byte for byte with its mode, owner and
      times;
    * ``<path>.knobflow-absent``: ``path`` is removed, and the folders knobflow created for it as
      far as they are empty;
    * no saved state (never changed, or reverted already): nothing to do.

    Returns ``(changed, text before, text after)``, None standing for no file. In check mode
    (``module.check_mode``) it only reports. Fails the module (``module.fail_json``) when the file
    is not the original afterwards.
    """
    backup, absent = path + ORIG_SUFFIX, path + ABSENT_SUFFIX
    current = read(path)
    if os.path.exists(backup):
        original = read(backup)
        if not module.check_mode:
            os.replace(backup, path)
            if read(path) != original:
                module.fail_json(msg=f"verification failed: {path} does not hold the original after the revert")
        return original != current, current, original
    if os.path.exists(absent):
        if not module.check_mode:
            created = _created_dirs(absent)
            if current is not None:
                os.remove(path)
            os.remove(absent)
            for d in reversed(created):
                try:
                    os.rmdir(d)
                except OSError:
                    break  # not empty (something else lives there now) or already gone
            if os.path.exists(path):
                module.fail_json(msg=f"verification failed: {path} still exists after the revert")
        return current is not None, current, None
    return False, current, current


def file_diff(path, before, after):
    """Ansible's diff of one file (None: no file)."""
    return dict(before=before or "", after=after or "", before_header=path, after_header=path)
