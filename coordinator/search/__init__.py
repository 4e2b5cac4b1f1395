"""The PBT search: decisions, state and the service that applies them.

policy         pure PBT over plain data: exploit (`binary_tournament`,
               `truncation`, `plan_generation`), `explore`, `ranking_key`
population     the first generation's segments and a member's next one
generations    closing a generation, planning the next, stopping
state          the one population state (`SearchState`) and its encoding
commit         group commit: many changes, one write, answers after it
service        `CoordinatorService`: leases, heartbeats, reports
dispatch       indexes that keep RequestWork cheap under many workers
report_checks  a worker's report against the segment it was leased
validation     request checks that need no state
records        the decisions written to the run layout for people
views          read-only views for status displays and clients
messages       the domain messages of the protocol (frozen dataclasses)
errors         domain errors (mapped to gRPC codes in wire/status_codes)
staging        putting a run into storage and finding it again
clock          injectable clocks for lease deadlines
"""
