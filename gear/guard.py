"""A stage sees only the params it declares (gear/dag.py): a read-only view of Params that
lets through the declared dotted keys (and everything below a declared section) and refuses any
other read with UndeclaredParam, naming the key and the stage.

So the params a stage records in its outputs (gear/provenance.py), the keys DVC reruns it on
and the digest Snakemake reruns it on are exactly the params it can have read: a stage that
reads an undeclared key fails the moment it does, in every test that runs it.

Methods and properties of the params dataclasses run with the view as `self`, so what they read
is checked too. `record` mode (declared=None) lets everything through and collects the keys read:
how a declaration is audited (`python -m gear.dag --audit`).
"""
from __future__ import annotations

import copy
import dataclasses
import types
from operator import attrgetter


class UndeclaredParam(AttributeError):
    """A stage read a params key its declaration in gear/dag.py does not list (a bug, not bad input)."""


def _covered(key: str, declared: frozenset[str]) -> bool:
    """key or one of its sections is declared."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in declared for i in range(1, len(parts) + 1))


class ParamsView:
    __slots__ = ("_obj", "_declared", "_prefix", "_reads", "_stage", "_copy", "_free")

    def __init__(self, obj, declared: frozenset[str] | None, stage: str, prefix: str = "", reads: set | None = None,
                 copy: bool = False, free: frozenset[str] = frozenset()):
        object.__setattr__(self, "_free", free)  # readable, not part of what the stage declares (gear/dag.py FREE)
        object.__setattr__(self, "_copy", copy)  # a stage's own deep copy may be edited (never the params it got)
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_declared", declared)
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_reads", set() if reads is None else reads)
        object.__setattr__(self, "_stage", stage)

    @property
    def reads(self) -> set[str]:
        return self._reads

    def _allowed(self, key: str) -> bool:
        return self._declared is None or _covered(key, self._declared)

    def __getattr__(self, name: str):
        obj = self._obj
        attr = getattr(type(obj), name, None)
        if isinstance(attr, property):            # computed from fields: read them through the view
            return attr.fget(self)
        if isinstance(attr, types.FunctionType):   # a method: bound to the view
            return types.MethodType(attr, self)
        key = self._prefix + name
        value = getattr(obj, name)
        if dataclasses.is_dataclass(value):
            if self._declared is not None and not (_covered(key, self._declared | self._free)
                                                   or any(d.startswith(key + ".") for d in self._declared | self._free)):
                raise UndeclaredParam(f"stage {self._stage} reads params section {key}, which its declaration in "
                                      f"gear/dag.py does not list")
            return ParamsView(value, self._declared, self._stage, key + ".", self._reads, self._copy, self._free)
        if key in self._free:
            return copy.deepcopy(value)
        if not self._allowed(key):
            raise UndeclaredParam(f"stage {self._stage} reads params key {key}, which its declaration in "
                                  f"gear/dag.py does not list")
        self._reads.add(key)
        return copy.deepcopy(value) if isinstance(value, list) else value  # a stage cannot edit params

    def __setattr__(self, name: str, value) -> None:
        if not self._copy:
            raise AttributeError(f"params are read-only in a stage (tried to set {self._prefix}{name})")
        setattr(self._obj, name, value)

    def __deepcopy__(self, memo):
        return ParamsView(copy.deepcopy(self._obj, memo), self._declared, self._stage, self._prefix, self._reads, True,
                          self._free)

    def with_seed(self, seed: int) -> "ParamsView":
        """The same view whose compute.seed is the study seed (gear/study.py `seeded`)."""
        out = copy.deepcopy(self)
        out.compute.seed = seed
        return out

    def to_dict(self) -> dict:
        """The section as plain data: a read of every key below it."""
        out = {}
        for f in dataclasses.fields(self._obj):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, ParamsView) else v
        return out

    def digest(self, *sections: str) -> str:
        """Params.digest of the named keys, read through the view (only those are read)."""
        import hashlib
        import json

        if not sections:
            d = self.to_dict()
        else:
            d = {}
            for key in sections:
                v = attrgetter(key)(self)
                d[key] = v.to_dict() if isinstance(v, ParamsView) else v
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def unwrap(self):
        """The underlying params (for code that checks declarations, never for a stage's reads)."""
        return self._obj

    def __repr__(self) -> str:
        return f"ParamsView({self._stage}: {self._prefix or 'params'})"


def as_dict(section) -> dict:
    """A params section as plain data, from a stage's view (a read of every key below it) or from
    the params themselves."""
    return section.to_dict() if isinstance(section, ParamsView) else dataclasses.asdict(section)
