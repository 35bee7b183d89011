"""Label vocabularies of the ECG datasets: PTB-XL diagnostic superclasses and AAMI beat classes.

PTB-XL (Wagner et al. 2020) labels each record with SCP-ECG statements and their likelihoods
(``scp_codes``, e.g. ``"{'NORM': 100.0, 'SR': 0.0}"``); ``scp_statements.csv`` maps each diagnostic
statement to one of five superclasses. MIT-BIH beat annotations use the WFDB beat symbols, grouped into
the five AAMI EC57 classes as in de Chazal et al. (2004).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from medcl.errors import CorruptFileError, DataError

__all__ = [
    "AAMI_CLASSES",
    "AAMI_SYMBOLS",
    "PTBXL_SUPERCLASSES",
    "aami_class",
    "parse_scp_codes",
    "ptbxl_superclasses",
    "read_scp_statements",
]

PTBXL_SUPERCLASSES: tuple[str, ...] = ("NORM", "MI", "STTC", "CD", "HYP")
"""PTB-XL's diagnostic superclasses: normal, myocardial infarction, ST/T change, conduction disturbance,
hypertrophy."""

AAMI_CLASSES: tuple[str, ...] = ("N", "S", "V", "F", "Q")
"""AAMI EC57 heartbeat classes: normal/bundle branch block, supraventricular ectopic, ventricular
ectopic, fusion, unknown/paced."""

AAMI_SYMBOLS: dict[str, tuple[str, ...]] = {
    "N": ("N", "L", "R", "e", "j"),
    "S": ("A", "a", "J", "S"),
    "V": ("V", "E"),
    "F": ("F",),
    "Q": ("/", "f", "Q"),
}
"""The MIT-BIH beat symbols of each AAMI class. Every other annotation symbol (rhythm changes ``+``,
noise ``~``, artefacts ``|``, non-conducted P waves ``x``, flutter waves ``!``, ...) is not a beat."""

_SYMBOL_TO_AAMI = {symbol: cls for cls, symbols in AAMI_SYMBOLS.items() for symbol in symbols}


def aami_class(symbol: str) -> str | None:
    """The AAMI class of a MIT-BIH beat symbol (``"L"`` → ``"N"``, ``"/"`` → ``"Q"``), or ``None`` for an
    annotation that is not a beat (``"+"``, ``"~"``, ``"|"``, ``"x"``, ...)."""
    return _SYMBOL_TO_AAMI.get(symbol)


def read_scp_statements(path: str | Path) -> pd.DataFrame:
    """Read PTB-XL's ``scp_statements.csv``, indexed by statement code.

    Raises:
        DataError: the file does not exist.
        CorruptFileError: it lacks the ``diagnostic``/``diagnostic_class`` columns.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(
            p, "PTB-XL scp_statements.csv not found", hint="it ships with PTB-XL next to the database"
        )
    try:
        table = pd.read_csv(p, index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CorruptFileError(p, f"not a readable CSV table ({type(exc).__name__}: {exc})") from None
    missing = {"diagnostic", "diagnostic_class"} - set(table.columns)
    if missing:
        raise CorruptFileError(p, f"scp_statements table lacks column(s) {', '.join(sorted(missing))}")
    return table


def parse_scp_codes(scp_codes: str | Mapping[str, float]) -> dict[str, float]:
    """PTB-XL's ``scp_codes`` cell as a dict ``{code: likelihood}``, parsed with ``ast.literal_eval``
    (never ``eval``).

    Raises:
        ValueError: the text is not a dict literal of code → number.
    """
    if isinstance(scp_codes, Mapping):
        parsed: object = dict(scp_codes)
    else:
        try:
            parsed = ast.literal_eval(str(scp_codes))
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            raise ValueError(f"scp_codes {str(scp_codes)[:80]!r} is not a dict literal ({exc})") from None
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) for k, v in parsed.items()
    ):
        raise ValueError(f"scp_codes {str(scp_codes)[:80]!r} is not a dict of code → likelihood")
    return {k: float(v) for k, v in parsed.items()}


def ptbxl_superclasses(scp_codes: str | Mapping[str, float], scp_statements: pd.DataFrame) -> list[str]:
    """The diagnostic superclasses of one PTB-XL record, in :data:`PTBXL_SUPERCLASSES` order.

    Follows PTB-XL's reference code (``example_physionet.py``, ``aggregate_diagnostic``): every listed
    code counts, whatever its likelihood (a ``0.0`` likelihood means "unknown", not "absent"), if it is
    a diagnostic statement (``diagnostic == 1`` in ``scp_statements``); it maps to its
    ``diagnostic_class``. Codes not in ``scp_statements`` and non-diagnostic codes (rhythm, form) are
    ignored, so a record can have no superclass (``[]``).

    Args:
        scp_codes: the record's ``scp_codes`` cell (text) or the parsed dict.
        scp_statements: :func:`read_scp_statements`' table (indexed by code).

    Raises:
        ValueError: ``scp_codes`` cannot be parsed (see :func:`parse_scp_codes`).
    """
    codes = parse_scp_codes(scp_codes)
    found: set[str] = set()
    for code in codes:
        if code not in scp_statements.index:
            continue
        row = scp_statements.loc[code]
        if row.get("diagnostic") == 1 and isinstance(row.get("diagnostic_class"), str):
            found.add(row["diagnostic_class"])
    known = [c for c in PTBXL_SUPERCLASSES if c in found]
    return known + sorted(found - set(PTBXL_SUPERCLASSES))
