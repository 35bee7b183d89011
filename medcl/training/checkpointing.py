"""Exact resume and atomic checkpoints for long pretraining runs.

A run killed at any moment (``SIGKILL``, a preempted node) and started again with ``--ckpt_path last``
continues the same sequence of epochs, batches and losses as a run that was never stopped. Three
pieces make that true; :class:`~medcl.training.PretrainModule` installs the first two itself:

* :class:`ExactResume` (a callback) seeds Python's, NumPy's and torch's global generators at the start
  of every training batch from ``(seed, rank, epoch, batch)``. Whatever draws from them during a step
  (dropout, TS2Vec's timestamp masks) then depends only on where the step is in the run, not on what
  ran before it in this process, so there is no generator state to save, and nothing that runs
  between two steps (validation, a data loader starting its workers) can shift it. The seed is
  ``seed_everything``'s (``PL_GLOBAL_SEED``) and is stored in the checkpoint. The views, crops and
  pairings need nothing: they are seeded per sample from ``(seed, epoch, index)`` (see
  :mod:`medcl.data.dataset`), and momentum teachers are module state. The batch order is restored by
  :class:`~medcl.data.sampler.ResumableDataLoader`, with two corrections to Lightning 2.6 made here:
  with ``max_epochs`` (and an LR schedule that asks for ``trainer.estimated_stepping_batches``)
  Lightning sets up the training data before it restores the loops and never hands the loader its
  saved position (the epoch would start over); and in a ``max_steps`` run resumed from an
  end-of-epoch checkpoint it gives the sampler an epoch one ahead of ``trainer.current_epoch``.
  :class:`ExactResume` loads the pending loader state at ``on_train_start`` and makes the training
  loaders take each pass's epoch from ``trainer.current_epoch``.
* :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file in the target folder,
  ``fsync``\\s it and renames it over the target (``os.replace``), so a kill during a save leaves the
  previous ``last.ckpt`` complete. :class:`ExactResume` makes it the strategy's checkpoint writer
  when the strategy has Lightning's default one. (Lightning's own writer serialises to memory and
  moves a file from the system temporary folder over the target: a rename only when that folder is
  on the same file system, otherwise a copy, during which a kill leaves a truncated checkpoint.)
* :class:`ResumableCheckpoint` is Lightning's ``ModelCheckpoint`` with three changes: ``last.ckpt`` is
  written at the end of every epoch (Lightning 2.6 refreshes it only together with a new top-k
  checkpoint, so with a monitored metric it would stay at the best epoch), ``--ckpt_path
  last`` also finds the ``last.ckpt`` of earlier *versions* of the run (a logger such as ``CSVLogger``
  starts a new ``version_N`` folder at every launch, so Lightning alone looks for ``last.ckpt`` in the
  new, empty folder and silently starts from scratch), and ``save_last="link"`` replaces the link
  atomically.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from medcl.data.sampler import ResumableDataLoader

__all__ = ["AtomicCheckpointIO", "ExactResume", "ResumableCheckpoint", "batch_seed"]

#: Keeps the batch seeds apart from the other seeds derived from the same base seed.
_BATCH_SEED_DOMAIN = 0x5EED_BA7C


def batch_seed(seed: int, rank: int, epoch: int, batch_idx: int) -> int:
    """The 63-bit seed of training batch ``batch_idx`` of ``epoch`` on ``rank`` (a hash of the four)."""
    words = np.random.SeedSequence([_BATCH_SEED_DOMAIN, seed, rank, epoch, batch_idx]).generate_state(2)
    return (int(words[0]) << 31) ^ int(words[1])


def seed_global_generators(seed: int) -> None:
    """Seed Python's ``random``, NumPy's legacy global generator and torch's default generators (CPU
    and every accelerator) from one 63-bit ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoint writer, made atomic for local files.

    ``save_checkpoint(checkpoint, path)`` streams ``torch.save`` into ``.<name>.partial`` next to
    ``path``, flushes and ``fsync``\\s it, renames it over ``path`` (``os.replace``: readers see the
    old file or the new one, never a mix) and ``fsync``\\s the folder. A kill at any point leaves the
    previous file at ``path`` intact; at worst a stale ``.partial`` file, which the next save of the
    same name overwrites. Remote paths (``s3://``...) go through Lightning's writer unchanged.
    Loading and removing are Lightning's.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)  # raises for storage_options
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        try:
            with partial.open("wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        _fsync_directory(target.parent)


def _is_local(path: str | os.PathLike[str]) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(get_filesystem(path), LocalFileSystem)


class ExactResume(Callback):
    """Per-batch seeding of the global generators, and atomic checkpoint files (see the module doc).

    Args:
        seed: base seed of the batch seeds; default: ``seed_everything``'s (``PL_GLOBAL_SEED``), else
            a seed drawn once from torch's generator. A seed restored from a checkpoint wins, so a
            resumed run continues the stream it was started with.
        atomic_checkpoints: make :class:`AtomicCheckpointIO` the strategy's checkpoint writer when it
            has Lightning's default ``TorchCheckpointIO`` (a writer chosen by the user is kept).
    """

    def __init__(self, seed: int | None = None, atomic_checkpoints: bool = True) -> None:
        self.seed = seed
        self.atomic_checkpoints = atomic_checkpoints

    def _base_seed(self, trainer: L.Trainer) -> int:
        if self.seed is None:
            env = os.environ.get("PL_GLOBAL_SEED")
            seed = int(env) if env is not None else int(torch.randint(0, 2**31 - 1, ()).item())
            self.seed = int(trainer.strategy.broadcast(seed, src=0))  # one base seed on every rank
        return self.seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._base_seed(trainer)
        strategy = trainer.strategy
        if self.atomic_checkpoints and type(strategy.checkpoint_io) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning 2.6 restores a stateful loader only when it sets up the data after restoring the
        # loops. With ``max_epochs``, ``trainer.estimated_stepping_batches`` (our LR schedules use it)
        # sets up the data first, in configure_optimizers, and the saved position would never reach the
        # loader. Loading the pending states here is Lightning's own code path, and a no-op when it did.
        load_pending = getattr(trainer.fit_loop, "_load_combined_loader_states", None)
        if load_pending is not None:
            load_pending()
        _follow_current_epoch(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _follow_current_epoch(trainer)  # loaders reloaded every n epochs are new objects

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        seed = batch_seed(self._base_seed(trainer), trainer.global_rank, trainer.current_epoch, batch_idx)
        seed_global_generators(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("seed")
        if saved is None:
            return
        if self.seed is not None and int(saved) != self.seed:
            rank_zero_warn(
                f"resuming with seed {self.seed}, but the checkpoint's run used {saved}: its batch seeds "
                "are kept so the run continues as it started"
            )
        self.seed = int(saved)


def _follow_current_epoch(trainer: L.Trainer) -> None:
    """Make every :class:`~medcl.data.sampler.ResumableDataLoader` among the training loaders take the
    epoch of each pass from ``trainer.current_epoch`` (see its ``epoch_source``)."""
    loaders = trainer.train_dataloader
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    elif not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    for loader in loaders:
        if isinstance(loader, ResumableDataLoader):
            loader.epoch_source = lambda: trainer.current_epoch


class ResumableCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments) whose ``last`` checkpoint is the last one, which a relaunched
    run finds, and whose ``save_last="link"`` is atomic.

    Since Lightning 2.6, ``ModelCheckpoint`` refreshes ``last.ckpt`` at the end of an epoch only when it
    also saved a top-k checkpoint at that step: with ``monitor`` and ``save_top_k=1``, ``last.ckpt`` stays
    at the best epoch, so ``--ckpt_path last`` would silently resume from there (losing every epoch
    since) and "the last model" would be the best one. Here ``last`` is written at every epoch end where
    Lightning's would be considered (a full checkpoint when there is no new top-k file to link to).

    Without ``dirpath``, checkpoints go to ``<save_dir>/<name>/<version>/checkpoints`` of the first
    logger, and a relaunch gets a new version folder. ``trainer.fit(ckpt_path="last")`` (``--ckpt_path
    last``) then considers the ``last*.ckpt`` files of every version folder of ``<save_dir>/<name>`` and
    Lightning resumes from the newest (by modification time). The resumed run writes its logs and
    checkpoints to its own new version folder.
    """

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_epoch(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_epoch(trainer)

    def _save_last_every_epoch(self, trainer: L.Trainer) -> None:
        """Write ``last`` unless Lightning just did (a top-k save at this step writes it too)."""
        if not self.save_last or self._should_skip_saving_checkpoint(trainer):
            return  # also when a checkpoint of this very step was saved already
        candidates = self._monitor_candidates(trainer)
        if self.save_last != "link":
            self._save_last_checkpoint(trainer, candidates)
            return
        # "link" would point at the newest top-k file, which is older than this step: save in full
        filepath = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST)
        previous, self.last_model_path = self.last_model_path, filepath
        self._save_checkpoint(trainer, filepath)
        if previous and self._should_remove_checkpoint(trainer, previous, filepath):
            self._remove_checkpoint(trainer, previous)

    def _find_last_checkpoints(self, trainer: L.Trainer) -> set[str]:
        found = super()._find_last_checkpoints(trainer)
        if self.dirpath is not None or not trainer.loggers:
            return found
        logger = trainer.loggers[0]
        save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
        run_root = Path(save_dir) / str(logger.name)
        if not _is_local(run_root) or not run_root.is_dir():
            return found
        pattern = re.compile(rf"^{self.CHECKPOINT_NAME_LAST}(-(\d+))?")  # Lightning's own test of "last"
        for folder in run_root.glob("*/checkpoints"):
            for path in folder.iterdir():
                if path.suffix == self.FILE_EXTENSION and pattern.match(path.stem) and path.exists():
                    found.add(os.path.normpath(path))
        return found

    @staticmethod
    def _link_checkpoint(trainer: L.Trainer, filepath: str, linkpath: str) -> None:
        if (
            trainer.is_global_zero
            and os.path.abspath(filepath) != os.path.abspath(linkpath)
            and _is_local(linkpath)
            and not os.path.isdir(linkpath)
        ):
            link = Path(linkpath)
            partial = link.with_name(f".{link.name}.partial")
            partial.unlink(missing_ok=True)
            try:
                os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), partial)
            except OSError:  # no symbolic links (e.g. Windows without the privilege): a copy
                shutil.copyfile(filepath, partial)
                with partial.open("rb+") as handle:
                    os.fsync(handle.fileno())
            os.replace(partial, link)
            _fsync_directory(link.parent)
            trainer.strategy.barrier()
            return
        ModelCheckpoint._link_checkpoint(trainer, filepath, linkpath)
