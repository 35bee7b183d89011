"""LightningCLI front end of pretraining (``medcl pretrain``), on a base that refuses foreign classes.

jsonargparse instantiates whatever ``class_path`` a config names, and it imports that path while it
parses (to find the class's arguments) — importing runs a module's code. :class:`AllowListCLI` makes
sure nothing outside :func:`medcl.configurable.config_allow_list` is ever imported or instantiated:

1. Before the parser sees anything, the raw command line and every config file it names (``--config``,
   nested config files given as values, inline YAML/JSON values) are read with ``yaml.safe_load`` and
   every ``class_path`` in them, and every ``--x.class_path`` / ``--x+=`` override, is checked; a refusal
   is a :class:`~medcl.errors.ConfigError` naming the file and key or the argument.
2. While parsing (and for the whole run) jsonargparse's own import-path policy denies every path that is
   not on the allow-list (``*`` denied, the allow-list allowed). jsonargparse checks it before each import
   of a value, and checks the imported object's defining module too, so short names
   (``--trainer.logger WandbLogger``), environment variables, callables and a ``--ckpt_path``
   checkpoint's hyper-parameters are covered as well.
3. After parsing, before instantiation, every ``class_path`` of the resolved config is checked again, and
   a ``--ckpt_path`` checkpoint's hyper-parameters (which LightningCLI parses into the config) are read
   with ``weights_only=True`` and checked before LightningCLI parses them.

Checkpoints given with ``--ckpt_path`` are loaded with ``weights_only=True``; ``--weights_only false`` is
refused.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError, Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from medcl.configurable import ALLOW_FLAG, check_class_path, class_paths_in, config_allow_list
from medcl.data.datamodule import PretrainDataModule
from medcl.errors import ConfigError
from medcl.training.pretrain import PretrainModule

__all__ = ["AllowListCLI", "PretrainCLI", "check_raw_arguments", "import_path_policy", "split_allow_flags"]

#: The help text of the allow-list (shown by ``medcl pretrain --help`` and ``... fit --help``).
ALLOW_HELP = (
    "Safety: configs may only name classes of medcl, modalities, tasks and export, Lightning's callbacks "
    "and strategies, and the CSV and TensorBoard loggers; anything else is refused before it is imported. "
    f"To trust more code, name it on the command line: {ALLOW_FLAG} PREFIX (repeatable; a module, a "
    f"package or one class, e.g. {ALLOW_FLAG} mylab.callbacks). Config files cannot extend the list. "
    "Checkpoints load with weights_only=True."
)

_ALLOW_SPELLINGS = (ALLOW_FLAG, "--allow-class-path")
_CONFIG_KEYS = ("--config", "-c")
_STRUCTURED_SUFFIXES = (".yaml", ".yml", ".json")
_DENIED = re.compile(r"Importing '([\w.]+)' is not allowed")


def split_allow_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(allow-list entries, the other arguments)``: takes ``--allow_class_path PREFIX`` (also
    ``--allow-class-path``, ``=PREFIX``) out of a command line, before LightningCLI parses it."""
    extra: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        token = str(argv[i])
        key, eq, value = token.partition("=")
        if key in _ALLOW_SPELLINGS:
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{ALLOW_FLAG} needs a value: a dotted module, package or class path")
                value = str(argv[i + 1])
                i += 1
            extra.append(value)
        else:
            rest.append(token)
        i += 1
    return extra, rest


def _key_values(argv: Sequence[str]) -> Iterator[tuple[str, str]]:
    """``(--key, value)`` pairs of a command line (``--key=value`` or ``--key value``)."""
    for i, token in enumerate(argv):
        if not token.startswith("-"):
            continue
        key, eq, value = token.partition("=")
        if eq:
            yield key, value
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            yield key, argv[i + 1]


def _load_structured(value: str, is_config: bool) -> tuple[Any, str | None]:
    """``(tree, file)``: a value read as a config file (if it names one) or as inline YAML/JSON."""
    path = Path(value)
    if (is_config or path.suffix.lower() in _STRUCTURED_SUFFIXES) and path.is_file():
        try:
            return yaml.safe_load(path.read_text(encoding="utf-8")), str(path)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return None, str(path)  # the parser reports unreadable files itself
    try:
        return yaml.safe_load(value), None
    except (yaml.YAMLError, ValueError, RecursionError):
        return None, None  # not structured: a plain value


def check_raw_arguments(argv: Sequence[str], allowed: Sequence[str]) -> None:
    """Check every class path the raw command line names, before anything is parsed or imported.

    Looks at config files (``--config FILE``, and any ``.yaml``/``.yml``/``.json`` file given as a value),
    inline YAML/JSON values (``--model.encoder '{class_path: ...}'``), ``--key.class_path PATH`` and list
    appends (``--trainer.callbacks+=PATH``). Short names (``ModelCheckpoint``) are resolved by the parser
    and checked there (:func:`import_path_policy`).

    Raises:
        ConfigError: naming the class path and the file and key, or the argument, that holds it.
    """
    for key, value in _key_values(list(argv)):
        tree, file = _load_structured(value, key in _CONFIG_KEYS)
        if isinstance(tree, (dict, list)):
            for where, class_path in class_paths_in(tree):
                if "." in class_path:
                    origin = f"{file}: {where}" if file else f"argument {key}: {where}"
                    check_class_path(class_path, allowed, source=origin)
        elif isinstance(tree, str) and "." in tree and (key.endswith("class_path") or key.endswith("+")):
            check_class_path(tree, allowed, source=f"argument {key}={value}")


@contextlib.contextmanager
def import_path_policy(allowed: Sequence[str]) -> Iterator[None]:
    """jsonargparse may import, while parsing, only paths under ``allowed`` (it checks each path before
    importing it, and the imported object's defining module after). Restores the previous policy.

    Raises:
        ConfigError: the installed jsonargparse has no import-path policy (then medcl refuses to parse
            configs at all rather than import unchecked paths).
    """
    import inspect

    import jsonargparse

    parameters = inspect.signature(jsonargparse.set_parsing_settings).parameters
    if "import_path_allowlist" not in parameters:
        raise ConfigError(
            f"jsonargparse {jsonargparse.__version__} cannot restrict the classes a config imports; medcl "
            "needs a jsonargparse with import path policies (4.53 works): pip install -U jsonargparse"
        )
    try:
        from jsonargparse._common import parsing_settings  # to restore the policy afterwards
    except ImportError:  # pragma: no cover - a jsonargparse without it keeps our policy for the process
        parsing_settings = {}
    saved = {
        key: parsing_settings[key]
        for key in ("import_path_verdicts", "import_paths_enforced")
        if key in parsing_settings
    }
    try:
        jsonargparse.set_parsing_settings(
            import_path_denylist=["*"], import_path_allowlist=[entry.rstrip(".") for entry in allowed]
        )
    except ValueError as error:  # e.g. --allow_class_path jsonargparse (it could lift the policy itself)
        parsing_settings.update(saved)
        raise ConfigError(f"{ALLOW_FLAG}: {error}") from None
    try:
        yield
    finally:
        parsing_settings.update(saved)


class AllowListCLI(LightningCLI):
    """A :class:`~lightning.pytorch.cli.LightningCLI` that imports and instantiates only allow-listed
    classes (see the module docstring for the three checks), extended only by ``--allow_class_path``
    on the command line, and that loads ``--ckpt_path`` checkpoints with ``weights_only=True``.

    Args:
        model_class, datamodule_class: as for LightningCLI.
        args: the command line (default ``sys.argv[1:]``) or a dict; ``--allow_class_path`` entries are
            taken out before LightningCLI parses it.
        **kwargs: LightningCLI's other arguments.
    """

    def __init__(
        self, model_class: Any = None, datamodule_class: Any = None, args: Any = None, **kwargs: Any
    ) -> None:
        if isinstance(args, (dict, Namespace)):
            tree = args.as_dict() if isinstance(args, Namespace) else args
            self.allowed = config_allow_list()
            for where, class_path in class_paths_in(tree):
                check_class_path(class_path, self.allowed, source=f"args: {where}")
            self._medcl_args: Any = args
            self._raw_args: list[str] = []
        else:
            extra, rest = split_allow_flags(list(sys.argv[1:] if args is None else args))
            self.allowed = config_allow_list(extra)
            check_raw_arguments(rest, self.allowed)
            self._medcl_args = self._raw_args = rest
        parser_kwargs = dict(kwargs.pop("parser_kwargs", None) or {})
        parser_kwargs.setdefault("epilog", ALLOW_HELP)
        for subcommand in self.subcommands():
            parser_kwargs[subcommand] = {"epilog": ALLOW_HELP, **parser_kwargs.get(subcommand, {})}
        with import_path_policy(self.allowed):
            super().__init__(
                model_class, datamodule_class, args=self._medcl_args, parser_kwargs=parser_kwargs, **kwargs
            )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse (under :func:`import_path_policy`), turn a denied import into a :class:`ConfigError`,
        then check the resolved config, ``weights_only`` and a ``--ckpt_path`` checkpoint's
        hyper-parameters before LightningCLI goes on."""
        parse = parser.parse_object if isinstance(args, (dict, Namespace)) else parser.parse_args
        # every parser raises instead of exiting, so a denied import becomes a ConfigError
        parsers = [parser, *getattr(self, "_subcommand_parsers", {}).values()]
        exit_on_error = [p.exit_on_error for p in parsers]
        for p in parsers:
            p.exit_on_error = False
        try:
            self.config = parse(args)
        except ArgumentError as error:
            denied = _DENIED.search(str(error))
            if denied is None:
                for p, value in zip(parsers, exit_on_error, strict=True):
                    p.exit_on_error = value
                self.config = parse(args)  # fails again, with jsonargparse's own usage and message
                raise  # pragma: no cover - the parse above exits
            source = self._source_of(denied.group(1))
            check_class_path(denied.group(1), self.allowed, source=source)
            raise ConfigError(
                f"refusing to import {denied.group(1)!r} ({source}): jsonargparse's import policy denied it"
            ) from None
        finally:
            for p, value in zip(parsers, exit_on_error, strict=True):
                p.exit_on_error = value
        self._check_resolved_config()
        self._check_checkpoint_loading()

    def before_instantiate_classes(self) -> None:
        """The last check before anything is instantiated (the config may have changed since parsing:
        LightningCLI merges a ``--ckpt_path`` checkpoint's hyper-parameters into it)."""
        self._check_resolved_config()

    # ----------------------------------------------------------------------------------------------
    def _source_of(self, class_path: str) -> str:
        """Where a class path that jsonargparse refused came from, as well as the raw inputs tell."""
        name = class_path.rsplit(".", 1)[-1]  # a short name, or a re-export of the refused object
        for token in self._raw_args:
            value = token.partition("=")[2] or token
            if class_path in token or value == name or value.endswith(f".{name}"):
                return f"argument {token}"
        for key, value in _key_values(self._raw_args):
            if key in _CONFIG_KEYS and Path(value).is_file():
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    if class_path in Path(value).read_text(encoding="utf-8"):
                        return f"config {value}"
        return "resolved while parsing: a short class name, an environment variable or a checkpoint"

    def _check_resolved_config(self) -> None:
        for where, class_path in class_paths_in(self.config.as_dict()):
            check_class_path(class_path, self.allowed, source=f"resolved config: {where}")

    def _check_checkpoint_loading(self) -> None:
        """``weights_only=True`` for ``--ckpt_path``, and its hyper-parameters' class paths allowed."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        section = self.config[subcommand]
        if "weights_only" in section:
            if section.get("weights_only") is False:
                raise ConfigError(
                    "--weights_only false: medcl loads checkpoints with weights_only=True only (a "
                    "checkpoint that needs unpickling can run arbitrary code)"
                )
            section["weights_only"] = True
        ckpt_path = section.get("ckpt_path")
        if not ckpt_path or not Path(str(ckpt_path)).is_file():
            return
        import torch

        try:
            checkpoint = torch.load(str(ckpt_path), map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # an unreadable checkpoint is reported when Lightning loads it
            return
        hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
        for where, class_path in class_paths_in(hparams or {}):
            check_class_path(
                class_path, self.allowed, source=f"checkpoint {ckpt_path}: hyper_parameters.{where}"
            )


class PretrainCLI(AllowListCLI):
    """``fit``/``validate``/``test`` of :class:`PretrainModule` on a :class:`PretrainDataModule`.

    The probe's number of classes and task come from the data module (linked on instantiation), the
    resolved config is saved with the run, and the trainer defaults to ``use_distributed_sampler=False``
    because :class:`~medcl.data.GroupedBatchSampler` does its own, patient-disjoint, rank split. Configs
    name only allow-listed classes (:class:`AllowListCLI`).
    """

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        trainer_defaults = {"use_distributed_sampler": False, **kwargs.pop("trainer_defaults", {})}
        super().__init__(
            PretrainModule,
            PretrainDataModule,
            args=args,
            trainer_defaults=trainer_defaults,
            save_config_kwargs={"overwrite": True},
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.probe_num_classes", "model.probe_num_classes", apply_on="instantiate")
        parser.link_arguments("data.probe_task", "model.probe_task", apply_on="instantiate")
