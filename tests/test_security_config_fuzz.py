"""Hostile run configs: every bad input is one ConfigError line, never a traceback.

`loads_config` / `load_config` are fed random and mutated YAML (wrong types,
out-of-range and huge values, inverted bounds, unknown keys, deep nesting,
alias bombs, non-UTF-8 bytes, non-mapping documents). A config that does
parse must survive a round trip through `to_yaml`, since that text is what
gets staged for the coordinator and the trainers. The CLI commands that take
a config (`train`, `run`, `argo render`) must print one `autolfads: error:`
line, exit non-zero and leave nothing behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autolfads.cli import main
from autolfads.config import (
    MAX_CONFIG_BYTES,
    RunConfig,
    load_config,
    loads_config,
)
from autolfads.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_TEXT = (REPO / "examples" / "tiny_search.yaml").read_text()
EXAMPLE = yaml.safe_load(EXAMPLE_TEXT)
SOURCE = "fuzz.yaml"
# AUTOLFADS_FUZZ_EXAMPLES=5000 for a long local fuzzing session; CI keeps 150.
FUZZ = settings(
    max_examples=int(os.environ.get("AUTOLFADS_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def check_outcome(text: str) -> RunConfig | None:
    """The contract: a RunConfig that round-trips, or one short ConfigError line."""
    try:
        cfg = loads_config(text, source=SOURCE)
    except ConfigError as err:
        message = str(err)
        assert message.startswith(SOURCE), message
        assert "\n" not in message and "\r" not in message, message
        assert len(message) < 1000, message[:200]
        return None
    assert isinstance(cfg, RunConfig)
    assert loads_config(cfg.to_yaml(), source=SOURCE) == cfg
    return cfg


# ---- structured mutations of the example config -----------------------------

HOSTILE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([-1, 0, 2**31, 2**63, 2**64 + 1, -(2**63) - 1, 10**30, 10**4000]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, float("inf"), float("nan")]),
    st.text(max_size=40),
    st.sampled_from(["", "\x00", "../../etc/passwd", "a\nb", "\u202e", "x" * 5000, "1e999"]),
    st.lists(st.integers(), max_size=4),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
)


def paths_of(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into the nested mapping, e.g. ('pbt', 'population')."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            found.extend(paths_of(child, (*prefix, key)))
    return found


def set_path(root: dict, path: tuple, value: Any) -> None:
    node = root
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def with_search_space(raw: dict) -> dict:
    """The example plus an explicit search space, so its bounds get mutated too."""
    raw = yaml.safe_load(yaml.safe_dump(raw))
    raw["pbt"]["search_space"] = {
        "lr_init": {"min": 1e-5, "max": 5e-3, "sampling": "log", "init": 4e-3},
        "dropout_rate": {"min": 0.0, "max": 0.6, "sampling": "uniform"},
    }
    return raw


BASE = with_search_space(EXAMPLE)
BASE_PATHS = paths_of(BASE)


@st.composite
def mutated_configs(draw: st.DrawFn) -> Any:
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    for _ in range(draw(st.integers(1, 4))):
        paths = paths_of(raw)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "delete", "unknown_key", "swap_bounds"]))
        parent: Any = raw
        for key in path[:-1]:
            parent = parent[key]
        if not isinstance(parent, dict):
            continue
        if op == "replace":
            parent[path[-1]] = draw(HOSTILE_VALUES)
        elif op == "delete":
            parent.pop(path[-1], None)
        elif op == "unknown_key":
            parent[draw(st.text(min_size=1, max_size=12))] = draw(HOSTILE_VALUES)
        else:
            node = parent[path[-1]]
            if isinstance(node, dict) and "min" in node and "max" in node:
                node["min"], node["max"] = node["max"], node["min"]
    if draw(st.booleans()):
        return raw
    return draw(st.sampled_from([[raw], "text", 42, None, [], True]))  # non-mapping top levels


def test_the_unmutated_base_is_valid() -> None:
    # Guards the fuzzers below: mutations start from a config that parses.
    assert check_outcome(yaml.safe_dump(BASE)) is not None
    assert check_outcome(EXAMPLE_TEXT) is not None


@FUZZ
@given(mutated_configs())
def test_mutated_configs_are_valid_or_one_config_error(raw: Any) -> None:
    text = yaml.safe_dump(raw, allow_unicode=True)
    check_outcome(text)


@FUZZ
@given(st.sampled_from(BASE_PATHS), HOSTILE_VALUES)
def test_any_single_hostile_value_is_valid_or_one_config_error(path: tuple, value: Any) -> None:
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    set_path(raw, path, value)
    check_outcome(yaml.safe_dump(raw, allow_unicode=True))


YAML_CHARS = st.sampled_from(list("{}[]:,-&*!|>?'\"#%@`~ \n\t.+eE0129abxyz") + ["<<", "!!"])


@FUZZ
@given(st.lists(YAML_CHARS, max_size=80).map("".join))
def test_yaml_syntax_soup_is_one_config_error(text: str) -> None:
    check_outcome(text)


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text_is_one_config_error(text: str) -> None:
    check_outcome(text)


@FUZZ
@given(st.data())
def test_character_level_mutations_of_the_example(data: st.DataObject) -> None:
    text = EXAMPLE_TEXT
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 8))
        insert = data.draw(st.one_of(YAML_CHARS, st.text(max_size=4)))
        text = text[:pos] + insert + text[pos + cut :]
    check_outcome(text)


@FUZZ
@given(st.binary(max_size=300), st.booleans())
def test_arbitrary_bytes_on_disk_are_one_config_error(
    tmp_path: Path, blob: bytes, prefix_example: bool
) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_bytes((EXAMPLE_TEXT.encode() if prefix_example else b"") + blob)
    try:
        load_config(path)
    except ConfigError as err:
        assert str(err).startswith(str(path)) and "\n" not in str(err)


# ---- hand-written hostile documents -------------------------------------------


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """'Billion laughs': ~120 bytes of YAML per level, width**levels values expanded."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def bomb_in(field: str) -> str:
    """The bomb's last anchor used as the value of a real field."""
    return alias_bomb() + f"name: x\ndata: {{path: a.h5}}\n{field}: *l9\n"


HAND_CASES = {
    "alias bomb at top level": (alias_bomb(), "values"),
    "alias bomb as a string field": (bomb_in("name").replace("name: x\n", "", 1), "values"),
    "alias bomb in a dict field": (
        alias_bomb() + "data: {path: a.h5, synth: {sizes: *l9}}\n",
        "values",
    ),
    "deep flow nesting": ("a: " + "[" * 3000 + "]" * 3000, "nested"),
    "deep block nesting": (
        "".join(f"{'  ' * i}k:\n" for i in range(60)) + "  " * 60 + "v",
        "nested",
    ),
    "integer with 5000 digits": ("data: {path: a}\npbt: {population: " + "9" * 5000 + "}", "large"),
    "huge population": ("data: {path: a}\npbt: {population: 100000000000}", "pbt.population"),
    "infinite lr": ("data: {path: a}\ntraining: {lr_init: .inf}", "training.lr_init"),
    "nan rate": ("data: {path: a}\ntraining: {dropout_rate: .nan}", "training.dropout_rate"),
    "inverted bounds": (
        "data: {path: a}\npbt: {search_space: {lr_init: {min: 0.1, max: 0.001}}}",
        "greater than max",
    ),
    "unknown hyperparameter": (
        "data: {path: a}\npbt: {search_space: {lr: {min: 0.1, max: 1}}}",
        "unknown hyperparameter",
    ),
    "unknown key": ("data: {path: a}\nmodle: {gen_dim: 3}", "modle"),
    "key holding a newline": ('data: {path: a}\n"evil\\nkey": 1', "evil\\nkey"),
    "key of 100k characters": ("data: {path: a}\n? " + "k" * 100_000 + "\n: 1", "..."),
    "NUL in the data path": ('data: {path: "a\\0b.h5"}', "control characters"),
    "empty data path": ("data: {path: ''}", "data.path"),
    "run name with traversal": ("name: ../../etc\ndata: {path: a}", "name"),
    "run name with a slash": ("name: a/b\ndata: {path: a}", "name"),
    "python object tag": ("!!python/object/apply:os.system ['true']", "not valid YAML"),
    "two documents": ("data: {path: a}\n---\ndata: {path: b}\n", "not valid YAML"),
    "top-level list": ("- data\n- model\n", "mapping"),
    "top-level string": ("just text", "mapping"),
    "top-level number": ("42", "mapping"),
    "empty document": ("", "mapping"),
    "unhashable key": ("? [a, b]\n: 1\n", "not valid YAML"),
    "tab indentation": ("data:\n\tpath: a\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(HAND_CASES))
def test_hand_written_hostile_configs(case: str) -> None:
    text, fragment = HAND_CASES[case]
    with pytest.raises(ConfigError) as info:
        loads_config(text, source=SOURCE)
    message = str(info.value)
    assert "\n" not in message and len(message) < 1000
    assert fragment in message, message


def test_bounded_repr_of_huge_values() -> None:
    # The offending value is quoted, but a 1 MB string is not.
    text = "data: {path: a}\nname: " + "x" * 1_000_000 + "\n"
    with pytest.raises(ConfigError) as info:
        loads_config(text, source=SOURCE)
    assert "name" in str(info.value) and len(str(info.value)) < 1000


def test_oversized_and_non_utf8_files(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * MAX_CONFIG_BYTES + b"\ndata: {path: a}\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\u00e9\ndata: {path: a}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin1)
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes("data: {path: a}\n".encode("utf-16"))
    with pytest.raises(ConfigError):
        load_config(utf16)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a folder


def test_a_valid_config_with_an_unusual_but_legal_path_still_parses(tmp_path: Path) -> None:
    # The hardening must not reject real-world paths: spaces, unicode, dots.
    cfg = loads_config("data: {path: 'my data/sessi\u00f3n 1/../x.h5'}", base_dir=tmp_path)
    assert cfg.data.path.endswith("x.h5") and Path(cfg.data.path).is_absolute()


# ---- the CLI: one line, non-zero exit, nothing written -------------------------

CLI_CASES = {
    "alias bomb": bomb_in("name").encode(),
    "wrong type": EXAMPLE_TEXT.replace("population: 4", "population: four").encode(),
    "non-mapping": b"- a\n- b\n",
    "non-utf8": EXAMPLE_TEXT.encode() + b"\n# \xff\xfe\xfa\n",
    "inverted bounds": (
        EXAMPLE_TEXT + "  search_space: {lr_init: {min: 0.1, max: 0.001}}\n"
    ).encode(),
    "unknown key": EXAMPLE_TEXT.replace("training:", "trainig:").encode(),
    "newline key": b'data: {path: a.h5}\n"a\\nb": 1\n',
    "nul path": b'data: {path: "x\\0.h5", synth: {kind: lorenz}}\n',
}
CLI_COMMANDS = {
    "train": ["train", "{cfg}", "--quiet"],
    "run": ["run", "{cfg}", "--workers", "1", "--progress", "quiet"],
    "argo render": ["argo", "render", "{cfg}", "--inline"],
}


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("command", sorted(CLI_COMMANDS))
@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_prints_one_line_and_writes_nothing(
    command: str,
    case: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "cfg").mkdir()
    config = tmp_path / "cfg" / "bad.yaml"
    config.write_bytes(CLI_CASES[case])
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    argv = [arg.replace("{cfg}", str(config)) for arg in CLI_COMMANDS[command]]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code != 0
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autolfads: error: "), err[:500]
    assert tree(tmp_path) == before  # no runs/, no output folder, no data file


def test_cli_in_a_real_process(tmp_path: Path) -> None:
    """The same contract through the installed entry point (exit code, stderr)."""
    config = tmp_path / "bomb.yaml"
    config.write_bytes(CLI_CASES["alias bomb"])
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    proc = subprocess.run(
        [sys.executable, "-m", "autolfads", "train", str(config), "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autolfads: error: "), proc.stderr[:500]
    assert tree(tmp_path) == {"bomb.yaml"}
