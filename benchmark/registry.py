"""Name -> class registries for methods, tasks and data sets.

Built-ins register themselves with a decorator when their module is imported. Outside packages
register through the entry-point groups ``selfparam_bench.methods``, ``selfparam_bench.tasks`` and
``selfparam_bench.datasets``: each entry point names a class (or a module whose import registers
one), so a third party adds a method without touching this repository. Each registry holds
subclasses of one interface of ``benchmark.api`` (``Method``, ``Task``, ``Dataset``) and refuses
anything else when it is registered.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from importlib import import_module
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from benchmark.api import Dataset, Method, Task
from benchmark.errors import BenchError

T = TypeVar("T", bound=type)  # what a registry holds: type[Method], type[Task] or type[Dataset]
C = TypeVar("C", bound=type)  # the class being registered (a subclass, kept as it is)


class Registry(Generic[T]):
    """A named collection of subclasses of ``base``, with lazy loading of built-ins and entry points."""

    def __init__(self, kind: str, group: str, builtin_package: str, base: type) -> None:
        self.kind = kind
        self.group = group
        self.builtin_package = builtin_package
        self.base = base
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[C], C]:
        def decorator(obj: C) -> C:
            if not (isinstance(obj, type) and issubclass(obj, self.base)):
                what = f"class {obj.__module__}.{obj.__qualname__}" if isinstance(obj, type) else repr(obj)
                raise TypeError(
                    f"cannot register {what} as {self.kind} {name!r}: a {self.kind} must be a "
                    f"subclass of {self.base.__module__}.{self.base.__qualname__}"
                )
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj  # type: ignore[assignment]  # C is a subclass of the registry's base
            # setattr: C is bound to type only, which declares no name (each base declares it as a ClassVar).
            setattr(obj, "name", name)  # noqa: B010
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a plug-in taken away again; tests use it to undo their registrations)."""
        self._items.pop(name, None)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        import_module(self.builtin_package)  # its __init__ imports every built-in module
        for ep in entry_points(group=self.group):
            if ep.name in self._items:
                continue
            obj = ep.load()
            if isinstance(obj, type):  # an entry point may name the class itself
                self.register(ep.name)(obj)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(sorted(self._items))
            raise BenchError(f"unknown {self.kind} {name!r}{hint}; known: {known}") from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._items.items())

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items


METHODS: Registry[type[Method]] = Registry("method", "selfparam_bench.methods", "methods", Method)
TASKS: Registry[type[Task]] = Registry("task", "selfparam_bench.tasks", "tasks", Task)
DATASETS: Registry[type[Dataset]] = Registry("dataset", "selfparam_bench.datasets", "tasks.data", Dataset)

M = TypeVar("M", bound=type[Method])
K = TypeVar("K", bound=type[Task])
D = TypeVar("D", bound=type[Dataset])


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: make a ``Method`` subclass available as ``--method name``."""
    return METHODS.register(name)


def register_task(name: str) -> Callable[[K], K]:
    """Class decorator: make a ``Task`` subclass available as ``--task name``."""
    return TASKS.register(name)


def register_dataset(name: str) -> Callable[[D], D]:
    """Class decorator: make a ``Dataset`` subclass available as ``--dataset name``."""
    return DATASETS.register(name)


def open_dataset(name: str, kind: str, path: str = "", seed: int = 0) -> Dataset:
    """The registered data set ``name`` opened on ``path`` (its default location when empty) with
    ``seed``. It must hold ``kind`` data (a data set's ``kind``, a task's ``dataset_kind``: ``qa``,
    ``crs``) and be loadable here; otherwise a one-line error says why."""
    cls = DATASETS.get(name)
    if cls.kind != kind:
        known = ", ".join(n for n, c in DATASETS.items() if c.kind == kind)
        raise BenchError(f"dataset {name!r} holds {cls.kind} data, not {kind} data; the {kind} data sets: {known}")
    reason = cls.unavailable_reason()
    if reason:
        raise BenchError(f"dataset {name!r} is unavailable: {reason}")
    return cls(path=path, seed=seed)
