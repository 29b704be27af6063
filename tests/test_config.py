from dataclasses import dataclass, field

import pytest

from genretrieval.config import ConfigError, build_dataclass, parse_config, parse_overrides


@dataclass
class Inner:
    rate: float = 0.5
    names: list[str] = field(default_factory=lambda: ["a"])

    def __post_init__(self):
        if self.rate < 0:
            raise ValueError(f"rate must be >= 0, got {self.rate}")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    steps: int | None = None
    flag: bool = False
    name: str = "x"


def test_yaml_and_overrides_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  rate: 2\n  names: [b, c]\nsteps: 5\n")
    cfg = parse_config(Outer, path, ["--steps", "7", "--inner.names=[d]", "--flag", "true", "--name", "123"])
    assert cfg.inner.rate == 2.0 and isinstance(cfg.inner.rate, float)
    assert cfg.inner.names == ["d"]
    assert cfg.steps == 7 and cfg.flag is True and cfg.name == "123"


def test_overrides_parse_scientific_notation():
    assert parse_overrides(["--a.b", "1e-3"]) == {"a": {"b": 1e-3}}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"inner": {"rtae": 1}}, "unknown config key 'inner.rtae'; did you mean ['rate']"),
        ({"stpes": 1}, "unknown config key 'stpes'"),
        ({"steps": "many"}, "config key 'steps'"),
        ({"flag": "yes"}, "config key 'flag': expected true/false"),
        ({"inner": {"names": "a"}}, "config key 'inner.names': expected a list"),
        ({"inner": {"rate": -1}}, "rate must be >= 0, got -1"),
        ({"inner": 3}, "expected a mapping for section Inner"),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ConfigError) as err:
        build_dataclass(Outer, values)
    assert message in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config(Outer, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config(Outer, listy)


def test_override_without_value_is_an_error():
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["--steps"])
    with pytest.raises(ConfigError, match="expected an override"):
        parse_overrides(["steps=3"])
