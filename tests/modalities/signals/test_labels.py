"""PTB-XL superclasses against rows checked by hand, and the MIT-BIH → AAMI beat classes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medcl.errors import CorruptFileError, DataError
from modalities.signals.labels import (
    AAMI_CLASSES,
    PTBXL_SUPERCLASSES,
    aami_class,
    parse_scp_codes,
    ptbxl_superclasses,
    read_scp_statements,
)


@pytest.fixture(scope="module")
def statements(bundled_ptbxl: Path) -> pd.DataFrame:
    return read_scp_statements(bundled_ptbxl / "scp_statements.csv")


@pytest.fixture(scope="module")
def database(bundled_ptbxl: Path) -> pd.DataFrame:
    return pd.read_csv(bundled_ptbxl / "ptbxl_database.csv", index_col="ecg_id")


# Read by hand from ptbxl_database.csv and scp_statements.csv (diagnostic == 1 → diagnostic_class).
HAND_CHECKED = {
    1: ["NORM"],  # NORM 100, LVOLT 0 (form), SR 0 (rhythm)
    8: ["MI"],  # IMI 35, ABQRS (form), SR
    20: [],  # AFLT (rhythm), ABQRS (form): no diagnostic statement
    39: ["MI", "STTC"],  # IMI 15, LNGQT, NST_, DIG, ABQRS, SR
    45: ["CD", "HYP"],  # IRBBB (CD), RAO/RAE and RVH (HYP), SR
    50: ["MI", "CD"],  # LMI 15, IVCD 100, SR
    263: ["MI", "STTC"],  # ASMI 50, NST_ 0.0: a zero likelihood still counts, as in PTB-XL's code
}


@pytest.mark.parametrize(("ecg_id", "expected"), sorted(HAND_CHECKED.items()))
def test_superclasses_of_hand_checked_records(
    ecg_id: int, expected: list[str], statements: pd.DataFrame, database: pd.DataFrame
) -> None:
    assert ptbxl_superclasses(database.loc[ecg_id, "scp_codes"], statements) == expected


def test_superclasses_from_a_dict_and_order(statements: pd.DataFrame) -> None:
    assert ptbxl_superclasses({"RVH": 0.0, "IMI": 100.0, "NORM": 50.0, "UNKNOWN": 100.0}, statements) == [
        "NORM",
        "MI",
        "HYP",
    ]
    assert PTBXL_SUPERCLASSES == ("NORM", "MI", "STTC", "CD", "HYP")


def test_scp_codes_are_parsed_without_eval(statements: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="not a dict literal"):
        parse_scp_codes("__import__('os').system('echo owned')")
    with pytest.raises(ValueError, match="not a dict of code"):
        parse_scp_codes("['NORM']")
    with pytest.raises(ValueError):
        ptbxl_superclasses("{'NORM': 'high'}", statements)
    assert parse_scp_codes("{'NORM': 100.0, 'SR': 0}") == {"NORM": 100.0, "SR": 0.0}


def test_superclass_counts_of_the_shared_subset(shared_data: Path) -> None:
    folder = shared_data / "ptbxl"
    statements = read_scp_statements(folder / "scp_statements.csv")
    database = pd.read_csv(folder / "ptbxl_database.csv")
    per_record = pd.Series(
        [c for codes in database["scp_codes"] for c in ptbxl_superclasses(codes, statements)]
    ).value_counts()
    assert per_record.to_dict() == {"NORM": 297, "STTC": 96, "CD": 78, "MI": 73, "HYP": 40}
    # DATA.md's "NORM 297, STTC 109, MI 88, CD 88, HYP 45" counts diagnostic *statements* (a record with
    # IMI and ASMI counts twice for MI), which the statements table reproduces exactly:
    per_statement = pd.Series(
        [
            statements.loc[code, "diagnostic_class"]
            for codes in database["scp_codes"]
            for code in parse_scp_codes(codes)
            if code in statements.index and statements.loc[code, "diagnostic"] == 1
        ]
    ).value_counts()
    assert per_statement.to_dict() == {"NORM": 297, "STTC": 109, "MI": 88, "CD": 88, "HYP": 45}


def test_scp_statements_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_scp_statements(tmp_path / "scp_statements.csv")
    (tmp_path / "bad.csv").write_text("code,description\nNORM,normal\n")
    with pytest.raises(CorruptFileError, match="lacks column"):
        read_scp_statements(tmp_path / "bad.csv")


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [
        *[(s, "N") for s in "NLRej"],
        *[(s, "S") for s in "AaJS"],
        *[(s, "V") for s in "VE"],
        ("F", "F"),
        *[(s, "Q") for s in "/fQ"],
        *[(s, None) for s in ["+", "~", "|", "x", "!", '"', "[", "]", "p", "t", "u", "T"]],
    ],
)
def test_aami_class(symbol: str, expected: str | None) -> None:
    assert aami_class(symbol) == expected


def test_aami_classes() -> None:
    assert AAMI_CLASSES == ("N", "S", "V", "F", "Q")
