"""Module specs: recorded constructor arguments, rebuilding, and the class-path allow-list."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from medcl.configurable import Configurable, check_class_path, instantiate_spec, module_spec
from medcl.errors import ConfigError
from medcl.heads import ProjectionHead


class Tiny(Configurable, nn.Module):
    def __init__(self, width: int, depth: int = 2, names: tuple[str, ...] = ("a",)) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])


class TinyChild(Tiny):
    def __init__(self, scale: float = 2.0, **kwargs: int) -> None:
        super().__init__(width=4, **kwargs)
        self.scale = scale


class NoInit(Tiny):
    pass


def test_records_the_outermost_constructor_arguments() -> None:
    assert module_spec(Tiny(3)) == {
        "class_path": f"{__name__}.Tiny",
        "init_args": {"width": 3, "depth": 2, "names": ["a"]},
    }
    assert module_spec(TinyChild(scale=0.5, depth=1))["init_args"] == {"scale": 0.5, "depth": 1}
    # A subclass without its own __init__ records its parent's arguments under its own class path.
    assert module_spec(NoInit(5)) == {
        "class_path": f"{__name__}.NoInit",
        "init_args": {"width": 5, "depth": 2, "names": ["a"]},
    }


def test_non_json_arguments_make_no_spec() -> None:
    class Holder(Configurable, nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

    assert module_spec(Holder(nn.Linear(1, 1))) is None
    assert module_spec(ProjectionHead(4)) is None  # not Configurable


def test_paths_and_configurable_arguments_are_recorded_as_plain_data() -> None:
    class Holder(Configurable, nn.Module):
        def __init__(self, inner: object, where: str | Path = ".") -> None:
            super().__init__()
            self.inner = inner

    spec = module_spec(Holder(Tiny(3), where=Path("/data/x")))
    assert spec is not None
    assert spec["init_args"] == {
        "inner": {"class_path": f"{__name__}.Tiny", "init_args": {"width": 3, "depth": 2, "names": ["a"]}},
        "where": "/data/x",
    }
    # an argument that is neither still makes no spec
    assert module_spec(Holder(Tiny(3), where=object())) is None  # type: ignore[arg-type]


def test_instantiate_only_allowed_class_paths() -> None:
    spec = {"class_path": "os.system", "init_args": {"command": "true"}}
    with pytest.raises(ConfigError, match=r"refusing to instantiate 'os\.system'"):
        instantiate_spec(spec)
    with pytest.raises(ConfigError, match="refusing"):
        check_class_path("builtins.eval")
    with pytest.raises(ConfigError, match="cannot import"):
        instantiate_spec({"class_path": "medcl.heads.DoesNotExist", "init_args": {}})
    with pytest.raises(ConfigError, match="not a class"):
        instantiate_spec({"class_path": "medcl.configurable.module_spec", "init_args": {}})
    head = instantiate_spec(
        {"class_path": "medcl.heads.ProjectionHead", "init_args": {"in_dim": 3, "out_dim": 2}}
    )
    assert isinstance(head, ProjectionHead) and head.net[-1].out_features == 2


def test_round_trip_rebuilds_an_equal_module() -> None:
    original = Tiny(3, depth=3)
    spec = module_spec(original)
    rebuilt = instantiate_spec(spec, allowed=(f"{__name__}.",))
    assert isinstance(rebuilt, Tiny) and len(rebuilt.layers) == 3
    assert module_spec(rebuilt) == spec
