"""Tuners: one ask/tell interface, chosen by name (``tuner.name`` in the experiment file)."""

from __future__ import annotations

from knobflow.tuners.base import Tuner
from knobflow.tuners.registry import create, names

__all__ = ["Tuner", "create", "names"]
