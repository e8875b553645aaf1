"""Configs: each knob declared once (in a nested sub-config), seen flat everywhere else."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated

import pytest
import tyro

from bnlab.lab.configs import (
    build,
    config_from_dict,
    config_to_dict,
    field_defaults,
    flat_fields,
    flat_values,
    given_fields,
    replace_flat,
)


@dataclass(frozen=True)
class Training:
    epochs: int = 40
    """passes over the data"""
    lr: float = 1e-3
    """learning rate"""


@dataclass(frozen=True)
class Config:
    seeds: tuple[int, ...] = (0, 1)
    """seeds"""
    training: Annotated[Training, tyro.conf.OmitArgPrefixes] = Training()
    """training settings"""
    holdout: int = 500
    """held-out digits"""


def test_a_nested_knob_has_one_flat_name_and_its_path():
    assert flat_fields(Config) == {
        "seeds": ("seeds",),
        "epochs": ("training", "epochs"),
        "lr": ("training", "lr"),
        "holdout": ("holdout",),
    }
    assert flat_values(build(Config, epochs=3))["epochs"] == 3
    assert field_defaults(Config) == {"seeds": (0, 1), "epochs": 40, "lr": 1e-3, "holdout": 500}


def test_replace_flat_reaches_into_the_sub_config_and_refuses_unknown_names():
    cfg = replace_flat(Config(), {"epochs": 5, "holdout": 7})
    assert cfg == Config(training=Training(epochs=5), holdout=7)
    with pytest.raises(TypeError, match="no setting 'color'"):
        replace_flat(Config(), {"color": "red"})


def test_config_json_is_flat_and_reads_back_old_and_new():
    cfg = build(Config, epochs=3, seeds=(4,))
    flat = config_to_dict(cfg)
    assert flat == {"seeds": [4], "epochs": 3, "lr": 1e-3, "holdout": 500}
    assert config_from_dict(Config, json.loads(json.dumps(flat))) == cfg
    # a config.json from before a knob existed: the knob takes its default
    assert config_from_dict(Config, {"seeds": [4], "epochs": 3}) == cfg
    with pytest.raises(ValueError, match="does not know: color"):
        config_from_dict(Config, {**flat, "color": "red"})


def test_the_command_line_keeps_flat_flags_and_sees_which_were_given():
    argv = ["--epochs", "3", "--seeds", "1", "2"]
    assert tyro.cli(Config, args=argv) == build(Config, epochs=3, seeds=(1, 2))
    assert given_fields(Config, argv) == {"epochs", "seeds"}


def test_a_knob_declared_twice_is_refused():
    @dataclass(frozen=True)
    class Twice:
        epochs: int = 1
        training: Training = Training()

    with pytest.raises(TypeError, match="'epochs' is declared twice"):
        flat_fields(Twice)


def test_a_knob_missing_from_config_json_takes_the_sub_config_fields_default():
    @dataclass(frozen=True)
    class Short:
        training: Annotated[Training, tyro.conf.OmitArgPrefixes] = Training(epochs=20)

    assert config_from_dict(Short, {"lr": 0.5}) == Short(training=Training(epochs=20, lr=0.5))
