"""Putting a run into storage (`autolfads stage`) and finding it again
(`autolfads coordinator`).

    <run>/config.yaml          the run config (workers read it from here)
    <run>/data/<sha256>.h5     the data, content-addressed
    <run>/baseline.json        the data's floor and ceiling (trainer/evaluation/baseline.py)

The coordinator image has no torch and no local data file, so everything it
and the trainers need comes from these two objects.
"""

from __future__ import annotations

from pathlib import Path

from autolfads.config import RunConfig, loads_config
from autolfads.errors import ConfigError, DataError
from autolfads.storage import ObjectInfo, ObjectNotFound, RunLayout, Store, upload_data
from autolfads.storage.base import sha256_file


def stage_run(store: Store, cfg: RunConfig, data_path: str | Path) -> RunLayout:
    """Upload the data (content-addressed, once) and config.yaml of `cfg`'s run.

    Staging the same run twice is harmless; staging a different config under
    an existing run name is refused, so a resumed search never changes config.
    """
    layout = RunLayout(cfg.name)
    path = Path(data_path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    stored = _stored_config(store, layout)
    if stored is not None and not same_search(stored, cfg):
        raise ConfigError(
            f"run {cfg.name!r} already holds a different config in {store.url}; "
            "use a new run name (name: in the config) to start another search"
        )
    sha, _ = sha256_file(path)
    staged = _data_objects(store, layout)
    if stored is not None:
        _check_same_data(layout, path, staged, sha)
    else:
        _drop_unstaged_data(store, layout, staged, sha)
    # The same bytes under another file name (data.hdf5 for data.h5) keep
    # the staged object's suffix: a second key would give the run two data
    # files ("several data files").
    same = _of_file(staged, sha)
    upload_data(store, layout, path, suffix=_suffix_of(same[0].key) if same else None)
    if not store.exists(layout.baseline()):
        # Once per run, before the config that marks the run as staged.
        from autolfads.trainer.data.lfads_h5 import load_lfads_h5
        from autolfads.trainer.evaluation.baseline import reference_scores

        store.put_json(layout.baseline(), reference_scores(load_lfads_h5(path)))
    if stored is None:
        store.put_bytes(
            layout.config(), cfg.to_yaml().encode("utf-8"), content_type="application/yaml"
        )
    return layout


def _suffix_of(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    return name[name.index(".") :] if "." in name else ""


def _check_same_data(layout: RunLayout, path: Path, staged: list[ObjectInfo], sha: str) -> None:
    """A staged run resumes on the data it was staged with: a second data
    object would leave the run unreadable (which one?), so a changed file is
    refused before anything is uploaded."""
    if staged and not _of_file(staged, sha):
        raise DataError(
            f"{path} is not the data run {layout.run!r} was staged with "
            f"({staged[0].key.rsplit('/', 1)[-1]}); resume with that file, or use a new run name"
        )


def _drop_unstaged_data(
    store: Store, layout: RunLayout, staged: list[ObjectInfo], sha: str
) -> None:
    """Remove what an interrupted `stage` of another data file left behind.

    Without a config.yaml the run was never staged, so nothing reads its data
    yet; a leftover data object would make the run hold two (unreadable:
    "several data files") and its baseline.json would score the other file.
    """
    mine = _of_file(staged, sha)
    others = [o for o in staged if o not in mine]
    if not others:
        return
    # The baseline first: it may be the leftover's, and is made again below.
    store.delete(layout.baseline())
    for obj in others:
        store.delete(obj.key)


def same_search(a: RunConfig, b: RunConfig) -> bool:
    """Equal apart from the local data path (which differs between machines)."""

    def strip(cfg: RunConfig) -> dict:
        dump = cfg.model_dump(mode="json")
        dump["data"].pop("path")
        return dump

    return strip(a) == strip(b)


def read_run_config(store: Store, run: str) -> RunConfig:
    """The config.yaml stored for `run`; ConfigError if it has none."""
    cfg = _stored_config(store, RunLayout(run))
    if cfg is None:
        raise ConfigError(f"run {run!r} has no config.yaml in {store.url}")
    return cfg


def _stored_config(store: Store, layout: RunLayout) -> RunConfig | None:
    try:
        text = store.get_bytes(layout.config()).decode("utf-8")
    except ObjectNotFound:
        return None
    return loads_config(text, source=f"{store.url}/{layout.config()}")


def load_run(store: Store, run: str, cfg: RunConfig | None = None) -> tuple[RunConfig, str, str]:
    """(config, data key, data sha256) of a staged run.

    The stored config.yaml wins; a `cfg` given on the command line must agree
    with it, or is uploaded when the run has none yet (its data must already
    be staged, e.g. by `autolfads stage`).
    """
    layout = RunLayout(run)
    if cfg is not None and cfg.name != run:
        raise ConfigError(f"--run {run!r} differs from the config's name {cfg.name!r}")
    stored = _stored_config(store, layout)
    if stored is None and cfg is None:
        # (`autolfads coordinator --config` may stage the config itself;
        # finalize, report and the Ray and Katib paths cannot.)
        raise ConfigError(
            f"run {run!r} has no config.yaml in {store.url}; stage it first "
            "(autolfads stage CONFIG.yaml --storage URL)"
        )
    if stored is not None and cfg is not None and not same_search(stored, cfg):
        raise ConfigError(
            f"--config differs from the config stored for run {run!r}; a run keeps its config"
        )
    # Before the config is stored: a run refused for its data must not keep
    # a config.yaml, which would then refuse an edited config at `stage`.
    key, sha = _find_data(store, layout, cfg)
    if stored is None:
        assert cfg is not None
        store.put_bytes(
            layout.config(), cfg.to_yaml().encode("utf-8"), content_type="application/yaml"
        )
        stored = cfg
    return stored, key, sha


def _data_objects(store: Store, layout: RunLayout) -> list[ObjectInfo]:
    """The data files staged for the run (named by their content hash)."""
    prefix = f"{layout.run}/data/"
    return [o for o in store.list(prefix) if "/" not in o.key[len(prefix) :]]


def _of_file(objects: list[ObjectInfo], sha256: str) -> list[ObjectInfo]:
    """Those of `objects` holding the file whose content hash is `sha256`."""
    return [o for o in objects if o.key.rsplit("/", 1)[-1].startswith(sha256)]


def _find_data(store: Store, layout: RunLayout, cfg: RunConfig | None) -> tuple[str, str]:
    objects = _data_objects(store, layout)
    if cfg is not None and Path(cfg.data.path).is_file():
        sha, _ = sha256_file(Path(cfg.data.path))
        if objects and not _of_file(objects, sha):
            # Not "stage it first": `stage` would then refuse this file too.
            raise DataError(
                f"{cfg.data.path} is not the data run {layout.run!r} was staged with "
                f"({objects[0].key.rsplit('/', 1)[-1]}); use that file, or a new run name"
            )
        objects = _of_file(objects, sha)
    if not objects:
        raise DataError(
            f"run {layout.run!r} has no data under {store.url}/{layout.run}/data/; "
            "stage it first (autolfads stage CONFIG.yaml --storage URL)"
        )
    if len(objects) > 1:
        names = ", ".join(o.key for o in objects[:3])
        raise DataError(f"run {layout.run!r} holds several data files ({names}); keep one")
    key = objects[0].key
    sha = key.rsplit("/", 1)[-1].split(".", 1)[0]
    return key, sha
