"""AutoScope (spec section 6): which contexts should share a tuner, learned with the tuners.

Tuning per host group or workload means one tuner per scope, but the right granularity is not
known in advance. AutoScope puts a small **oblique binary decision tree** of height h over a
context feature vector x; each of its L = 2**h leaves is an independent :class:`BlueFin`. The
leaves learn configurations; the internal nodes learn the routing, trained with the leaf's bandit
gradient passed back through the quantised tree by straight-through estimators (the Dense Gradient
Tree of Karthikeyan et al., TMLR 2022). Routing (forward pass), with W (I x F) and b (I), I = L - 1
internal nodes in heap order:

    z = W x + b;  phi = mean |z|;  q = 2 phi [z >= 0] - phi;  y = A q;  a = softmax(y);  leaf = argmax a

where A (L x I) is +1 where a leaf is in a node's left subtree, -1 in its right subtree, 0 else. With
phi > 0 the leaf is the one reached by going left wherever z >= 0; with z = 0 everywhere it is 0.

A reward goes to the leaf chosen at predict time, unless the context now routes elsewhere (another
context's reward moved the router): then it is dropped. When the leaf completes an update with
gradient g, the router takes one step *descending* the loss whose gradient with respect to the
one-hot leaf selector is ``G_l = -<g, C_l>`` (C: every leaf's centre, before the update), backward
through argmax (identity), softmax, the AND layer and the sign quantiser (``2 dq * 1[|z| <= 1]``,
phi held constant), with RMSprop (alpha 0.99, eps 1e-8, learning rate ``eta``) or SGD.

D6 (``autoscope_upstream_quirks``, default False; True is upstream):

* ``iteration`` counts rewards (upstream never advances it);
* without ``internal_weights``, W is drawn from U(-1/sqrt(F), 1/sqrt(F)) with
  ``default_rng(random_seed).uniform`` (upstream: torch's unseeded global RNG, so not reproducible;
  with the quirks an unseeded numpy generator is used);
* a numeric feature is scaled to [-1, 1] by its declared ``min``/``max`` (and clipped), because
  |z| > 1 blocks the straight-through gradient and raw magnitudes push z there (upstream: raw
  value; no bounds needed);
* leaf i is seeded with ``seed + i`` when ``leaf_algorithm_args`` has a ``random_seed`` (upstream:
  every leaf gets the same seed, so all leaves draw the same direction sequence).

Not implemented (upstream has them): ``and_bias_is_learnable`` (upstream only randomises that bias
and never trains it), the deprecated ``over_param`` layers, router ``optimizer_args``, and leaf
algorithms other than BlueFin. ``delta`` is accepted and, as upstream, unused (the leaves' delta is
in ``leaf_algorithm_args``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from knobflow.tuners.online import state as st
from knobflow.tuners.online.base import Context, OnlineTuner, TuningRequest
from knobflow.tuners.online.bluefin import BlueFin
from knobflow.tuners.online.optim import Optimizer
from knobflow.tuners.online.params import Integer, Real


@dataclass(frozen=True)
class Feature:
    """A context feature: categorical (``values``, one-hot) or numeric (``values`` None; ``min``/``max`` bounds)."""

    name: str
    values: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None

    @property
    def width(self) -> int:
        return 1 if self.values is None else len(self.values)

    def to_dict(self) -> dict[str, Any]:
        if self.values is not None:
            return {"name": self.name, "values": list(self.values)}
        return {"name": self.name, "values": None, "min": self.min, "max": self.max}


def as_feature(obj: Any, index: int) -> Feature:
    """A feature from ``{"name", "values"[, "min", "max"]}`` (OPPerTune's AutoScopeFeature) or ``(name, values)``."""
    where = f"features[{index}]"
    if isinstance(obj, Feature):
        return obj
    if isinstance(obj, Mapping):
        unknown = sorted(set(obj) - {"name", "values", "min", "max"})
        if unknown:
            raise ValueError(f"{where}: unknown field {unknown[0]!r}")
        name, values, lo, hi = obj.get("name"), obj.get("values"), obj.get("min"), obj.get("max")
    elif isinstance(obj, Sequence) and not isinstance(obj, str) and len(obj) == 2:
        (name, values), lo, hi = obj, None, None
    else:
        raise ValueError(f"{where}: expected {{'name': ..., 'values': ...}} or (name, values), got {obj!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: name must be a non-empty string, got {name!r}")
    if values is None:
        bounds = []
        for field, x in (("min", lo), ("max", hi)):
            if x is None:
                continue
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                raise ValueError(f"feature {name!r}: {field} must be a finite number, got {x!r}")
            bounds.append(x)
        if (lo is None) != (hi is None) or (bounds and not bounds[0] < bounds[1]):
            raise ValueError(f"feature {name!r}: give both min and max, with min < max (got {lo!r}, {hi!r})")
        return Feature(name, None, None if lo is None else float(lo), None if hi is None else float(hi))
    if lo is not None or hi is not None:
        raise ValueError(f"feature {name!r}: min/max are for numeric features (values None)")
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ValueError(f"feature {name!r}: values must be a list of strings or None, got {values!r}")
    vals = tuple(values)
    if len(vals) < 2 or not all(isinstance(v, str) for v in vals) or len(set(vals)) != len(vals):
        raise ValueError(f"feature {name!r}: values must be at least 2 distinct strings, got {list(vals)!r}")
    return Feature(name, vals)


def and_matrix(height: int) -> np.ndarray:
    """A (L x I): +1 if leaf l is in the left subtree of internal node n, -1 in the right, 0 otherwise."""
    n_leaves, n_internal = 2**height, 2**height - 1
    a = np.zeros((n_leaves, n_internal))
    for leaf in range(n_leaves):
        node = leaf + n_internal  # heap index of the leaf
        while node > 0:
            parent = (node - 1) // 2
            a[leaf, parent] = 1.0 if node == 2 * parent + 1 else -1.0
            node = parent
    return a


@dataclass
class Route:
    """A forward pass, kept for the backward pass."""

    x: np.ndarray
    z: np.ndarray
    a: np.ndarray
    leaf: int


def route(w: np.ndarray, b: np.ndarray, and_a: np.ndarray, x: np.ndarray) -> Route:
    z = w @ x + b
    phi = np.abs(z).sum() / z.size
    q = 2 * ((z >= 0) * phi) - phi
    y = and_a @ q
    e = np.exp(y - y.max())
    a = e / e.sum()
    return Route(x, z, a, int(a.argmax()))


def router_gradient(r: Route, and_a: np.ndarray, g_leaf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dL/dW, dL/db) for the loss gradient ``g_leaf`` (= G) with respect to the one-hot leaf selector."""
    dy = r.a * (g_leaf - np.sum(g_leaf * r.a))  # softmax; argmax is the identity (straight through)
    dq = and_a.T @ dy  # AND layer
    dz = 2 * dq * (np.abs(r.z) <= 1)  # q = 2 phi [z >= 0] - phi, phi constant; STE zero where |z| > 1
    return np.outer(dz, r.x), dz


class AutoScope(OnlineTuner):
    """Contextual tuning over a learned tree of BlueFin leaves. ``predict`` needs a context (a mapping)."""

    algorithm = "autoscope"
    supported_types = (Integer, Real)
    contextual = True

    def __init__(
        self,
        parameters: Any,
        features: Sequence[Any],
        height: int = 3,
        eta: float = 0.01,
        delta: float = 0.1,
        optimizer: str = "rmsprop",
        leaf_algorithm: str = "bluefin",
        leaf_algorithm_args: dict[str, Any] | None = None,
        internal_weights: Sequence[Sequence[float]] | None = None,
        fix_internal_weights: bool = False,
        random_seed: int | None = None,
        autoscope_upstream_quirks: bool = False,
    ):
        super().__init__(
            parameters,
            {
                "features": [as_feature(f, i).to_dict() for i, f in enumerate(features)],
                "height": height,
                "eta": eta,
                "delta": delta,
                "optimizer": optimizer,
                "leaf_algorithm": leaf_algorithm,
                "leaf_algorithm_args": leaf_algorithm_args,
                "internal_weights": None if internal_weights is None else np.asarray(internal_weights).tolist(),
                "fix_internal_weights": fix_internal_weights,
                "random_seed": random_seed,
                "autoscope_upstream_quirks": autoscope_upstream_quirks,
            },
        )
        self.features = tuple(as_feature(f, i) for i, f in enumerate(features))
        if not self.features:
            raise ValueError("autoscope needs at least one context feature")
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be distinct: {names!r}")
        if isinstance(height, bool) or not isinstance(height, int) or not 1 <= height <= 10:
            raise ValueError(f"height must be an integer in [1, 10], got {height!r}")
        if isinstance(eta, bool) or not isinstance(eta, int | float) or not (math.isfinite(eta) and eta > 0):
            raise ValueError(f"eta (the router's learning rate) must be a positive number, got {eta!r}")
        if leaf_algorithm != "bluefin":
            raise ValueError(f"leaf_algorithm must be 'bluefin' (the only leaf algorithm), got {leaf_algorithm!r}")
        if leaf_algorithm_args is not None and not isinstance(leaf_algorithm_args, dict):
            raise ValueError(f"leaf_algorithm_args must be a dict or None, got {type(leaf_algorithm_args).__name__}")
        for flag, value in (("fix_internal_weights", fix_internal_weights), ("quirks", autoscope_upstream_quirks)):
            if not isinstance(value, bool):
                raise ValueError(f"{flag} must be a bool, got {value!r}")
        if random_seed is not None and (isinstance(random_seed, bool) or not isinstance(random_seed, int)):
            raise ValueError(f"random_seed must be an integer or None, got {random_seed!r}")
        self.quirks = autoscope_upstream_quirks
        if not self.quirks:
            for f in self.features:
                if f.values is None and f.min is None:
                    raise ValueError(
                        f"numeric feature {f.name!r} needs min and max, to be scaled to [-1, 1] "
                        "(or set autoscope_upstream_quirks=True to use raw values)"
                    )
        self.height = height
        self.eta = float(eta)
        self.delta = delta  # unused, as upstream
        self.frozen = fix_internal_weights
        n_internal, n_in = 2**height - 1, sum(f.width for f in self.features)
        self.n_inputs = n_in
        self.and_a = and_matrix(height)
        if internal_weights is not None:
            w = np.array(internal_weights, dtype=np.float64)
            if w.shape != (n_internal, n_in) or not np.isfinite(w).all():
                raise ValueError(f"internal_weights must be a finite {n_internal} x {n_in} matrix, got shape {w.shape}")
        else:
            bound = 1 / math.sqrt(n_in)
            init_rng = np.random.default_rng(None if self.quirks else random_seed)
            w = init_rng.uniform(-bound, bound, size=(n_internal, n_in))
        self.w: np.ndarray = w
        self.b: np.ndarray = np.zeros(n_internal)
        self.opt_w = Optimizer(optimizer, w.shape, {"eta": self.eta})
        self.opt_b = Optimizer(optimizer, self.b.shape, {"eta": self.eta})
        leaf_args = dict(leaf_algorithm_args or {})
        seed = leaf_args.get("random_seed")
        self.leaves: list[BlueFin] = []
        for i in range(2**height):
            args = dict(leaf_args)
            if seed is not None and not self.quirks:
                args["random_seed"] = seed + i
            self.leaves.append(BlueFin(self.params, **args))

    # Routing -----------------------------------------------------------------------------------
    def encode(self, data: Mapping[str, Any] | None) -> np.ndarray:
        """The feature vector x of a context's data (one-hot blocks and scaled numbers, feature order)."""
        if data is None:
            raise ValueError("autoscope needs a context: predict({feature: value, ...})")
        unknown = sorted(set(data) - {f.name for f in self.features})
        if unknown:
            known = [f.name for f in self.features]
            raise ValueError(f"context has unknown feature {unknown[0]!r}; the features are {known}")
        x = np.zeros(self.n_inputs)
        i = 0
        for f in self.features:
            if f.name not in data:
                raise ValueError(f"context is missing feature {f.name!r}")
            v = data[f.name]
            if f.values is None:
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise ValueError(f"context feature {f.name!r} must be a finite number, got {v!r}")
                if self.quirks or f.min is None or f.max is None:
                    x[i] = v
                else:
                    x[i] = min(1.0, max(-1.0, 2 * (v - f.min) / (f.max - f.min) - 1))
            else:
                if not isinstance(v, str) or v not in f.values:
                    raise ValueError(f"context feature {f.name!r} must be one of {list(f.values)!r}, got {v!r}")
                x[i + f.values.index(v)] = 1.0
            i += f.width
        return x

    def route(self, data: Mapping[str, Any] | None) -> Route:
        return route(self.w, self.b, self.and_a, self.encode(data))

    def leaf_of(self, data: Mapping[str, Any]) -> int:
        """The leaf a context routes to now."""
        return self.route(data).leaf

    # OnlineTuner hooks -------------------------------------------------------------------------
    def _predict(self, context: Context) -> tuple[dict[str, Any], dict[str, Any] | None]:
        leaf = self.route(context.data).leaf
        return self.leaves[leaf].internal_prediction(), {"leaf": leaf}

    def _set_reward(self, request: TuningRequest, reward: float) -> None:
        r = self.route(request.context.data)
        if not self.quirks:
            self._iteration += 1
        if request.metadata is None or r.leaf != request.metadata.get("leaf"):
            return  # the context routes elsewhere now: the reward belongs to no current leaf
        centres = np.stack([leaf.centre for leaf in self.leaves])  # before the leaf's update
        leaf = self.leaves[r.leaf]
        leaf.update(reward)
        if not leaf.first_half or leaf.last_gradient is None:
            return  # first half of a pair: no gradient yet
        if self.frozen:
            return
        g_sel = -(centres @ leaf.last_gradient)  # G_l = -<g, C_l>
        dw, db = router_gradient(r, self.and_a, g_sel)
        self.w = self.w - self.opt_w.step(dw)
        self.b = self.b - self.opt_b.step(db)

    def _dump_state(self) -> dict[str, Any]:
        return {
            "w": self.w.tolist(),
            "b": self.b.tolist(),
            "router_optimizer": {"w": self.opt_w.dump(), "b": self.opt_b.dump()},
            "leaves": [leaf._dump_state() for leaf in self.leaves],
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.w = st.array(state["w"], self.w.shape)
        self.b = st.array(state["b"], self.b.shape)
        self.opt_w.load(state["router_optimizer"]["w"])
        self.opt_b.load(state["router_optimizer"]["b"])
        leaves = state["leaves"]
        if not isinstance(leaves, list) or len(leaves) != len(self.leaves):
            raise st.StateError(f"expected {len(self.leaves)} leaf states")
        for leaf, s in zip(self.leaves, leaves, strict=True):
            leaf._load_state(s)
