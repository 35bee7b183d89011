"""LightningCLI front ends of fine-tuning (``medcl finetune``): classification and segmentation.

One command serves both tasks; :func:`finetune_cli_class` picks the front end from the config. A
classification config has a plain ``model:`` section (the model class is fixed:
:class:`ClassificationModule`, as before); a segmentation config names its model,
``model: {class_path: tasks.segmentation.SegmentationModule, init_args: {...}}``, and gets
:class:`SegmentationCLI`. Overrides read the same for both (``--model.encoder_ckpt PATH``). Both
import and instantiate only allow-listed classes (:class:`medcl.training.cli.AllowListCLI`; extend the
list with ``--allow_class_path PREFIX``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from medcl.training.cli import AllowListCLI
from tasks.classification import ClassificationModule
from tasks.data import ClassificationDataModule

__all__ = ["FinetuneCLI", "SegmentationCLI", "finetune_cli_class"]


class FinetuneCLI(AllowListCLI):
    """``fit``/``validate``/``test`` of :class:`ClassificationModule` on a :class:`ClassificationDataModule`.

    Classes, task type and input key come from the data module (linked on instantiation); the
    pretrained encoder is named with ``--model.encoder_ckpt PATH``.
    """

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        trainer_defaults = {"use_distributed_sampler": False, **kwargs.pop("trainer_defaults", {})}
        super().__init__(
            ClassificationModule,
            ClassificationDataModule,
            args=args,
            trainer_defaults=trainer_defaults,
            save_config_kwargs={"overwrite": True},
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.task", "model.task", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.input_key", "model.input_key", apply_on="instantiate")


class SegmentationCLI(AllowListCLI):
    """``fit``/``validate``/``test`` of ``tasks.segmentation.SegmentationModule`` on a
    ``tasks.segmentation_data.SegmentationDataModule``.

    The model section names its class (``class_path: tasks.segmentation.SegmentationModule``, subclasses
    allowed); classes, label names, input key and ROI come from the data module (linked on
    instantiation); the pretrained backbone is named with ``--model.encoder_ckpt PATH``.
    """

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        # imported here: classification runs need not import MONAI's segmentation stack
        from tasks.segmentation import SegmentationModule
        from tasks.segmentation_data import SegmentationDataModule

        trainer_defaults = {"use_distributed_sampler": False, **kwargs.pop("trainer_defaults", {})}
        super().__init__(
            SegmentationModule,
            SegmentationDataModule,
            subclass_mode_model=True,
            args=args,
            trainer_defaults=trainer_defaults,
            save_config_kwargs={"overwrite": True},
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in ("num_classes", "label_names", "input_key", "roi_size"):
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")


def _config_paths(argv: Sequence[str]) -> list[str]:
    """The files given with ``--config FILE`` / ``--config=FILE``, in order."""
    paths = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths


def finetune_cli_class(argv: Sequence[str]) -> type[LightningCLI]:
    """The front end of ``medcl finetune ARGS``: :class:`SegmentationCLI` when the model is named by a
    ``class_path`` (in a ``--config`` file's ``model:`` section, or ``--model.class_path=...``), else
    :class:`FinetuneCLI`. A class path that is not a ``SegmentationModule`` is then refused by the
    segmentation front end's parser, naming the expected base class."""
    for path in _config_paths(argv):
        try:
            config = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            continue  # LightningCLI reports unreadable configs itself
        model = config.get("model") if isinstance(config, dict) else None
        if isinstance(model, dict) and "class_path" in model:
            return SegmentationCLI
    if any(arg.startswith("--model.class_path") for arg in argv):
        return SegmentationCLI
    return FinetuneCLI
