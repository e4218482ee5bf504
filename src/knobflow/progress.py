"""In-process progress events: the engine emits, drivers (the CLI) listen.

Under ``dag.test()`` tasks run in the caller's process, so the CLI prints one line per trial from
here, whatever Airflow does with the task logs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

Listener = Callable[[str, Any], None]

_listeners: list[Listener] = []
_lock = threading.Lock()


def subscribe(listener: Listener) -> Callable[[], None]:
    with _lock:
        _listeners.append(listener)

    def unsubscribe() -> None:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return unsubscribe


def emit(kind: str, payload: Any) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        with contextlib.suppress(Exception):  # a broken listener must not fail a trial
            listener(kind, payload)
