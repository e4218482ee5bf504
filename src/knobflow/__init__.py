"""knobflow: hyperparameter optimization as a service for system performance."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
