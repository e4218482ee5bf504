"""The interaction protocol shared by every online tuner (spec section 1), and its persistence.

One **round** is ``predict(context)`` -> apply the configuration and measure -> optionally
``store_reward(request_id, r)`` -> ``set_reward(r, context_id)``. The bookkeeping follows upstream
(OPPerTune v0.2) exactly, because an adapter that runs one round per scheduled job depends on it:

* every ``predict`` appends a **pending request** (a fresh UUID4 id, the context, the
  configuration, the algorithm's metadata, no reward yet);
* **predict is idempotent until a reward arrives**: if a request is pending for the same context,
  the algorithm is not asked again; the newest pending configuration is returned under a new id.
  A run that dies after ``predict`` and reloads its persisted state re-applies the same
  configuration instead of drawing a new one (and consuming the RNG);
* ``set_reward(r, context_id)`` passes the **newest** pending request of that context, with ``r``,
  to the algorithm, then deletes every pending request of the context. With nothing pending it
  raises. Rewards stored with ``store_reward`` on older requests are not used: the caller combines
  them (``get_tuning_requests``) and passes one reward;
* constant parameters never reach the algorithm and always come back with their ``val``; a
  configuration follows the user's parameter order.

Two decisions of ours: a NaN or infinite reward is refused before anything changes (D3), and a
tuner that is not contextual refuses a context (upstream accepts it and then mixes the pending
requests of different contexts into one learner, which silently corrupts a two-point pair).

Subclasses implement ``_predict`` (internal values and metadata), ``_set_reward`` (the update),
``_dump_state`` and ``_load_state``; this class owns parameters, requests and the state envelope.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from knobflow.tuners.online import state as st
from knobflow.tuners.online.params import (
    Categorical,
    Integer,
    Parameter,
    ParameterError,
    Real,
    as_parameters,
    converter,
    transform,
)


class NoPendingRequestError(ValueError):
    """``set_reward`` was called for a context with no pending request (call ``predict`` first)."""


class UnknownRequestError(ValueError):
    """``store_reward`` was given a request id that is not pending."""


def context_id(data: Mapping[str, Any] | None) -> str:
    """The id of a context: SHA-256 of its JSON with sorted keys, or "" for no context (upstream's rule)."""
    if data is None:
        return ""
    try:
        text = json.dumps(data, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"context data must be JSON-serialisable: {e}") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Context:
    """A context: its data (a JSON-able mapping, or None) and its id (computed from the data if not given)."""

    data: Mapping[str, Any] | None = None
    id: str = ""

    def __post_init__(self) -> None:
        if self.data is not None and not isinstance(self.data, Mapping):
            raise ValueError(f"context data must be a mapping or None, got {type(self.data).__name__}")
        if not isinstance(self.id, str):
            raise ValueError(f"context id must be a string, got {self.id!r}")
        if self.id == "":
            object.__setattr__(self, "id", context_id(self.data))

    def to_dict(self) -> dict[str, Any]:
        return {"data": None if self.data is None else json.loads(json.dumps(self.data)), "id": self.id}


_NO_CONTEXT = Context()


@dataclass
class TuningRequest:
    """One pending prediction. ``prediction`` is the full configuration in user units."""

    id: str
    context: Context
    prediction: dict[str, Any]
    metadata: dict[str, Any] | None = None
    reward: float | None = None
    reward_data: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "context": self.context.to_dict(),
            "prediction": dict(self.prediction),
            "metadata": copy.deepcopy(self.metadata),
            "reward": self.reward,
            "reward_data": copy.deepcopy(self.reward_data),
        }

    @classmethod
    def from_dict(cls, d: Any) -> TuningRequest:
        if not isinstance(d, dict):
            raise st.StateError(f"a pending request must be an object, got {d!r}")
        ctx = d["context"]
        reward = d["reward"]
        return cls(
            id=str(d["id"]),
            context=Context(ctx["data"], ctx["id"]),
            prediction=dict(d["prediction"]),
            metadata=d["metadata"],
            reward=None if reward is None else st.num(reward),
            reward_data=d["reward_data"],
        )


def new_request_id() -> str:
    """A random UUID4 string, as ``str(uuid.uuid4())`` gives, at a fifth of its cost (it is made every round)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"


def check_reward(reward: Any) -> float:
    """A reward as a float; NaN, infinities and non-numbers are refused (D3), before any state changes."""
    if isinstance(reward, bool) or not isinstance(reward, int | float | np.integer | np.floating):
        raise ValueError(f"reward must be a number, got {reward!r}")
    r = float(reward)
    if not math.isfinite(r):
        raise ValueError(f"reward must be finite, got {r!r}; nothing was changed")
    return r


def _json_copy(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON-serialisable (it is part of the persisted state): {e}") from None


class OnlineTuner:
    """Base class: parameters, the pending-request list, the protocol and the state envelope."""

    algorithm: ClassVar[str] = ""  # the registry key, written into the state document
    supported_types: ClassVar[tuple[type, ...]] = (Categorical, Integer, Real)
    contextual: ClassVar[bool] = False

    def __init__(self, parameters: Any, args: dict[str, Any]):
        self.raw_params: tuple[Parameter, ...] = as_parameters(parameters)
        for p in self.raw_params:
            if not isinstance(p, self.supported_types):
                kinds = ", ".join(t.__name__ for t in self.supported_types)
                raise ParameterError(
                    f"parameter {p.name!r}: {self.algorithm} tunes only {kinds} parameters, not {type(p).__name__}"
                )
        # The algorithm's view: transformed, constants removed, user order kept.
        self.params: tuple[Parameter, ...] = tuple(transform(p) for p in self.raw_params if not p.is_constant)
        self._to_user = [(p.name, converter(p)) for p in self.raw_params]
        self._args = _json_copy(args, "constructor arguments")
        self._pending: list[TuningRequest] = []
        self._iteration = 0

    # The protocol -------------------------------------------------------------------------------
    @property
    def iteration(self) -> int:
        """The algorithm's counter (its meaning differs per algorithm; see each class)."""
        return self._iteration

    def predict(self, context: Context | Mapping[str, Any] | None = None) -> tuple[dict[str, Any], str]:
        """``(configuration, request_id)``; the same configuration again while a request is pending."""
        ctx = self._as_context(context)
        newest = self._newest(ctx.id)
        if newest is None:
            internal, metadata = self._predict(ctx)
            config = {name: conv(internal.get(name)) for name, conv in self._to_user}
            request = TuningRequest(new_request_id(), ctx, config, metadata)
        else:
            request = TuningRequest(
                new_request_id(), newest.context, dict(newest.prediction), copy.deepcopy(newest.metadata)
            )
        self._pending.append(request)
        return dict(request.prediction), request.id

    def store_reward(self, request_id: str, reward: float, reward_data: Any = None) -> None:
        """Annotate a pending request with a reward (and JSON-able data); the algorithm does not learn yet."""
        r = check_reward(reward)
        data = _json_copy(reward_data, "reward_data")
        for request in self._pending:
            if request.id == request_id:
                request.reward, request.reward_data = r, data
                return
        raise UnknownRequestError(f"no pending request with id {request_id!r}")

    def get_tuning_requests(self, context_id: Any = None) -> list[TuningRequest]:
        """Copies of the pending requests of a context (a context id, Context or mapping); all when None."""
        if context_id is None:
            return [copy.deepcopy(r) for r in self._pending]
        cid = self._as_context_id(context_id)
        return [copy.deepcopy(r) for r in self._pending if r.context.id == cid]

    def set_reward(self, reward: float | None, context_id: Any = "") -> None:
        """Learn from ``reward`` for the newest pending request of the context, then clear its requests."""
        cid = self._as_context_id(context_id)
        if reward is None:
            raise ValueError(
                f"{self.algorithm} learns from one reward per round; reward=None is only for algorithms "
                "that consume a sequence of rewards (identity, uniform_random)"
            )
        r = check_reward(reward)
        newest = self._newest(cid)
        if newest is None:
            where = "no context" if cid == "" else f"context id {cid!r}"
            raise NoPendingRequestError(f"set_reward: no pending request for {where}; call predict() first")
        self._set_reward(newest, r)  # the request is deleted next, so it is not annotated
        self._pending = [q for q in self._pending if q.context.id != cid]

    # Persistence ---------------------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        """The whole state as a JSON-able dict (see :mod:`knobflow.tuners.online.state`)."""
        return {
            "format": st.FORMAT,
            "version": st.VERSION,
            "algorithm": self.algorithm,
            "parameters": [p.to_dict() for p in self.raw_params],
            "args": copy.deepcopy(self._args),
            "iteration": self._iteration,
            "pending": [r.to_dict() for r in self._pending],
            "state": self._dump_state(),
        }

    def load(self, doc: Any) -> None:
        """Replace this tuner's state by ``doc`` (from :meth:`dump`), all or nothing.

        The document must be of this algorithm, with the same parameters and constructor arguments
        (a tuner built from a changed experiment must not silently continue an old state; use
        :func:`knobflow.tuners.online.from_state` to restore a document as it is). On any error a
        :class:`StateError` is raised and this tuner is left unchanged.
        """
        check_header(doc, self.algorithm)
        if not isinstance(doc.get("parameters"), list) or not isinstance(doc.get("args"), dict):
            raise st.StateError("malformed state document: parameters must be a list and args an object")
        try:
            params = [p.to_dict() for p in as_parameters(doc["parameters"])]
        except ParameterError as e:
            raise st.StateError(f"malformed state document: {e}") from None
        mine = [p.to_dict() for p in self.raw_params]
        if params != mine:
            raise st.StateError(f"the state's parameters differ from this tuner's: {params!r} != {mine!r}")
        if doc["args"] != self._args:
            raise st.StateError(f"the state's arguments differ from this tuner's: {doc['args']!r} != {self._args!r}")
        fresh = type(self).from_doc(doc)
        self.__dict__.clear()
        self.__dict__.update(fresh.__dict__)

    @classmethod
    def from_doc(cls, doc: Any) -> OnlineTuner:
        """A new tuner restored from a state document of this class's algorithm."""
        check_header(doc, cls.algorithm)
        try:
            tuner = cls(doc["parameters"], **doc["args"])
            tuner._iteration = st.integer(doc["iteration"], 0)
            pending = doc["pending"]
            if not isinstance(pending, list):
                raise st.StateError("pending must be a list")
            tuner._pending = [TuningRequest.from_dict(r) for r in pending]
            state = doc["state"]
            if not isinstance(state, dict):
                raise st.StateError("state must be an object")
            tuner._load_state(state)
        except st.StateError as e:
            raise st.StateError(f"malformed {cls.algorithm} state document: {e}") from None
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise st.StateError(f"malformed {cls.algorithm} state document: {type(e).__name__}: {e}") from None
        return tuner

    # For subclasses ------------------------------------------------------------------------------
    def _predict(self, context: Context) -> tuple[dict[str, Any], dict[str, Any] | None]:
        raise NotImplementedError

    def _set_reward(self, request: TuningRequest, reward: float) -> None:
        raise NotImplementedError

    def _dump_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    # Helpers -------------------------------------------------------------------------------------
    def _newest(self, cid: str) -> TuningRequest | None:
        for request in reversed(self._pending):
            if request.context.id == cid:
                return request
        return None

    def _as_context(self, context: Any) -> Context:
        if context is None:
            ctx = _NO_CONTEXT
        elif isinstance(context, Context):  # copied: a request must not change when the caller's dict does
            data = context.data
            ctx = context if data is None else Context(_json_copy(dict(data), "context data"), context.id)
        elif isinstance(context, Mapping):
            ctx = Context(_json_copy(dict(context), "context data"))
        else:
            raise ValueError(f"context must be a Context, a mapping or None, got {type(context).__name__}")
        if not self.contextual and (ctx.data is not None or ctx.id != ""):
            raise ValueError(f"{self.algorithm} is not contextual: call predict() without a context (autoscope is)")
        return ctx

    @staticmethod
    def _as_context_id(context_id: Any) -> str:
        if isinstance(context_id, str):
            return context_id
        if context_id is None:
            return ""
        if isinstance(context_id, Context):
            return context_id.id
        if isinstance(context_id, Mapping):
            return Context(dict(context_id)).id
        raise ValueError(f"context_id must be a string, a Context or a mapping, got {type(context_id).__name__}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.params)} tuned of {len(self.raw_params)} parameters)"


def check_header(doc: Any, algorithm: str) -> None:
    """Refuse a document that is not ours, of an unknown version, or of another algorithm."""
    if not isinstance(doc, Mapping):
        raise st.StateError(f"a state document must be a JSON object, got {type(doc).__name__}")
    if doc.get("format") != st.FORMAT:
        raise st.StateError(f"not a knobflow online-tuner state (format {doc.get('format')!r}, expected {st.FORMAT!r})")
    if doc.get("version") != st.VERSION:
        raise st.StateError(
            f"unsupported state version {doc.get('version')!r}: this knobflow reads version {st.VERSION}"
        )
    if doc.get("algorithm") != algorithm:
        raise st.StateError(f"the state is of algorithm {doc.get('algorithm')!r}, not {algorithm!r}")


__all__ = [
    "Context",
    "NoPendingRequestError",
    "OnlineTuner",
    "TuningRequest",
    "UnknownRequestError",
    "check_header",
    "check_reward",
    "context_id",
]
