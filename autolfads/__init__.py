"""AutoLFADS: LFADS tuned by population-based training.

Subpackages (each a top-level folder of the repository; docs/architecture.md
has the layers): `trainer` (data, model, evaluation, the worker), `coordinator`
(the PBT search, its security and gRPC wire), `storage`, `katib` (Katib's
suggestion API), `pbt` and `katib_api` (generated protocol stubs), `argo`,
`report` and `cli` (the `autolfads` command); `config`, `errors`,
`extras` and `signals` are the edge every command goes through.
"""

__version__ = "0.1.0"
