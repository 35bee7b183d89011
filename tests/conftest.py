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
