"""The data file a config names (`data.path`), generated from `data.synth`."""

from __future__ import annotations

from pathlib import Path

import pytest

from autolfads.config import parse_config
from autolfads.errors import DataError
from autolfads.trainer.data.config_data import ensure_data_file


def test_a_synth_path_through_a_file_is_one_line(tmp_path: Path) -> None:
    """A file where a folder of data.path should be: the folder could not be
    made and `stage`/`run`/`train` ended in a NotADirectoryError traceback."""
    (tmp_path / "afile").write_text("")
    cfg = parse_config(
        {
            "name": "synth",
            "data": {
                "path": str(tmp_path / "afile" / "sub" / "data.h5"),
                "synth": {"kind": "lorenz", "sizes": {"n_conditions": 4}},
            },
        }
    )
    with pytest.raises(DataError, match=r"data.h5: cannot make its folder \(Not a directory\)"):
        ensure_data_file(cfg)
