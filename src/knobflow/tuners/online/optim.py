"""SGD and RMSprop steps in numpy (spec section 3.5), for BlueFin's centre and AutoScope's router.

A step is returned, not applied: BlueFin *adds* it (gradient ascent on the reward), the router
*subtracts* it (descent on its loss). The arithmetic is written in upstream's order, because with
the upstream flags we promise its numbers to the last bit: ``v = alpha * v + (1 - alpha) * g**2``
and ``step = (eta * g) / (sqrt(v) + eps)``, or with momentum ``b = mu * b + g / (sqrt(v) + eps)``
and ``step = eta * b``. ``v`` and ``b`` start as zeros of the parameter's shape, which gives the
same numbers as upstream's scalar 0 and keeps the persisted state one shape.

No torch: upstream's router used torch's RMSprop, whose arithmetic is the same except that torch
may fuse the multiply-add of the square average (one rounding instead of two), so the router's
square averages can differ from upstream's in the last bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from knobflow.tuners.online import state as st

DEFAULTS: dict[str, dict[str, float]] = {
    "sgd": {"eta": 0.01},
    "rmsprop": {"eta": 0.01, "alpha": 0.99, "momentum": 0.0, "eps": 1e-8},
}


class Optimizer:
    """``kind`` is ``"sgd"`` or ``"rmsprop"``; ``args`` are the optimizer's hyperparameters (``eta``, ...)."""

    def __init__(self, kind: str, shape: tuple[int, ...], args: Mapping[str, Any] | None = None):
        if kind not in DEFAULTS:
            raise ValueError(f"optimizer must be 'rmsprop' or 'sgd', got {kind!r}")
        if args is not None and not isinstance(args, Mapping):
            raise ValueError(f"{kind} optimizer arguments must be a mapping, got {type(args).__name__}")
        given = dict(args or {})
        unknown = sorted(set(given) - set(DEFAULTS[kind]))
        if unknown:
            raise ValueError(f"unknown {kind} optimizer argument {unknown[0]!r}; it takes {sorted(DEFAULTS[kind])}")
        hp = {**DEFAULTS[kind], **given}
        for key, value in hp.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{kind} optimizer argument {key!r} must be a finite number, got {value!r}")
        if hp["eta"] <= 0:
            raise ValueError(f"{kind} optimizer: eta must be positive, got {hp['eta']!r}")
        if kind == "rmsprop" and not (0 <= hp["alpha"] < 1 and hp["momentum"] >= 0 and hp["eps"] > 0):
            raise ValueError("rmsprop optimizer: needs 0 <= alpha < 1, momentum >= 0 and eps > 0")
        self.kind = kind
        self.eta = float(hp["eta"])
        self.alpha = float(hp.get("alpha", 0.99))
        self.momentum = float(hp.get("momentum", 0.0))
        self.eps = float(hp.get("eps", 1e-8))
        self.shape = shape
        self.v = np.zeros(shape)  # square average
        self.b = np.zeros(shape)  # momentum buffer

    def step(self, grad: np.ndarray) -> np.ndarray:
        if self.kind == "sgd":
            return self.eta * grad
        self.v = self.v * self.alpha
        self.v += (1 - self.alpha) * (grad**2)
        if self.momentum > 0:
            self.b = self.b * self.momentum
            self.b += grad / (np.sqrt(self.v) + self.eps)
            return self.eta * self.b
        return (self.eta * grad) / (np.sqrt(self.v) + self.eps)

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "eta": self.eta}
        if self.kind == "rmsprop":
            out.update(alpha=self.alpha, momentum=self.momentum, eps=self.eps, v=self.v.tolist(), b=self.b.tolist())
        return out

    def load(self, d: Any) -> None:
        if not isinstance(d, dict) or d.get("kind") != self.kind:
            raise st.StateError(f"expected {self.kind} optimizer state, got {d!r}")
        self.eta = st.num(d["eta"])
        if self.kind == "rmsprop":
            self.alpha, self.momentum, self.eps = st.num(d["alpha"]), st.num(d["momentum"]), st.num(d["eps"])
            self.v = st.array(d["v"], self.shape)
            self.b = st.array(d["b"], self.shape)
