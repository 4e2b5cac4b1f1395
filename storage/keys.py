"""Validated object keys and the run layout users browse.

Every key is built from validated pieces, so a member or run name such as
`../x`, `/etc`, `a/b` or one with control characters is rejected with
`InvalidKey` before it can name anything outside the run. The layout (see
docs/storage.md) is the same in a MinIO bucket and in a local directory:

    <run>/config.yaml
    <run>/data/<sha256>.h5
    <run>/members/<member>/gen-0007/checkpoint.pt   (+ metrics.json)
    <run>/members/<member>/history.jsonl
    <run>/generations/gen-0007.json
    <run>/coordinator/journal/000000000042.json     one per state write (changes)
    <run>/coordinator/snapshot/000000000040.json    the live state every N writes
    <run>/coordinator/archive/gen-0003.json         closed generations, written once
    <run>/coordinator/state.json                    (runs before the journal; migrated)
    <run>/best/...                                   (checkpoint, output, report)
"""

from __future__ import annotations

import functools
import re

from autolfads.config import NAME_PATTERN
from autolfads.storage.errors import InvalidKey

# One key component: S3- and filesystem-safe, never "." or "..", never hidden
# (the local backend keeps its sidecars and temp files in dot-names). At most
# 200 characters: the local backend's names for it, such as
# ".<name>.meta.json.<random>.part", must still fit the usual 255-byte limit,
# so that a key valid in one backend is valid in the other.
MAX_COMPONENT_LEN = 200
_COMPONENT = re.compile(rf"^[A-Za-z0-9_-][A-Za-z0-9._=+@-]{{0,{MAX_COMPONENT_LEN - 1}}}$")
_IDENTIFIER = re.compile(NAME_PATTERN)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GEN_DIR = re.compile(r"^gen-(\d{4,})$")
# S3 limits keys to 1024 bytes; keep room for a store prefix.
MAX_KEY_LEN = 900
GENERATION_WIDTH = 4
SEQUENCE_WIDTH = 12
_SEQUENCE = re.compile(rf"^(\d{{{SEQUENCE_WIDTH}}})\.json$")


def _sequence(seq: int) -> str:
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 10**SEQUENCE_WIDTH:
        raise InvalidKey(f"invalid journal sequence number {_show(seq)}")
    return f"{seq:0{SEQUENCE_WIDTH}d}"


def _show(value: object) -> str:
    """repr() cut short, so a hostile 1 MB name does not become a 1 MB error."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_identifier(kind: str, value: str) -> str:
    """Check a run or member name; return it unchanged or raise InvalidKey.

    Allowed: 1-64 letters, digits, '.', '_' or '-', starting with a letter or
    digit (the same rule as `RunConfig.name`), e.g. "m007", "chaotic-rnn-demo".
    """
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise InvalidKey(
            f"invalid {kind} {_show(value)}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def validate_key(key: str, *, kind: str = "key") -> str:
    """Check a '/'-separated relative object key; return it or raise InvalidKey."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"invalid {kind} {_show(key)}: must be a non-empty string")
    if len(key) > MAX_KEY_LEN:
        raise InvalidKey(f"invalid {kind} {_show(key)}: longer than {MAX_KEY_LEN} characters")
    if key.startswith("/"):
        raise InvalidKey(f"invalid {kind} {_show(key)}: must be relative, not start with '/'")
    for part in key.split("/"):
        if not _COMPONENT.fullmatch(part):
            raise InvalidKey(
                f"invalid {kind} {_show(key)}: component {_show(part)} must be 1-{MAX_COMPONENT_LEN} of "
                "letters, digits and ._=+@- and must not start with '.'"
            )
    return key


def validate_prefix(prefix: str) -> str:
    """Check a listing prefix: "" or a key, optionally ending in '/'."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix, kind="prefix")
    return prefix


def validate_sha256(value: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise InvalidKey(f"invalid SHA-256 {_show(value)}: expected 64 lowercase hex digits")
    return value


def validate_generation(generation: int) -> int:
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise InvalidKey(f"invalid generation {_show(generation)}: expected an integer >= 0")
    return generation


def generation_dir(generation: int) -> str:
    """'gen-0007': zero-padded so the console lists generations in order."""
    return f"gen-{validate_generation(generation):0{GENERATION_WIDTH}d}"


def parse_generation_dir(name: str) -> int | None:
    match = _GEN_DIR.fullmatch(name)
    return int(match.group(1)) if match else None


CHECKPOINT_NAME = "checkpoint.pt"


def split_checkpoint_key(key: str) -> tuple[str, str, int] | None:
    """The one parser of checkpoint keys:
    '<run path>/members/m003/gen-0007/checkpoint.pt' -> ('<run path>', 'm003', 7),
    where the run path may carry a store prefix; None for any other key.
    Only the canonical spelling counts: 'gen-00007' is not generation 7."""
    return _split_checkpoint_key(key) if isinstance(key, str) else None


# Retention parses every live checkpoint key at each generation's close
# (2,000 at 1024 members), mostly the same keys as at the last close.
@functools.lru_cache(maxsize=1 << 14)
def _split_checkpoint_key(key: str) -> tuple[str, str, int] | None:
    parts = key.split("/")
    if len(parts) < 5 or parts[-4] != "members" or parts[-1] != CHECKPOINT_NAME:
        return None
    member, gen = parts[-3], parts[-2]
    generation = parse_generation_dir(gen)
    if generation is None or gen != generation_dir(generation):
        return None
    if not _IDENTIFIER.fullmatch(member):
        return None
    return "/".join(parts[:-4]), member, generation


class RunLayout:
    """Keys of one run. All methods return keys relative to the store root."""

    CHECKPOINT = CHECKPOINT_NAME
    METRICS = "metrics.json"

    def __init__(self, run: str) -> None:
        self.run = validate_identifier("run name", run)

    def __repr__(self) -> str:
        return f"RunLayout({self.run!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunLayout) and other.run == self.run

    def __hash__(self) -> int:
        return hash(self.run)

    def prefix(self) -> str:
        """'<run>/': everything of the run lies under it."""
        return f"{self.run}/"

    def config(self) -> str:
        return f"{self.run}/config.yaml"

    def baseline(self) -> str:
        """The data's floor (smoothing baseline) and ceiling (true rates) scores."""
        return f"{self.run}/baseline.json"

    def data(self, sha256: str, suffix: str = ".h5") -> str:
        """Content-addressed data file: the same bytes always have the same key."""
        if suffix and not re.fullmatch(r"\.[A-Za-z0-9]{1,10}", suffix):
            raise InvalidKey(f"invalid data suffix {_show(suffix)}: expected e.g. '.h5'")
        return f"{self.run}/data/{validate_sha256(sha256)}{suffix}"

    def members_prefix(self) -> str:
        return f"{self.run}/members/"

    def member_dir(self, member: str) -> str:
        """'<run>/members/<member>/' (a prefix for `Store.list`)."""
        return f"{self.members_prefix()}{validate_identifier('member id', member)}/"

    def generation_prefix(self, member: str, generation: int) -> str:
        """'<run>/members/<member>/gen-0007/'."""
        return f"{self.member_dir(member)}{generation_dir(generation)}/"

    def member_file(self, member: str, generation: int, name: str) -> str:
        """Any per-generation file of a member, e.g. 'lfads_output.h5'."""
        validate_key(name, kind="file name")
        return f"{self.generation_prefix(member, generation)}{name}"

    # (The two names below are valid file names: no check per call. Every
    # lease granted builds both.)
    def checkpoint(self, member: str, generation: int) -> str:
        return f"{self.generation_prefix(member, generation)}{self.CHECKPOINT}"

    def member_metrics(self, member: str, generation: int) -> str:
        return f"{self.generation_prefix(member, generation)}{self.METRICS}"

    def history(self, member: str) -> str:
        return f"{self.member_dir(member)}history.jsonl"

    def generations_prefix(self) -> str:
        return f"{self.run}/generations/"

    def generation(self, generation: int) -> str:
        """Generation record: ranking, who copied whom, new hyperparameters."""
        return f"{self.generations_prefix()}{generation_dir(generation)}.json"

    def state(self) -> str:
        """The whole-state file of runs written before the journal (read once,
        migrated, then deleted); `coordinator.recovery.load_state` reads either."""
        return f"{self.coordinator_prefix()}state.json"

    def coordinator_prefix(self) -> str:
        return f"{self.run}/coordinator/"

    def owner(self) -> str:
        """The record of the coordinator serving the run (`storage.claims`)."""
        return f"{self.coordinator_prefix()}owner.json"

    def journal_prefix(self) -> str:
        return f"{self.coordinator_prefix()}journal/"

    def journal_entry(self, seq: int) -> str:
        """One group commit's changes; `seq` counts from 1, without gaps."""
        return f"{self.journal_prefix()}{_sequence(seq)}.json"

    def snapshot_prefix(self) -> str:
        return f"{self.coordinator_prefix()}snapshot/"

    def snapshot(self, seq: int) -> str:
        """The live state including journal entries up to `seq`."""
        return f"{self.snapshot_prefix()}{_sequence(seq)}.json"

    def archive_prefix(self) -> str:
        return f"{self.coordinator_prefix()}archive/"

    def archive(self, generation: int) -> str:
        """History entries of a closed generation (written once)."""
        return f"{self.archive_prefix()}{generation_dir(generation)}.json"

    @staticmethod
    def parse_sequence_key(prefix: str, key: str) -> int | None:
        """'<prefix>000000000042.json' -> 42; None for any other name."""
        name = key[len(prefix) :] if key.startswith(prefix) else ""
        match = _SEQUENCE.fullmatch(name)
        return int(match.group(1)) if match else None

    def best_prefix(self) -> str:
        return f"{self.run}/best/"

    def best(self, name: str) -> str:
        """E.g. best("checkpoint.pt"), best("report/index.html")."""
        return f"{self.best_prefix()}{validate_key(name, kind='best file name')}"

    def parse_checkpoint_key(self, key: str) -> tuple[str, int]:
        """'<run>/members/m003/gen-0007/checkpoint.pt' -> ('m003', 7)."""
        parsed = self.try_parse_checkpoint_key(key)
        if parsed is None:
            raise InvalidKey(
                f"not a checkpoint key of run {self.run!r}: {_show(key)} "
                f"(expected {self.run}/members/<member>/gen-NNNN/{self.CHECKPOINT})"
            )
        return parsed

    def try_parse_checkpoint_key(self, key: str) -> tuple[str, int] | None:
        parsed = split_checkpoint_key(key)
        if parsed is None or parsed[0] != self.run:
            return None
        return parsed[1], parsed[2]

    def parse_generation_key(self, key: str) -> int:
        """'<run>/generations/gen-0007.json' -> 7."""
        prefix = self.generations_prefix()
        if isinstance(key, str) and key.startswith(prefix) and key.endswith(".json"):
            name = key[len(prefix) : -len(".json")]
            generation = parse_generation_dir(name)
            if generation is not None and name == generation_dir(generation):
                return generation
        raise InvalidKey(f"not a generation record key of run {self.run!r}: {_show(key)}")
