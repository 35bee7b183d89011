"""Shared fixtures: where the real data lives.

``bundled_ptbxl`` is always there (it ships with the package). ``shared_data`` is the project's
``../shared/data`` folder (override with ``MEDCL_SHARED_DATA``); tests that need it skip, saying why,
only when it is absent. CI has it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """The ``shared/data`` folder if present, else ``None``."""
    env = os.environ.get("MEDCL_SHARED_DATA")
    candidates = [Path(env)] if env else [REPO_ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``, or skip the test with the reason."""
    path = shared_data_dir()
    if path is None:
        pytest.skip(
            "real data folder ../shared/data not found (set MEDCL_SHARED_DATA to its path); "
            "this test reads the larger real datasets kept there"
        )
    return path


@pytest.fixture(scope="session")
def bundled_ptbxl() -> Path:
    """The PTB-XL subset that ships with the package (300 real records)."""
    from modalities.bundled import resolve_root

    return resolve_root("bundled:ptbxl")


@pytest.fixture(scope="session")
def flaky_adapter() -> type:
    """A SignalAdapter whose recordings in ``bad_trials`` fail to load like a corrupt file."""
    import pandas as pd

    from medcl.errors import CorruptFileError
    from modalities.signals import SignalAdapter

    class FlakyAdapter(SignalAdapter):
        def __init__(self, bad_trials: tuple[str, ...] = (), **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.bad_trials = set(bad_trials)

        def load_sample(self, row: pd.Series) -> dict[str, Any]:
            if str(row["trial_id"]) in self.bad_trials:
                raise CorruptFileError(row["path"], "simulated truncated .dat")
            return super().load_sample(row)

    return FlakyAdapter


@pytest.fixture(scope="session")
def pretrained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (if short: 2 steps) SimCLR pretraining checkpoint of a small InceptionTime on the bundled
    PTB-XL, with the data settings of configs/finetune/ptbxl_norm_mi.yaml (100 Hz, 12 leads)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from medcl.data import PretrainDataModule, SplitConfig
    from medcl.objectives import SimCLR
    from medcl.training import PretrainModule
    from modalities.signals import SignalAdapter, TsaiEncoder

    out = tmp_path_factory.mktemp("pretrained")
    L.seed_everything(0)
    adapter = SignalAdapter(window_s=2.0, stride_s=1.0)
    data = PretrainDataModule(
        adapter,
        batch_size=32,
        samples_per_trial=1,
        trials_per_patient=1,
        split=SplitConfig(method="fold"),
        run_dir=str(out / "data"),
    )
    encoder = TsaiEncoder("InceptionTime", in_channels=12, arch_kwargs={"nf": 8, "depth": 2})
    model = PretrainModule(encoder, SimCLR())
    checkpoint = ModelCheckpoint(dirpath=out, save_last=True)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=data)
    return out / "last.ckpt"
