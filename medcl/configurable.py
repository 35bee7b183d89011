"""Rebuilding modules from checkpoints without unpickling code, and the class-path allow-list.

A checkpoint must be loadable with ``torch.load(..., weights_only=True)``, so it cannot hold pickled
modules. Instead, a module that inherits :class:`Configurable` records the arguments of its
constructor; :func:`module_spec` turns it into ``{"class_path": ..., "init_args": {...}}`` (plain JSON
types only), and :func:`instantiate_spec` rebuilds it — only for classes of medcl's own packages or of
an explicit allow-list, so a checkpoint or config can never make us import arbitrary code.

The allow-list lives here, in one place:

- :data:`ALLOWED_PREFIXES`: medcl's own packages. Checkpoint specs may name only these.
- :data:`CONFIG_ALLOWED_THIRD_PARTY`: the third-party classes the shipped configs need (Lightning's
  callbacks, the CSV and TensorBoard loggers, Lightning's strategies). ``medcl pretrain`` and
  ``medcl finetune`` configs may name these and medcl's own classes, nothing else
  (:func:`config_allow_list`); a user extends the list only explicitly, one
  ``--allow_class_path PREFIX`` per entry on the command line (never from a config file).

An entry is a dotted path that allows itself and everything under it, matched whole component by
component: ``lightning.pytorch.callbacks`` allows ``lightning.pytorch.callbacks.ModelCheckpoint``, not
``lightning.pytorch.callbacks_evil.X``. A trailing dot (``"medcl."``) means the same as none.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import PurePath
from typing import Any

from medcl.errors import ConfigError

__all__ = [
    "ALLOWED_PREFIXES",
    "ALLOW_FLAG",
    "CONFIG_ALLOWED_THIRD_PARTY",
    "Configurable",
    "check_class_path",
    "class_paths_in",
    "config_allow_list",
    "instantiate_spec",
    "is_allowed",
    "module_spec",
]

#: Module prefixes whose classes a checkpoint or config may name: medcl's own packages.
ALLOWED_PREFIXES: tuple[str, ...] = ("medcl.", "modalities.", "tasks.", "export.")

#: Third-party classes (or whole packages of them) that ``medcl pretrain|finetune`` configs may name
#: besides medcl's own: what ``configs/**/*.yaml`` and the multi-node docs use. Re-exported classes are
#: listed under both their public and their defining module (jsonargparse checks both).
CONFIG_ALLOWED_THIRD_PARTY: tuple[str, ...] = (
    "lightning.pytorch.callbacks",  # ModelCheckpoint, LearningRateMonitor, EarlyStopping, ...
    "lightning.pytorch.loggers.CSVLogger",
    "lightning.pytorch.loggers.csv_logs.CSVLogger",
    "lightning.pytorch.loggers.TensorBoardLogger",
    "lightning.pytorch.loggers.tensorboard.TensorBoardLogger",
    "lightning.pytorch.strategies",  # DDPStrategy(...) for multi-node runs
)

#: The command-line option of ``medcl pretrain|finetune`` that extends the config allow-list.
ALLOW_FLAG = "--allow_class_path"

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


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


def _as_plain(value: Any) -> Any:
    """JSON stand-in for a value json cannot write: a path's string, a :class:`Configurable` argument's
    own spec (the receiving class must accept the spec in the object's place, as the adapters' plug-in
    arguments do); anything else is not plain (TypeError)."""
    if isinstance(value, PurePath):
        return str(value)
    spec = module_spec(value)
    if spec is None:
        raise TypeError(f"{type(value).__name__} is not plain data")
    return spec


def _plain(arguments: dict[str, Any] | None) -> dict[str, Any] | None:
    """The arguments if they survive a JSON round trip (tuples become lists, paths strings, nested
    :class:`Configurable` objects their specs), else None."""
    if arguments is None:
        return None
    try:
        return json.loads(json.dumps(arguments, default=_as_plain))
    except (TypeError, ValueError):
        return None


def module_spec(module: Any) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` of a :class:`Configurable` module, or ``None`` if it has none."""
    init_args = getattr(module, "_init_args", None)
    if init_args is None:
        return None
    cls = type(module)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def is_allowed(class_path: str, allowed: Iterable[str] = ALLOWED_PREFIXES) -> bool:
    """Whether ``class_path`` is an allow-list entry or lies under one (whole dotted components)."""
    for entry in allowed:
        base = entry.rstrip(".")
        if class_path == base or class_path.startswith(base + "."):
            return True
    return False


def check_class_path(
    class_path: str, allowed: Iterable[str] = ALLOWED_PREFIXES, source: str | None = None
) -> None:
    """Raise :class:`ConfigError` unless ``class_path`` lies under an allowed module prefix.

    Args:
        class_path: the dotted path a checkpoint or config names.
        allowed: allow-list entries (:func:`is_allowed`).
        source: where the path was found (a config file and key, a command-line argument), for the
            message.
    """
    allowed = tuple(allowed)
    if not is_allowed(class_path, allowed):
        where = f" ({source})" if source else ""
        names = ", ".join(_display(allowed))
        raise ConfigError(
            f"refusing to instantiate {class_path!r}{where}: only classes under {names} can be named "
            f"in checkpoints and configs (trust more with {ALLOW_FLAG} PREFIX on the command line)"
        )


def _display(allowed: Iterable[str]) -> list[str]:
    """Allow-list entries for a message: without trailing dots and without the defining-module twins
    of re-exported classes (``lightning.pytorch.loggers.csv_logs.CSVLogger``)."""
    shown: list[str] = []
    for entry in (e.rstrip(".") for e in allowed):
        if not any(entry.rsplit(".", 1)[-1] == s.rsplit(".", 1)[-1] for s in shown):
            shown.append(entry)
    return shown


def config_allow_list(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """What a ``medcl pretrain|finetune`` config may name: medcl's packages, the third-party classes our
    configs need, and the user's explicit ``extra`` entries (dotted paths; checked).

    Raises:
        ConfigError: an ``extra`` entry that is not a dotted Python path.
    """
    entries = []
    for entry in extra:
        base = str(entry).rstrip(".")
        if not _DOTTED.match(base):
            raise ConfigError(
                f"{ALLOW_FLAG} {entry!r}: expected a dotted Python path such as mypackage.callbacks or "
                "mypackage.callbacks.MyCallback"
            )
        entries.append(base)
    return (*ALLOWED_PREFIXES, *CONFIG_ALLOWED_THIRD_PARTY, *entries)


def class_paths_in(tree: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every ``class_path`` (and Lightning's ``_class_path``) string value in a parsed config tree.

    Yields:
        ``(key, class_path)``, ``key`` the dotted location (``trainer.callbacks[0].class_path``).
    """
    if isinstance(tree, dict):
        for key, value in tree.items():
            here = f"{where}.{key}" if where else str(key)
            if key in ("class_path", "_class_path") and isinstance(value, str):
                yield here, value
            else:
                yield from class_paths_in(value, here)
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from class_paths_in(value, f"{where}[{i}]")


def instantiate_spec(spec: dict[str, Any], allowed: Iterable[str] = ALLOWED_PREFIXES) -> Any:
    """Rebuild an object from :func:`module_spec` output, for allowed class paths only.

    Both the named path and the class's defining module must be allowed, so a name that reaches a
    foreign class through an allowed module (``medcl.something.subprocess.Popen``) is refused.
    """
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
    defined = f"{target.__module__}.{target.__qualname__}"
    if not is_allowed(defined, allowed):
        raise ConfigError(
            f"refusing to instantiate {class_path!r}: it is {defined!r}, a class from outside "
            f"{', '.join(_display(allowed))}"
        )
    return target(**dict(spec.get("init_args") or {}))
