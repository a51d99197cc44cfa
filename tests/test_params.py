"""Validation of every per-request parameter."""

from __future__ import annotations

import pytest

from serve.config import Settings
from serve.errors import InvalidParameter
from serve.params import parse_params

DEFAULTS = Settings(checkpoint_path="x")


def test_defaults_when_absent_or_empty() -> None:
    p = parse_params({}, DEFAULTS)
    assert (p.segment_duration, p.max_new_tokens, p.temperature, p.repetition_penalty, p.enable_s2t) == (
        60.0, 8192, 0.1, 1.1, False)
    assert parse_params({"temperature": "  ", "enable_s2t": ""}, DEFAULTS).temperature == 0.1


def test_valid_values() -> None:
    p = parse_params({"segment_duration": "10", "max_new_tokens": "256", "temperature": "0",
                      "repetition_penalty": "1.0", "enable_s2t": "true"}, DEFAULTS)
    assert (p.segment_duration, p.max_new_tokens, p.temperature, p.repetition_penalty, p.enable_s2t) == (
        10.0, 256, 0.0, 1.0, True)


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes", "on", "Y"])
def test_enable_s2t_truthy(value: str) -> None:
    assert parse_params({"enable_s2t": value}, DEFAULTS).enable_s2t is True


@pytest.mark.parametrize("value", ["false", "0", "no", "off", "N"])
def test_enable_s2t_falsy(value: str) -> None:
    assert parse_params({"enable_s2t": value}, DEFAULTS).enable_s2t is False


@pytest.mark.parametrize(("name", "value"), [
    ("segment_duration", "abc"), ("segment_duration", "0"), ("segment_duration", "-5"),
    ("segment_duration", "0.5"), ("segment_duration", "1201"), ("segment_duration", "1e9"),
    ("segment_duration", "nan"), ("segment_duration", "inf"),
    ("max_new_tokens", "abc"), ("max_new_tokens", "0"), ("max_new_tokens", "-1"), ("max_new_tokens", "1.5"),
    ("max_new_tokens", "99999999999"),
    ("temperature", "abc"), ("temperature", "-0.1"), ("temperature", "3"), ("temperature", "nan"),
    ("repetition_penalty", "abc"), ("repetition_penalty", "0"), ("repetition_penalty", "-1"),
    ("repetition_penalty", "10"),
    ("enable_s2t", "maybe"), ("enable_s2t", "2"),
])
def test_invalid_values_name_the_parameter(name: str, value: str) -> None:
    with pytest.raises(InvalidParameter) as exc:
        parse_params({name: value}, DEFAULTS)
    assert exc.value.param == name and name in exc.value.message and exc.value.status == 400
