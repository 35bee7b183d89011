"""LightningCLI front end of fine-tuning (``medcl finetune``)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from tasks.classification import ClassificationModule
from tasks.data import ClassificationDataModule

__all__ = ["FinetuneCLI"]


class FinetuneCLI(LightningCLI):
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
