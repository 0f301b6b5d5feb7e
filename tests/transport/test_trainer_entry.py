"""Your own model in deployment: a trainer from a Python entry point."""

import sys
from pathlib import Path

import pytest

from fedloom.client import LinearTrainer
from fedloom.errors import ConfigError
from fedloom.recipes import load_trainer


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_fl_model.py").write_text(
        "from fedloom.client import LinearTrainer\n"
        "def make():\n    return LinearTrainer(5, 3)\n"
        "def broken():\n    return 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_fl_model"
    sys.modules.pop("my_fl_model", None)


def test_an_entry_point_gives_the_users_trainer(module: str) -> None:
    trainer = load_trainer(f"{module}:make")
    assert isinstance(trainer, LinearTrainer)
    assert trainer.spec == LinearTrainer(5, 3).spec


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        (":missing", "has no attribute 'missing'"),
        (":broken", "returned an object without spec"),
        ("", "must look like package.module:function"),
    ],
)
def test_bad_entry_points_are_refused(module: str, suffix: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_trainer(module + suffix)


def test_an_unknown_module_is_named() -> None:
    with pytest.raises(ConfigError, match="no_such_module_xyz"):
        load_trainer("no_such_module_xyz:make")
