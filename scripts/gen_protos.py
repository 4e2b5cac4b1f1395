"""Regenerate the committed gRPC/protobuf stubs from proto/ (one pinned command).

    python scripts/gen_protos.py            # write next to the .proto files
    python scripts/gen_protos.py --out DIR  # write elsewhere (the staleness test)

The generator is pinned: the gencode embeds the protobuf version it was made
with and refuses to import under an older runtime, so pyproject.toml requires
`protobuf>=<that version>` and `grpcio>=GRPC_TOOLS_VERSION`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from pathlib import Path

GRPC_TOOLS_VERSION = "1.85.1"
REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
# Katib's suggestion API (api.v1.beta1) lives under autolfads/katib_api so its
# generated module does not clash with the `kubeflow-katib` package's.
PROTO_FILES = (
    "autolfads/pbt/v1/coordinator.proto",
    "autolfads/katib_api/v1beta1/api.proto",
)


def check_generator() -> None:
    try:
        found = importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        sys.exit(f"gen_protos: grpcio-tools=={GRPC_TOOLS_VERSION} is not installed")
    if found != GRPC_TOOLS_VERSION:
        sys.exit(f"gen_protos: need grpcio-tools=={GRPC_TOOLS_VERSION}, found {found}")


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(PROTO_ROOT / name) for name in PROTO_FILES),
    ]
    subprocess.run(cmd, check=True, cwd=REPO)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="output root")
    args = parser.parse_args()
    check_generator()
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
