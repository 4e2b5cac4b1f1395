"""One bounds table for the tunable hyperparameters: the config's search space,
the coordinator checking a report and the trainer applying a lease accept and
refuse exactly the same values."""

from __future__ import annotations

import math

import pytest

from autolfads.config import HparamSpace, PbtConfig
from autolfads.coordinator.search.validation import check_hparams
from autolfads.errors import ConfigError
from autolfads.trainer.model.session import validate_hparams

CASES = [
    ("lr_init", 0.0, False),
    ("lr_init", 1e-5, True),
    ("lr_init", 1.0, False),
    ("cd_rate", 0.0, True),
    ("cd_rate", 0.995, True),
    ("cd_rate", 1.0, False),
    ("dropout_rate", -0.1, False),
    ("dropout_rate", 0.6, True),
    ("kl_co_scale", 0.0, True),
    ("kl_co_scale", 1e9, True),
    ("l2_gen_scale", math.inf, False),
    ("l2_gen_scale", math.nan, False),
]


def config_accepts(name: str, value: float) -> bool:
    try:
        PbtConfig(search_space={name: HparamSpace(min=value, max=value, sampling="uniform")})
    except (ValueError, ConfigError):
        return False
    return True


def trainer_accepts(name: str, value: float) -> bool:
    try:
        validate_hparams({name: value})
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize(("name", "value", "ok"), CASES)
def test_every_entry_point_agrees(name: str, value: float, ok: bool) -> None:
    assert trainer_accepts(name, value) is ok
    assert (check_hparams({name: value}) is None) is ok
    if value >= 0 and not math.isnan(value):  # a search space bound is >= 0 by type
        assert config_accepts(name, value) is ok


def test_messages_name_the_value_and_the_interval() -> None:
    assert check_hparams({"cd_rate": 1.0}) == "hyperparameter cd_rate=1.0 lies outside [0.0, 1.0)"
    assert "unknown hyperparameter 'lr'" in (check_hparams({"lr": 0.1}) or "")


def test_a_rate_range_from_zero_under_the_default_log_sampling_says_the_fix() -> None:
    # `sampling` defaults to "log": `dropout_rate: {min: 0, max: 0.6}` is
    # refused, and the line must say how to write what was meant.
    from autolfads.config import parse_config

    space = {"dropout_rate": {"min": 0.0, "max": 0.6}}
    with pytest.raises(ConfigError) as err:
        parse_config({"data": {"path": "x.h5"}, "pbt": {"search_space": space}})
    message = str(err.value)
    assert "pbt.search_space.dropout_rate" in message and "min 0.0" in message
    assert "sampling: uniform" in message and "\n" not in message
