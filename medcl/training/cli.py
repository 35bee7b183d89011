"""LightningCLI front end of pretraining (``medcl pretrain``)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from medcl.data.datamodule import PretrainDataModule
from medcl.training.pretrain import PretrainModule

__all__ = ["PretrainCLI"]


class PretrainCLI(LightningCLI):
    """``fit``/``validate``/``test`` of :class:`PretrainModule` on a :class:`PretrainDataModule`.

    The probe's number of classes and task come from the data module (linked on instantiation), the
    resolved config is saved with the run, and the trainer defaults to ``use_distributed_sampler=False``
    because :class:`~medcl.data.GroupedBatchSampler` does its own, patient-disjoint, rank split.
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
