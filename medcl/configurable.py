"""Rebuilding modules from checkpoints without unpickling code.

A checkpoint must be loadable with ``torch.load(..., weights_only=True)``, so it cannot hold pickled
modules. Instead, a module that inherits :class:`Configurable` records the arguments of its
constructor; :func:`module_spec` turns it into ``{"class_path": ..., "init_args": {...}}`` (plain JSON
types only), and :func:`instantiate_spec` rebuilds it — only for classes of medcl's own packages or of
an explicit allow-list, so a checkpoint or config can never make us import arbitrary code.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from collections.abc import Iterable
from typing import Any

from medcl.errors import ConfigError

__all__ = ["ALLOWED_PREFIXES", "Configurable", "check_class_path", "instantiate_spec", "module_spec"]

#: Module prefixes whose classes a checkpoint or config may name.
ALLOWED_PREFIXES: tuple[str, ...] = ("medcl.", "modalities.", "tasks.", "export.")


class Configurable:
    """Mixin: remembers the arguments its (most derived) constructor was called with.

    Every subclass that defines ``__init__`` gets it wrapped; the outermost call (the class that is
    being instantiated) stores ``self._init_args`` as a dict of keyword arguments, ``None`` when an
    argument is not plain JSON data (then the module cannot be rebuilt from a spec).
    """

    _init_args: dict[str, Any] | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self: Any, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            owner = next(k for k in type(self).__mro__ if "__init__" in k.__dict__)
            if owner is cls:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                recorded: dict[str, Any] | None = {}
                for name, value in list(bound.arguments.items())[1:]:
                    kind = signature.parameters[name].kind
                    if kind is inspect.Parameter.VAR_KEYWORD:
                        recorded.update(value)
                    elif kind is inspect.Parameter.VAR_POSITIONAL:
                        if value:  # positional extras cannot be replayed as keyword arguments
                            recorded = None
                            break
                    else:
                        recorded[name] = value
                object.__setattr__(self, "_init_args", _plain(recorded))

        cls.__init__ = recording_init  # type: ignore[method-assign]


def _plain(arguments: dict[str, Any] | None) -> dict[str, Any] | None:
    """The arguments if they survive a JSON round trip unchanged (tuples become lists), else None."""
    if arguments is None:
        return None
    try:
        return json.loads(json.dumps(arguments))
    except (TypeError, ValueError):
        return None


def module_spec(module: Any) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` of a :class:`Configurable` module, or ``None`` if it has none."""
    init_args = getattr(module, "_init_args", None)
    if init_args is None:
        return None
    cls = type(module)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def check_class_path(class_path: str, allowed: Iterable[str] = ALLOWED_PREFIXES) -> None:
    """Raise :class:`ConfigError` unless ``class_path`` lies under an allowed module prefix."""
    if not any(class_path.startswith(prefix) for prefix in allowed):
        raise ConfigError(
            f"refusing to instantiate {class_path!r}: only classes under {', '.join(allowed)} can be named "
            "in checkpoints and configs"
        )


def instantiate_spec(spec: dict[str, Any], allowed: Iterable[str] = ALLOWED_PREFIXES) -> Any:
    """Rebuild an object from :func:`module_spec` output, for allowed class paths only."""
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ConfigError(f"not a class spec: {spec!r}")
    class_path = str(spec["class_path"])
    allowed = tuple(allowed)
    check_class_path(class_path, allowed)
    module_name, _, qualname = class_path.rpartition(".")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"cannot import {class_path!r}: {error}") from error
    if not inspect.isclass(target):
        raise ConfigError(f"{class_path!r} is not a class")
    return target(**dict(spec.get("init_args") or {}))
