"""Recipes: YAML -> typed frozen dataclasses, dotted overrides, one-line errors with suggestions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from stages.config import (
    apply_overrides,
    build,
    field_names,
    load_recipe,
    parse_override,
    to_dict,
)
from stages.errors import MgpoError


@dataclass(frozen=True)
class Rollout:
    n: int = 5
    temperature: float = 1.0
    backend: Literal["hf", "vllm"] = "hf"
    stop: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Algo:
    name: str = "mgpo"
    alpha: float | str = 0.5
    alpha_strict: float | Literal["dyn"] = 0.5
    label: str | float = "x"
    beta: float = 0.5
    max_len: int | None = None
    kl: bool = False


@dataclass(frozen=True)
class Config:
    rollout: Rollout = field(default_factory=Rollout)
    algo: Algo = field(default_factory=Algo)
    lr: float = 1e-6
    seed: int = 0


RECIPE = """\
# a small recipe
rollout:
  n: 8
  temperature: 0.7
  backend: vllm
  stop: ["</answer>"]
algo:
  alpha: dyn
  beta: 0.25
lr: 2e-6
"""


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(RECIPE)
    return path


def overrides(*texts: str) -> list[tuple[list[str], object]]:
    return [parse_override(t) for t in texts]


def test_build_from_yaml(recipe: Path) -> None:
    config = build(Config, load_recipe(str(recipe)))
    assert config.rollout == Rollout(n=8, temperature=0.7, backend="vllm", stop=["</answer>"])
    assert config.algo.alpha == "dyn" and config.algo.beta == 0.25
    assert config.algo.name == "mgpo" and config.seed == 0  # defaults fill the rest
    assert config.lr == 2e-6 and isinstance(config.lr, float)  # YAML reads "2e-6" as a string
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]


def test_empty_recipe_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert build(Config, load_recipe(str(path))) == Config()


def test_to_dict_round_trips(recipe: Path) -> None:
    config = build(Config, load_recipe(str(recipe)))
    assert build(Config, to_dict(config)) == config


def test_field_names_are_dotted() -> None:
    names = field_names(Config)
    assert {"rollout.n", "rollout.backend", "algo.alpha", "lr", "seed"} <= set(names)
    assert "rollout" not in names


# ----------------------------------------------------------------------------- overrides


def test_parse_override_reads_yaml_values() -> None:
    assert parse_override("rollout.n=16") == (["rollout", "n"], 16)
    assert parse_override("algo.alpha=dyn") == (["algo", "alpha"], "dyn")
    assert parse_override("algo.kl=true") == (["algo", "kl"], True)
    assert parse_override("rollout.stop=[a, b]") == (["rollout", "stop"], ["a", "b"])
    assert parse_override("algo.name=a=b") == (["algo", "name"], "a=b")


@pytest.mark.parametrize("text", ["rollout.n", "=3", ""])
def test_malformed_override(text: str) -> None:
    with pytest.raises(MgpoError, match="key=value"):
        parse_override(text)


def test_overrides_take_precedence_over_the_recipe(recipe: Path) -> None:
    data = load_recipe(str(recipe))
    before = repr(data)
    merged = apply_overrides(
        data, overrides("rollout.n=16", "algo.alpha=0.3", "seed=7", "rollout.n=32")
    )
    config = build(Config, merged)
    assert config.rollout.n == 32  # the later override wins
    assert config.rollout.temperature == 0.7  # untouched recipe keys stay
    assert config.algo.alpha == 0.3 and config.algo.beta == 0.25
    assert config.seed == 7
    assert repr(data) == before, "overrides must not mutate the recipe data"


def test_override_creates_missing_sections() -> None:
    config = build(Config, apply_overrides({}, overrides("algo.max_len=128")))
    assert config.algo.max_len == 128 and config.rollout == Rollout()


# ----------------------------------------------------------------------------- errors


def test_unknown_top_level_key_suggests(recipe: Path) -> None:
    data = apply_overrides(load_recipe(str(recipe)), overrides("rollut.n=4"))
    with pytest.raises(MgpoError, match=r"unknown key 'rollut'.*did you mean 'rollout'"):
        build(Config, data)


def test_unknown_nested_key_names_the_full_path() -> None:
    data = apply_overrides({}, overrides("rollout.temperatur=0.9"))
    with pytest.raises(MgpoError) as caught:
        build(Config, data)
    message = str(caught.value)
    assert "rollout.temperatur" in message and "did you mean 'temperature'" in message
    assert "\n" not in message


def test_unknown_key_without_a_near_match() -> None:
    with pytest.raises(MgpoError) as caught:
        build(Config, {"zzzzzz": 1})
    assert "unknown key 'zzzzzz'" in str(caught.value)
    assert "did you mean" not in str(caught.value)


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        ({"seed": "many"}, ["seed", "expected an integer", "'many'"]),
        ({"seed": 1.5}, ["seed", "expected an integer"]),
        ({"seed": True}, ["seed", "expected an integer"]),
        ({"lr": "fast"}, ["lr", "expected a number"]),
        ({"lr": False}, ["lr", "expected a number"]),
        ({"algo": {"kl": "maybe"}}, ["algo.kl", "expected true or false"]),
        ({"algo": {"kl": 1}}, ["algo.kl", "expected true or false"]),
        ({"rollout": {"stop": "</answer>"}}, ["rollout.stop", "expected a list"]),
        ({"rollout": {"stop": [1, None]}}, ["rollout.stop[1]", "expected a string"]),
        ({"rollout": 3}, ["rollout", "expected a mapping"]),
        ({"algo": {"max_len": "long"}}, ["algo.max_len", "expected an integer"]),
    ],
)
def test_wrong_types_name_the_key(data: dict, fragments: list[str]) -> None:
    with pytest.raises(MgpoError) as caught:
        build(Config, data)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_gentle_conversions() -> None:
    config = build(Config, {"seed": 3.0, "lr": 1, "algo": {"name": 7, "max_len": None}})
    assert config.seed == 3 and isinstance(config.seed, int)
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.algo.name == "7" and config.algo.max_len is None


def test_literal() -> None:
    assert build(Config, {"rollout": {"backend": "hf"}}).rollout.backend == "hf"
    with pytest.raises(MgpoError, match=r"rollout.backend: 'trt' is not one of 'hf', 'vllm'"):
        build(Config, {"rollout": {"backend": "trt"}})


@pytest.mark.parametrize(
    ("value", "expected"), [(0.5, 0.5), (1, 1.0), ("dyn", "dyn"), ("0.25", 0.25)]
)
def test_float_or_str_union(value: object, expected: object) -> None:
    alpha = build(Config, {"algo": {"alpha": value}}).algo.alpha
    assert alpha == expected and type(alpha) is type(expected)


def test_union_prefers_the_value_own_type_whatever_the_order() -> None:
    # ``str | float`` must not turn 0.5 into "0.5" just because str is listed first.
    assert build(Config, {"algo": {"label": 0.5}}).algo.label == 0.5
    assert build(Config, {"algo": {"label": "dyn"}}).algo.label == "dyn"


def test_float_or_literal_union() -> None:
    assert build(Config, {"algo": {"alpha_strict": "dyn"}}).algo.alpha_strict == "dyn"
    assert build(Config, {"algo": {"alpha_strict": 0.7}}).algo.alpha_strict == 0.7
    with pytest.raises(MgpoError, match=r"algo.alpha_strict: 'dynamic' fits none of"):
        build(Config, {"algo": {"alpha_strict": "dynamic"}})


def test_optional_rejects_wrong_type_with_the_plain_message() -> None:
    with pytest.raises(MgpoError, match=r"algo.max_len: expected an integer, got 'x'"):
        build(Config, {"algo": {"max_len": "x"}})


# ----------------------------------------------------------------------------- recipe files


def test_unknown_recipe_name() -> None:
    with pytest.raises(MgpoError, match="neither a file nor a built-in recipe"):
        load_recipe("no-such-recipe")


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("rollout: [unclosed\n")
    with pytest.raises(MgpoError) as caught:
        load_recipe(str(path))
    assert str(path) in str(caught.value) and "not valid YAML" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_recipe_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(MgpoError, match="must be a mapping"):
        load_recipe(str(path))
