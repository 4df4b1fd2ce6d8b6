"""Pure workflow logic: condition expressions, their safe JSON form, readiness decisions, memo keys.

Conditions are small immutable trees built with `&`, `|` and `~` on job predicates
(`a.completed & ~b.failed`).  They are evaluated in three-valued (Kleene) logic over the jobs'
current states: a predicate on a job that has not finished yet is *unknown*, so a job runs as
soon as its condition is certainly true, is cancelled as soon as it can no longer become true,
and waits otherwise (`x.completed | y.completed` is not cancelled while y may still complete).
The JSON form is parsed field by field (never eval), so conditions can live in the database.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

WAITING, RUNNING, COMPLETED, FAILED, CANCELLED = "WAITING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"
JOB_STATES = (WAITING, RUNNING, COMPLETED, FAILED, CANCELLED)
TERMINAL_STATES = frozenset({COMPLETED, FAILED, CANCELLED})
PREDICATES = {"completed": COMPLETED, "failed": FAILED, "cancelled": CANCELLED}
MAX_CONDITION_DEPTH = 64


class ConditionError(ValueError):
    """A condition is malformed (bad JSON form, unknown predicate, unknown job, cycle)."""


class Condition:
    """Base of condition expressions; combine with `&` (and), `|` (or), `~` (not)."""

    def __and__(self, other: Condition) -> Condition:
        _require_condition(other, "&")
        return AllOf(_flatten(AllOf, (self, other)))

    def __or__(self, other: Condition) -> Condition:
        _require_condition(other, "|")
        return AnyOf(_flatten(AnyOf, (self, other)))

    def __invert__(self) -> Condition:
        return Not(self)

    def __bool__(self) -> bool:
        # `if a.completed:` would silently be always true; a condition is not a state.
        raise TypeError("a workflow condition is not a boolean; combine it with & | ~ or read handle.state")


@dataclass(frozen=True, eq=True)
class Is(Condition):
    """Job `label` ended in `state` (one of PREDICATES' values)."""

    label: str
    state: str

    def __post_init__(self) -> None:
        if self.state not in PREDICATES.values():
            raise ConditionError(f"unknown job state {self.state!r} in a condition")

    def __str__(self) -> str:
        return f"{self.label}.{self.state.lower()}"


@dataclass(frozen=True, eq=True)
class AllOf(Condition):
    terms: tuple[Condition, ...]

    def __str__(self) -> str:
        return " & ".join(_bracket(t) for t in self.terms)


@dataclass(frozen=True, eq=True)
class AnyOf(Condition):
    terms: tuple[Condition, ...]

    def __str__(self) -> str:
        return " | ".join(_bracket(t) for t in self.terms)


@dataclass(frozen=True, eq=True)
class Not(Condition):
    term: Condition

    def __str__(self) -> str:
        return f"~{_bracket(self.term)}"


def _require_condition(other, op: str) -> None:
    if not isinstance(other, Condition):
        raise TypeError(f"cannot combine a condition with {type(other).__name__} using {op!r}")


def _flatten(kind: type, terms: Iterable[Condition]) -> tuple[Condition, ...]:
    out: list[Condition] = []
    for t in terms:
        out.extend(t.terms if isinstance(t, kind) else (t,))
    return tuple(out)


def _bracket(term: Condition) -> str:
    return f"({term})" if isinstance(term, (AllOf, AnyOf)) else str(term)


# ---------------------------------------------------------------- JSON form

def condition_to_json(cond: Condition | None) -> dict | None:
    """The JSON-ready form: {"job": label, "is": "completed"}, {"and": [...]}, {"or": [...]}, {"not": {...}}."""
    if cond is None:
        return None
    if isinstance(cond, Is):
        return {"job": cond.label, "is": cond.state.lower()}
    if isinstance(cond, AllOf):
        return {"and": [condition_to_json(t) for t in cond.terms]}
    if isinstance(cond, AnyOf):
        return {"or": [condition_to_json(t) for t in cond.terms]}
    if isinstance(cond, Not):
        return {"not": condition_to_json(cond.term)}
    raise TypeError(f"not a workflow condition: {type(cond).__name__}")


def condition_from_json(data, depth: int = 0) -> Condition | None:
    """Rebuild a condition from its JSON form, checking every node (raises ConditionError)."""
    if data is None and depth == 0:
        return None
    if depth > MAX_CONDITION_DEPTH:
        raise ConditionError(f"condition nested deeper than {MAX_CONDITION_DEPTH} levels")
    if not isinstance(data, dict):
        raise ConditionError(f"condition node must be an object, got {type(data).__name__}")
    keys = set(data)
    if keys == {"job", "is"}:
        label, pred = data["job"], data["is"]
        if not isinstance(label, str) or not label:
            raise ConditionError(f"condition job label must be a non-empty string, got {label!r}")
        if pred not in PREDICATES:
            raise ConditionError(f"unknown predicate {pred!r}; expected one of {sorted(PREDICATES)}")
        return Is(label, PREDICATES[pred])
    if keys in ({"and"}, {"or"}):
        (op,) = keys
        terms = data[op]
        if not isinstance(terms, list) or len(terms) < 2:
            raise ConditionError(f"'{op}' needs a list of at least two conditions, got {terms!r:.80}")
        parsed = tuple(condition_from_json(t, depth + 1) for t in terms)
        return AllOf(parsed) if op == "and" else AnyOf(parsed)
    if keys == {"not"}:
        return Not(condition_from_json(data["not"], depth + 1))
    raise ConditionError(f"condition node has unexpected keys {sorted(keys)}")


def condition_to_text(cond: Condition | None) -> str | None:
    """Canonical JSON text for the database column."""
    data = condition_to_json(cond)
    return None if data is None else canonical_json(data)


def condition_from_text(text: str | None) -> Condition | None:
    if text is None or text == "":
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConditionError(f"stored condition is not JSON: {exc}") from None
    return condition_from_json(data)


# ---------------------------------------------------------------- evaluation

def calc_labels(cond: Condition | None) -> frozenset[str]:
    """Every job label the condition mentions."""
    if cond is None:
        return frozenset()
    if isinstance(cond, Is):
        return frozenset({cond.label})
    if isinstance(cond, Not):
        return calc_labels(cond.term)
    return frozenset().union(*(calc_labels(t) for t in cond.terms))


def calc_truth(cond: Condition, states: Mapping[str, str]) -> bool | None:
    """Kleene truth of `cond` given job states: True, False, or None (not decided yet)."""
    if isinstance(cond, Is):
        if cond.label not in states:
            raise ConditionError(f"condition refers to unknown job {cond.label!r}")
        state = states[cond.label]
        return (state == cond.state) if state in TERMINAL_STATES else None
    if isinstance(cond, Not):
        inner = calc_truth(cond.term, states)
        return None if inner is None else not inner
    values = [calc_truth(t, states) for t in cond.terms]
    if isinstance(cond, AllOf):
        if any(v is False for v in values):
            return False
        return True if all(v is True for v in values) else None
    if any(v is True for v in values):
        return True
    return False if all(v is False for v in values) else None


@dataclass(frozen=True)
class Decision:
    action: Literal["run", "cancel", "wait"]
    reason: str | None = None


def calc_decision(cond: Condition | None, states: Mapping[str, str],
                  reasons: Mapping[str, str | None] | None = None) -> Decision:
    """What to do with a waiting job: run it, cancel it (with the reason), or keep waiting."""
    if cond is None:
        return Decision("run")
    truth = calc_truth(cond, states)
    if truth is None:
        return Decision("wait")
    if truth:
        return Decision("run")
    reasons = reasons or {}
    parts = []
    for label in sorted(calc_labels(cond)):
        state = states[label]
        if state in TERMINAL_STATES:
            why = reasons.get(label) if state != COMPLETED else None
            parts.append(f"{label} {state}" + (f" ({why.splitlines()[0][:200]})" if why else ""))
    return Decision("cancel", f"condition `{cond}` can no longer be true: {'; '.join(parts)}")


def calc_cycle(label: str, cond: Condition | None, conditions: Mapping[str, Condition | None]) -> list[str] | None:
    """A dependency path back to `label` if giving it `cond` would create a cycle, else None."""
    stack = [(dep, [label, dep]) for dep in sorted(calc_labels(cond))]
    seen: set[str] = set()
    while stack:
        current, path = stack.pop()
        if current == label:
            return path
        if current in seen:
            continue
        seen.add(current)
        stack.extend((dep, path + [dep]) for dep in sorted(calc_labels(conditions.get(current))))
    return None


# ---------------------------------------------------------------- memo keys

def canonical_json(value) -> str:
    """Deterministic JSON (sorted keys, no whitespace, no NaN) so equal values give equal keys."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class MemoParts:
    """Everything a job's result depends on.

    input_digests: content hashes of the input files, in order (names do not matter, contents do);
    upstream_keys: memo keys of the completed prerequisites named in the condition (those the job
    started on: see calc_upstream_key_sets), so that a changed upstream step also invalidates what
    follows even when no file carries the change.
    """

    jobtype: str
    jobtype_version: str
    program_versions: Mapping[str, str]
    appion_version: str
    params: Mapping
    input_digests: Sequence[str]
    upstream_keys: Sequence[str]


def calc_memo_key(parts: MemoParts) -> str:
    """SHA-256 hex of the canonical JSON of the parts."""
    payload = {
        "jobtype": parts.jobtype,
        "jobtype_version": parts.jobtype_version,
        "programs": dict(parts.program_versions),
        "appion": parts.appion_version,
        "params": parts.params,
        "inputs": list(parts.input_digests),
        "upstream": sorted(parts.upstream_keys),
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


MAX_SUBSET_LABELS = 10  # beyond this many finished prerequisites only the full set is tried


def calc_upstream_key_sets(cond: Condition | None, states: Mapping[str, str],
                           keys: Mapping[str, str | None]) -> list[tuple[str, ...]]:
    """The upstream-key sets a job whose condition holds may have been memoised under, best first.

    The first set is the memo keys of every completed prerequisite now: the key a new execution is
    stored under.  A job starts as soon as its condition is certainly true, so with an `|` (or a
    `~`) it may have started while other prerequisites were still running, and its key then holds
    only the prerequisites finished at that moment, which depends on timing.  On an identical rerun
    the prerequisites come from the memo in one pass, so more of them have finished when the job is
    decided.  The later sets are therefore those of every smaller group of finished prerequisites
    that by itself (the others taken as still running) already makes the condition true, largest
    groups first, then by label: the situations in which the job could have started before.  A memo
    entry under any of them is a result computed from exactly those prerequisites' outputs.
    """
    if cond is None:
        return [()]
    labels = sorted(calc_labels(cond))
    finished = [lb for lb in labels if states[lb] in TERMINAL_STATES]

    def key_set(group) -> tuple[str, ...]:
        return tuple(sorted(k for lb in group if states[lb] == COMPLETED and (k := keys.get(lb))))

    out = [key_set(finished)]
    if len(finished) > MAX_SUBSET_LABELS:
        return out
    for size in range(len(finished) - 1, -1, -1):
        for group in itertools.combinations(finished, size):
            unknown = {lb: RUNNING for lb in finished if lb not in group}
            if calc_truth(cond, {**states, **unknown}) is True:
                candidate = key_set(group)
                if candidate not in out:
                    out.append(candidate)
    return out
