"""The BIDMC recordings that ship with medcl are the unmodified originals and index as documented."""

from __future__ import annotations

import gzip
import hashlib

from modalities.bundled import available, resolve_root
from modalities.wearables import index_wearables


def test_bundled_files_match_physionet_checksums() -> None:
    root = resolve_root("bundled:bidmc")
    expected = dict(
        reversed(line.split()) for line in (root / "SHA256SUMS.txt").read_text().splitlines() if line.strip()
    )
    assert len(expected) == 40  # 10 subjects x (Signals, Numerics, Breaths, Fix)
    for name, digest in expected.items():
        path = root / name
        if path.suffix == ".txt":
            data = path.read_bytes()
        else:  # the CSVs ship gzip-compressed; the checksums are of the originals
            data = gzip.decompress((root / f"{name}.gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == digest, name


def test_bundled_bidmc_indexes_ten_recordings_of_six_participants() -> None:
    assert "bidmc" in available()
    indexed = index_wearables("bidmc", "bundled:bidmc")
    trials = indexed.manifest.trials.set_index("trial_id")
    assert len(trials) == 10 and trials["patient_id"].nunique() == 6
    assert len(indexed.quarantine) == 0
    # recordings 06-09 are one MIMIC-II subject, 20-21 another (bidmc_NN_Fix.txt)
    assert trials.loc[[f"bidmc_0{n}" for n in (6, 7, 8, 9)], "patient_id"].nunique() == 1
    assert trials.loc["bidmc_20", "patient_id"] == trials.loc["bidmc_21", "patient_id"]
    assert trials.loc["bidmc_06", "patient_id"] != trials.loc["bidmc_20", "patient_id"]
    # 8 non-overlapping 60 s segments per 8 min recording, all clean
    assert int(indexed.segments["kept"].astype(bool).sum()) == 80
