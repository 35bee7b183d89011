"""Safety (issue 8.3): configs import only allow-listed classes, checkpoints load as plain data, ONNX
metadata is JSON data, and patient identifiers stay out of logs and reports.

Foreign code is a canary module written into ``tmp_path`` (a unique name per test): importing it, or
instantiating its callback, leaves a marker file, so "refused before import" is checked, not assumed.
Patient-id checks run the real commands on the bundled PTB-XL and MSD hippocampus data and search
everything they print and every log/report they write for the data's own patient ids, with a positive
control (the per-patient files in the run folder do hold them).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
import yaml
from onnx import TensorProto, helper

from export.predictor import ModelMetadataError, OnnxPredictor
from medcl.checkpoints import load_checkpoint, load_encoder
from medcl.cli import main
from medcl.configurable import (
    ALLOWED_PREFIXES,
    class_paths_in,
    config_allow_list,
    instantiate_spec,
    is_allowed,
)
from medcl.errors import LOG_IDS_ENV, ConfigError, CorruptFileError, SplitLeakError
from medcl.training.cli import PretrainCLI
from tasks.cli import finetune_cli_class

REPO = Path(__file__).resolve().parents[1]
SIMCLR = REPO / "configs" / "pretrain" / "simclr_ecg.yaml"
HIPPOCAMPUS_SEG = REPO / "configs" / "finetune" / "hippocampus_seg.yaml"
NORM_MI = REPO / "configs" / "finetune" / "ptbxl_norm_mi.yaml"
RECORD = "records100/00000/00001_lr"

CANARY_SOURCE = """
import pathlib
MARKERS = pathlib.Path({markers!r})
(MARKERS / "imported").touch()
from lightning.pytorch.callbacks import Callback
class Boom(Callback):
    def __init__(self) -> None:
        super().__init__()
        (MARKERS / "instantiated").touch()
"""


class Canary:
    """A module of foreign code on ``sys.path`` that leaves ``imported``/``instantiated`` markers."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.name = f"medcl_canary_{uuid.uuid4().hex[:8]}"
        self.markers = tmp_path / "markers"
        self.markers.mkdir()
        code = tmp_path / "code"
        code.mkdir()
        (code / f"{self.name}.py").write_text(CANARY_SOURCE.format(markers=str(self.markers)))
        monkeypatch.syspath_prepend(str(code))
        self.cls = f"{self.name}.Boom"

    @property
    def imported(self) -> bool:
        return (self.markers / "imported").exists() or self.name in sys.modules

    @property
    def instantiated(self) -> bool:
        return (self.markers / "instantiated").exists()


@pytest.fixture()
def canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Canary:
    return Canary(tmp_path, monkeypatch)


def import_policy_state() -> tuple[object, object]:
    from jsonargparse._common import parsing_settings

    return dict(parsing_settings["import_path_verdicts"]), parsing_settings["import_paths_enforced"]


def refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``medcl ARGV``; it must fail with status 2 and one error line, which is returned."""
    before = import_policy_state()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert import_policy_state() == before  # the CLI puts jsonargparse's global policy back
    return err.strip().splitlines()[-1]


# --------------------------------------------------------------------------------------------------
# 1. configs: the allow-list


def parse_only(cli_class: type) -> type:
    """The CLI class with instantiation switched off: parsing and the checks only."""

    class ParseOnly(cli_class):  # type: ignore[misc, valid-type]
        def instantiate_classes(self) -> None:
            pass

    return ParseOnly


@pytest.mark.parametrize("config", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_parses_under_the_allow_list(config: Path) -> None:
    """The allow-list is not too strict: every config we ship names only allowed classes, and parses
    with jsonargparse's import policy on."""
    named = [path for _, path in class_paths_in(yaml.safe_load(config.read_text()))]
    assert named and all(is_allowed(path, config_allow_list()) for path in named)
    cli_class = (
        PretrainCLI if config.parent.name == "pretrain" else finetune_cli_class(["--config", str(config)])
    )
    cli = parse_only(cli_class)(args=["--config", str(config)], run=False)
    assert {path for _, path in class_paths_in(cli.config.as_dict())} >= {p for p in named if "." in p}


def attacks(canary: Canary, tmp_path: Path) -> dict[str, tuple[list[str], str, str]]:
    """name → (medcl argv, refused class path, where the error must say it came from)."""
    evil_callbacks = tmp_path / "evil_callbacks.yaml"
    evil_callbacks.write_text(yaml.safe_dump({"trainer": {"callbacks": [{"class_path": canary.cls}]}}))
    evil_nested = tmp_path / "evil_nested.yaml"
    evil_nested.write_text(
        yaml.safe_dump({"model": {"objective": {"init_args": {"head": {"class_path": canary.cls}}}}})
    )
    base = ["pretrain", "--config", str(SIMCLR)]
    return {
        "config file callback": (
            [*base, "--config", str(evil_callbacks)],
            canary.cls,
            f"{evil_callbacks}: trainer.callbacks[0].class_path",
        ),
        "nested init_args": (
            [*base, "--config", str(evil_nested)],
            canary.cls,
            "model.objective.init_args.head.class_path",
        ),
        "list append": ([*base, f"--trainer.callbacks+={canary.cls}"], canary.cls, "argument --trainer"),
        "list append, separate value": (
            [*base, "--trainer.callbacks+", canary.cls],
            canary.cls,
            "argument --trainer.callbacks+",
        ),
        "dotted class_path": (
            [*base, f"--model.encoder.class_path={canary.cls}"],
            canary.cls,
            "argument --model.encoder.class_path",
        ),
        "bare value (import policy)": (
            [*base, f"--model.encoder={canary.cls}"],
            canary.cls,
            f"argument --model.encoder={canary.cls}",
        ),
        "inline yaml": (
            [*base, f"--model.encoder={{class_path: {canary.cls}}}"],
            canary.cls,
            "argument --model.encoder",
        ),
        "nested config file as a value": (
            [*base, f"--trainer.callbacks={evil_callbacks}"],
            canary.cls,
            str(evil_callbacks),
        ),
        "inline --config with builtins.eval": (
            [*base, "--config={trainer: {callbacks: [{class_path: builtins.eval}]}}"],
            "builtins.eval",
            "argument --config",
        ),
        "short name of a logger not on the list": (
            [*base, "--trainer.logger=WandbLogger"],
            "lightning.pytorch.loggers.WandbLogger",
            "argument --trainer.logger=WandbLogger",
        ),
        "os.system reached through an allowed module": (
            [*base, "--trainer.callbacks+=export.onnx.os.system"],
            "posix.system" if sys.platform != "win32" else "nt.system",
            "argument --trainer.callbacks+=export.onnx.os.system",
        ),
        "segmentation model class": (
            ["finetune", "--config", str(HIPPOCAMPUS_SEG), f"--model.class_path={canary.cls}"],
            canary.cls,
            "argument --model.class_path",
        ),
        "classification callback": (
            ["finetune", "--config", str(NORM_MI), f"--trainer.callbacks+={canary.cls}"],
            canary.cls,
            "argument --trainer.callbacks+",
        ),
    }


def test_foreign_class_paths_are_refused_before_anything_is_imported(
    canary: Canary, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, (argv, class_path, source) in attacks(canary, tmp_path).items():
        line = refused(capsys, [*argv, f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"])
        assert line.startswith(f"medcl {argv[0]}: error: refusing to instantiate {class_path!r} ("), name
        assert source in line, (name, line)
        assert "--allow_class_path PREFIX" in line, name
        assert not canary.imported and not canary.instantiated, name
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_the_allow_list_grows_only_from_the_command_line(
    canary: Canary, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text(yaml.safe_dump({"trainer": {"callbacks": [{"class_path": canary.cls}]}}))
    # a config file cannot allow itself more: its class paths are checked first, and the key is no option
    self_allowing = {
        "allow_class_path": [canary.name],
        "trainer": {"callbacks": [{"class_path": canary.cls}]},
    }
    (tmp_path / "self_allowing.yaml").write_text(yaml.safe_dump(self_allowing))
    line = refused(
        capsys, ["pretrain", "--config", str(SIMCLR), "--config", str(tmp_path / "self_allowing.yaml")]
    )
    assert repr(canary.cls) in line and not canary.imported
    (tmp_path / "key_only.yaml").write_text(yaml.safe_dump({"allow_class_path": [canary.name]}))
    with pytest.raises(SystemExit) as parse_error:  # jsonargparse's own usage error, exit status 2
        main(["pretrain", "--config", str(SIMCLR), "--config", str(tmp_path / "key_only.yaml")])
    assert parse_error.value.code == 2 and "allow_class_path" in capsys.readouterr().err
    line = refused(capsys, ["pretrain", "--config", str(SIMCLR), "--allow_class_path", "jsonargparse"])
    assert "Import paths under 'jsonargparse' can't be allowed" in line  # it could lift the policy
    with pytest.raises(ConfigError, match="expected a dotted Python path"):
        PretrainCLI(args=["--config", str(SIMCLR), "--allow_class_path", "os; rm -rf /"], run=False)
    assert not canary.imported
    # named on the command line, it is imported and instantiated (the same config as refused above)
    args = ["--config", str(SIMCLR), "--config", str(evil), "--allow_class_path", canary.name]
    args += [f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]
    cli = PretrainCLI(args=args, run=False)
    assert canary.instantiated
    assert any(type(c).__module__ == canary.name for c in cli.trainer.callbacks)


def test_checkpoint_hyper_parameters_and_weights_only_are_checked(
    canary: Canary, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--ckpt_path``: LightningCLI parses the checkpoint's hyper-parameters into the config."""
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"encoder": {"class_path": canary.cls}}}, ckpt)
    base = [
        "pretrain",
        "validate",
        "--config",
        str(SIMCLR),
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    line = refused(capsys, [*base, f"--ckpt_path={ckpt}"])
    assert f"refusing to instantiate {canary.cls!r} (checkpoint {ckpt}: hyper_parameters.encoder" in line
    assert not canary.imported
    line = refused(capsys, [*base, f"--ckpt_path={ckpt}", "--weights_only=false"])
    assert "medcl loads checkpoints with weights_only=True only" in line


# --------------------------------------------------------------------------------------------------
# 2. checkpoints


def torch_load_calls(path: Path) -> Iterable[tuple[int, bool]]:
    """``(line, has weights_only=True)`` of every ``torch.load(...)`` call in a Python file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"
        ):
            safe = any(
                k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in node.keywords
            )
            yield node.lineno, safe


def test_every_torch_load_in_the_project_is_weights_only() -> None:
    files = [
        p
        for d in ("medcl", "modalities", "tasks", "export", "benchmarks", "tests")
        for p in (REPO / d).rglob("*.py")
    ]
    calls = {(str(f.relative_to(REPO)), line): safe for f in files for line, safe in torch_load_calls(f)}
    assert len(calls) >= 3  # the scan finds them (medcl/checkpoints.py, medcl/training/cli.py, tests)
    assert [where for where, safe in calls.items() if not safe] == []
    unsafe = re.compile(
        r"\b(pickle\.loads?|yaml\.(unsafe_)?load|marshal\.loads?|dill\.loads?)\(|allow_pickle=True"
    )
    hits = [
        f"{f.relative_to(REPO)}:{n}"
        for d in ("medcl", "modalities", "tasks", "export")
        for f in (REPO / d).rglob("*.py")
        for n, text in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
        if unsafe.search(text)
    ]
    assert hits == []


class Payload:
    """Unpickling this calls ``Path.touch`` on the marker: code run by loading."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_a_checkpoint_holding_code_is_refused_without_running_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    ckpt = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload(marker)}}, ckpt)
    with pytest.raises(CorruptFileError, match=r"pickled\.ckpt: refused to load.*weights_only=True"):
        load_checkpoint(ckpt)
    line = refused(capsys, ["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "m.onnx")])
    assert line.startswith(f"medcl export: error: {ckpt}: refused to load")
    assert not marker.exists() and not (tmp_path / "m.onnx").exists()


def test_a_checkpoint_spec_outside_the_allow_list_is_refused(canary: Canary, tmp_path: Path) -> None:
    state = {"encoder.weight": torch.zeros(2, 2)}
    for class_path, message in (
        (canary.cls, f"refusing to instantiate {canary.cls!r}"),
        ("builtins.eval", "refusing to instantiate 'builtins.eval'"),
        # an allowed module's re-export of a foreign class: pathlib.Path through medcl.checkpoints
        ("medcl.checkpoints.Path", "it is 'pathlib.Path', a class from outside medcl, modalities"),
    ):
        ckpt = tmp_path / "spec.ckpt"
        torch.save(
            {"state_dict": state, "medcl": {"encoder": {"class_path": class_path, "init_args": {}}}}, ckpt
        )
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_encoder(ckpt)
    assert not canary.imported
    # checkpoint specs may name medcl's own packages only, not the config list's third-party classes
    with pytest.raises(ConfigError, match="refusing"):
        instantiate_spec({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {}})
    assert ALLOWED_PREFIXES == ("medcl.", "modalities.", "tasks.", "export.")


# --------------------------------------------------------------------------------------------------
# 3. ONNX metadata


def write_model(path: Path, metadata: str, channels: int = 12, length: int = 200) -> Path:
    """A real ONNX graph (mean over time → ``probabilities``) carrying ``metadata`` as medcl's entry."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, length])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", channels])
    node = helper.make_node("ReduceMean", ["input"], ["probabilities"], axes=[2], keepdims=0)
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]
    )
    entry = model.metadata_props.add()
    entry.key, entry.value = "medcl", metadata
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def signal_metadata() -> dict[str, object]:
    """The metadata ``medcl export`` writes for a 12-lead, 100 Hz, 2 s window model of the bundled
    PTB-XL (the preprocessing spec is the real adapter's)."""
    from modalities.signals import SignalAdapter

    spec = SignalAdapter(labels="norm_vs_mi", window_s=2.0, stride_s=1.0).input_spec()
    return {
        "format": "medcl-onnx/1",
        "task": "multilabel",
        "class_names": list(spec["channels"]),
        "input": {
            "name": "input",
            "layout": "(B, C, T)",
            "channels": spec["channels"],
            "fs": spec["fs"],
            "window_samples": spec["window_samples"],
        },
        "preprocessing": spec["preprocessing"],
    }


def test_onnx_metadata_is_json_data_never_code(
    signal_metadata: dict[str, object],
    bundled_ptbxl: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    marker = tmp_path / "ran"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    # values that look like code are kept as strings: names, task, a step's settings
    names = [code, "{{7*7}}", "$(touch x)", *signal_metadata["class_names"][3:]]  # type: ignore[index]
    model = write_model(tmp_path / "names.onnx", json.dumps({**signal_metadata, "class_names": names}))
    predictor = OnnxPredictor(model)
    assert predictor.class_names == names and predictor.metadata["class_names"][0] == code
    record = str(bundled_ptbxl / RECORD) + ".hea"
    windows, _ = predictor.preprocess_file(record)
    prediction = predictor.predict_file(record)  # the model still works: its metadata is only data
    np.testing.assert_allclose(prediction.window_probabilities, windows.mean(axis=2), rtol=1e-5, atol=1e-6)

    broken = {
        "python expression": (code, "is not valid JSON"),
        "YAML object tag": (f"!!python/object/apply:os.system ['touch {marker}']", "is not valid JSON"),
        "pickle bytes": (
            "\x80\x04\x95\x1a\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94.",
            "is not valid JSON",
        ),
        "JSON list": (json.dumps([code]), "is JSON but not an object (list)"),
        "JSON string": (json.dumps(code), "is JSON but not an object (str)"),
        "code as a preprocessing step": (
            json.dumps({**signal_metadata, "preprocessing": [{"op": code}]}),
            "unknown preprocessing step(s)",
        ),
        "a step that is not an object": (
            json.dumps({**signal_metadata, "preprocessing": ["eval"]}),
            "malformed signal model metadata",
        ),
        "no input block": (
            json.dumps({k: v for k, v in signal_metadata.items() if k != "input"}),
            "malformed signal model metadata (KeyError: 'input')",
        ),
    }
    for name, (metadata, message) in broken.items():
        path = write_model(tmp_path / f"{name.replace(' ', '_')}.onnx", metadata)
        with pytest.raises(ModelMetadataError, match=re.escape(f"{path}: ") + ".*" + re.escape(message)):
            OnnxPredictor(path)
    line = refused(capsys, ["predict", "--model", str(tmp_path / "JSON_list.onnx"), record])
    assert line.startswith("medcl predict: error: ") and "not an object" in line
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# 4. patient identifiers


def id_pattern(ids: Iterable[str]) -> re.Pattern[str]:
    """Matches any of ``ids`` as a whole token (not inside a longer number, word or decimal)."""
    alternatives = "|".join(re.escape(i) for i in sorted(set(ids), key=len, reverse=True))
    return re.compile(rf"(?<![\w.])({alternatives})(?![\w])")


def id_hits(pattern: re.Pattern[str], texts: dict[str, str]) -> dict[str, list[str]]:
    return {name: pattern.findall(text)[:5] for name, text in texts.items() if pattern.search(text)}


def test_indexing_prints_counts_and_keeps_ids_in_the_output_folder(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """MSD volumes are named by case, and every case is a patient: the summary must not name files."""
    from modalities.bundled import resolve_root

    source = resolve_root("bundled:msd_hippocampus")
    root = tmp_path / "msd"
    cases = sorted(p.name for p in (source / "imagesTr").glob("*.nii.gz"))[:6]
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
        for name in cases:
            shutil.copyfile(source / folder / name, root / folder / name)
    broken = root / "imagesTr" / cases[-1]
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated download
    out = tmp_path / "index"
    assert main(["index", str(root), "--modality", "volume", "--out", str(out)]) == 0
    printed = capfd.readouterr()
    assert "indexed 5 of 6 studies (5 patients); 1 quarantined → see quarantine.csv" in printed.out

    ids = [name.removesuffix(".nii.gz") for name in cases]
    pattern = id_pattern(ids)
    # positive control: the per-patient records in the output folder name them
    assert pattern.search((out / "trials.csv").read_text())
    assert pattern.findall((out / "quarantine.csv").read_text()) == [ids[-1]]
    texts = {"stdout": printed.out, "stderr": printed.err, "index.json": (out / "index.json").read_text()}
    assert id_hits(pattern, texts) == {}


def test_a_pretraining_run_logs_no_patient_id(
    bundled_ptbxl: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A real ``medcl pretrain`` run on the bundled PTB-XL: what it prints, logs and writes as logs
    (metrics, configs, data summary) and the non-weight content of its checkpoints name no patient."""
    args = [
        "pretrain",
        "--config",
        str(SIMCLR),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--data.batch_size=16",
        "--data.on_error=skip",
        "--model.encoder.init_args.arch_kwargs={nf: 4, depth: 1}",
    ]
    assert main(args) == 0
    printed = capfd.readouterr()
    run = tmp_path / "simclr_ecg" / "version_0"
    ids = pd.read_csv(run / "trials.csv", dtype={"patient_id": str})["patient_id"].unique()
    assert len(ids) == 275
    pattern = id_pattern(ids)
    assert len(set(pattern.findall((run / "splits.csv").read_text()))) == 275  # positive control
    texts = {"stdout": printed.out, "stderr": printed.err, "log records": caplog.text}
    for name in ("metrics.csv", "config.yaml", "hparams.yaml", "data.json"):
        texts[name] = (run / name).read_text()
    for ckpt in sorted((run / "checkpoints").glob("*.ckpt")):
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
        texts[ckpt.name] = repr(
            {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
        )
    assert "data: 300 recordings of 275 patients usable" in printed.out + printed.err + caplog.text
    assert id_hits(pattern, texts) == {}


def test_a_split_leak_is_reported_by_count_unless_ids_are_asked_for(
    bundled_ptbxl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(LOG_IDS_ENV, raising=False)
    table = pd.read_csv(bundled_ptbxl / "ptbxl_database.csv", usecols=["patient_id"])
    patient = str(int(table["patient_id"].iloc[0]))
    leaky = tmp_path / "leaky.csv"
    leaky.write_text(f"patient_id,split\n{patient},train\n{patient},test\n")
    line = refused(
        capsys,
        [
            "pretrain",
            "--config",
            str(SIMCLR),
            "--data.split.method=file",
            f"--data.split.file={leaky}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        ],
    )
    assert line.startswith("medcl pretrain: error: 1 patient(s) appear in more than one split")
    assert f"set {LOG_IDS_ENV}=1 to name them" in line and not id_pattern([patient]).search(line)
    from medcl.data.splits import load_splits

    with pytest.raises(SplitLeakError) as raised:
        load_splits(leaky)
    assert raised.value.patient_ids == [patient]  # there for code that asks
    monkeypatch.setenv(LOG_IDS_ENV, "1")  # the user asks
    with pytest.raises(
        SplitLeakError, match=rf"1 patient\(s\) appear in more than one split \(e\.g\. {patient}\)"
    ):
        load_splits(leaky)


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["ecg", "volume"])
def test_demo_reports_and_output_name_no_patient(modality: str, tmp_path: Path) -> None:
    """``medcl demo --quick``: report.md, report.json, the CSV summaries and stdout give counts; the
    files the export step checked are listed only in the output folder's own table."""
    import subprocess

    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "medcl", "demo", "--modality", modality, "--out", str(out), "--quick"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifests = sorted(out.rglob("trials.csv"))
    assert manifests
    ids = set().union(*(set(pd.read_csv(m, dtype={"patient_id": str})["patient_id"]) for m in manifests))
    files = pd.read_csv(out / ("export_records.csv" if modality == "ecg" else "export_volumes.csv"))["path"]
    names = {Path(p).name.removesuffix(".nii.gz") for p in files}  # record and volume names too
    pattern = id_pattern(ids | names)
    assert pattern.search(manifests[0].read_text())  # positive control: the run's own manifest
    texts = {"stdout": result.stdout, "stderr": result.stderr}
    for name in ("report.md", "report.json", "label_efficiency.csv", "segmentation_efficiency.csv"):
        if (out / name).is_file():
            texts[name] = (out / name).read_text()
    assert id_hits(pattern, texts) == {}
