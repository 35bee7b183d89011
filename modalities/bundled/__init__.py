"""Small real datasets shipped with medcl, so that the demo and the tests run on a fresh machine.

Each folder keeps its dataset's original layout and file formats, next to its licence and citation
(``PROVENANCE.md``, ``LICENSE.txt``). Configs name them as ``bundled:<name>``; :func:`resolve_root`
turns such a name (or any ordinary path) into a directory.

===================  ===========================================================  ============
name                 what                                                         licence
===================  ===========================================================  ============
``ptbxl``            PTB-XL records 1-300: 12-lead ECG, 100 Hz, 10 s, WFDB,       CC BY 4.0
                     275 patients
``msd_hippocampus``  MSD Task04 hippocampus, 40 labelled MRI crops (the lowest    CC BY-SA 4.0
                     case numbers), NIfTI, MSD layout without dataset.json
``bidmc``             BIDMC PPG/ECG/respiration, 10 ICU recordings of 6            ODC-By 1.0
                     participants (subjects 01-04, 06-09, 20-21), 125 Hz, CSV
===================  ===========================================================  ============
"""

from __future__ import annotations

from pathlib import Path

from medcl.errors import ConfigError

__all__ = ["BUNDLED_PREFIX", "available", "bundled_hippocampus_root", "resolve_root"]

BUNDLED_PREFIX = "bundled:"
_HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the bundled datasets."""
    return sorted(p.name for p in _HERE.iterdir() if p.is_dir() and (p / "PROVENANCE.md").is_file())


def resolve_root(root: str | Path) -> Path:
    """Turn ``"bundled:<name>"`` into the bundled dataset's folder; other paths are returned expanded.

    Raises:
        ConfigError: for an unknown bundled name or a folder that does not exist.
    """
    text = str(root)
    if text.startswith(BUNDLED_PREFIX):
        name = text[len(BUNDLED_PREFIX) :]
        path = _HERE / name
        if name not in available():
            raise ConfigError(f"unknown bundled dataset {name!r}; bundled datasets: {', '.join(available())}")
        return path
    path = Path(text).expanduser()
    if not path.is_dir():
        raise ConfigError(f"data root {text!r} is not a folder")
    return path


def bundled_hippocampus_root() -> Path:
    """The bundled MSD hippocampus subset (``imagesTr/``, ``labelsTr/``): ``"bundled:msd_hippocampus"``."""
    return resolve_root(f"{BUNDLED_PREFIX}msd_hippocampus")
