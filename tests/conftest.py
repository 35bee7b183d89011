"""Shared fixtures: where the real data lives, real records, broken copies of them, trained checkpoints.

``bundled_ptbxl`` is always there (it ships with the package). ``shared_data`` is the project's
``../shared/data`` folder (override with ``MEDCL_SHARED_DATA``); tests that need it skip, saying why,
only when it is absent. CI has it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import wfdb
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

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


@pytest.fixture(scope="session")
def classifier_checkpoint(pretrained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A (briefly) fine-tuned NORM vs MI classifier on the bundled PTB-XL, saved by its Trainer."""
    import lightning as L

    from medcl.data import SplitConfig
    from modalities.signals import SignalAdapter
    from tasks import ClassificationDataModule, ClassificationModule

    out = tmp_path_factory.mktemp("classifier")
    L.seed_everything(0)
    adapter = SignalAdapter(labels="norm_vs_mi", window_s=2.0, stride_s=1.0)
    data = ClassificationDataModule(
        adapter, split=SplitConfig(method="fold"), batch_size=32, run_dir=str(out / "data")
    )
    model = ClassificationModule(
        encoder_ckpt=str(pretrained_checkpoint), mode="finetune", num_classes=2, class_names=["NORM", "MI"]
    )
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=data)
    path = out / "classifier.ckpt"
    trainer.save_checkpoint(path, weights_only=True)
    return path


# --- real records and broken copies of them (made in tmp_path, never touching the real data) ---------

PTBXL_RECORD = "records100/00000/00001_lr"


@pytest.fixture(scope="session")
def ptbxl_record(bundled_ptbxl: Path) -> Path:
    """Record 1 of the bundled PTB-XL copy (path without extension)."""
    return bundled_ptbxl / PTBXL_RECORD


def copy_wfdb_record(src: Path, dst_dir: Path, name: str | None = None) -> Path:
    """Copy a WFDB record (``.hea`` + every ``.dat`` it names) into ``dst_dir``, optionally renamed
    (the record line and the file names in the header follow the new name). Returns the new record path."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    name = name or src.name
    header = (src.parent / f"{src.name}.hea").read_text()
    for dat in sorted(src.parent.glob(f"{src.name}.dat")):
        shutil.copyfile(dat, dst_dir / f"{name}.dat")
    if name != src.name:
        header = header.replace(f"{src.name}.dat", f"{name}.dat")
        lines = header.splitlines(keepends=True)
        lines[0] = lines[0].replace(src.name, name, 1)
        header = "".join(lines)
    (dst_dir / f"{name}.hea").write_text(header)
    return dst_dir / name


def set_header_length(record: Path, n_samples: int) -> None:
    """Rewrite the record line's sample count (4th field) of ``record``'s header."""
    hea = record.with_name(record.name + ".hea")
    lines = hea.read_text().splitlines(keepends=True)
    fields = lines[0].split()
    fields[3] = str(n_samples)
    lines[0] = " ".join(fields) + "\n"
    hea.write_text("".join(lines))


def write_modified_record(
    src: Path,
    dst_dir: Path,
    name: str,
    modify: Callable[[np.ndarray, list[str]], None],
    drop: str | None = None,
) -> Path:
    """Write a copy of the real record ``src`` with ``wfdb.wrsamp`` (same gains, baselines, format 16)
    after ``modify(p_signal, names)`` changed its samples in place; ``drop`` removes one lead."""
    rec = wfdb.rdrecord(str(src))
    signal = rec.p_signal.copy()
    names = list(rec.sig_name)
    modify(signal, names)
    keep = [i for i, n in enumerate(names) if n != drop]
    dst_dir.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        name,
        fs=rec.fs,
        units=[rec.units[i] for i in keep],
        sig_name=[names[i] for i in keep],
        p_signal=signal[:, keep],
        fmt=["16"] * len(keep),
        adc_gain=[rec.adc_gain[i] for i in keep],
        baseline=[rec.baseline[i] for i in keep],
        write_dir=str(dst_dir),
    )
    return dst_dir / name


@pytest.fixture()
def broken_wfdb(tmp_path: Path, ptbxl_record: Path) -> dict[str, Path]:
    """Broken WFDB records made from PTB-XL record 1, by what is wrong with them."""
    out = tmp_path / "broken"
    made: dict[str, Path] = {}

    rec = copy_wfdb_record(ptbxl_record, out, "truncated")
    dat = rec.with_name("truncated.dat")
    dat.write_bytes(dat.read_bytes()[:12000])
    made["truncated"] = rec

    rec = copy_wfdb_record(ptbxl_record, out, "long_header")
    set_header_length(rec, 1200)
    made["long_header"] = rec

    rec = copy_wfdb_record(ptbxl_record, out, "short_header")
    set_header_length(rec, 900)
    made["short_header"] = rec

    rec = copy_wfdb_record(ptbxl_record, out, "no_dat")
    rec.with_name("no_dat.dat").unlink()
    made["no_dat"] = rec

    (out / "notes.hea").write_text("Patient notes: ECG looked fine.\nRepeat in 3 months.\n")
    made["text_hea"] = out / "notes"

    def nan_v3(signal: np.ndarray, names: list[str]) -> None:
        signal[:, names.index("V3")] = np.nan

    made["all_nan"] = write_modified_record(ptbxl_record, out, "nan_v3", nan_v3)

    def flat_i(signal: np.ndarray, names: list[str]) -> None:
        signal[:, names.index("I")] = 0.0

    made["flat"] = write_modified_record(ptbxl_record, out, "flat_i", flat_i)
    return made


@pytest.fixture(scope="session")
def copy_record() -> Callable[..., Path]:
    """:func:`copy_wfdb_record`, for tests."""
    return copy_wfdb_record


@pytest.fixture(scope="session")
def write_record() -> Callable[..., Path]:
    """:func:`write_modified_record`, for tests."""
    return write_modified_record


@pytest.fixture(scope="session")
def set_length() -> Callable[[Path, int], None]:
    """:func:`set_header_length`, for tests."""
    return set_header_length


# --------------------------------------------------------------------------------------------------
# DICOM radiographs written from real pixels (the X-ray reader, indexing and predictor tests)
# --------------------------------------------------------------------------------------------------
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def write_cr_dicom(
    path: Path,
    stored: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    view: str | None = "PA",
    spacing: tuple[float, float] | None = (0.139, 0.143),
    **tags: Any,
) -> Path:
    """A single-frame CR radiograph (Explicit VR Little Endian, 16-bit words) holding ``stored`` (the
    stored values, unsigned) with the given header; ``tags`` are set as DICOM keywords (``RescaleSlope``,
    ``WindowCenter``, ``VOILUTSequence``, ...)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientID = "anon"
    ds.BodyPartExamined = "CHEST"
    if view is not None:
        ds.ViewPosition = view
    if spacing is not None:
        ds.ImagerPixelSpacing = [f"{spacing[0]:g}", f"{spacing[1]:g}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(s) for s in stored.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def make_cr_dicom() -> Callable[..., Path]:
    """:func:`write_cr_dicom`, for tests."""
    return write_cr_dicom
