"""The PBT coordinator: one search, its population state, and how it is reached.

Layers (a layer imports only those listed before it):

    search/    the PBT search itself: the pure policy, the one population
               state, leases and generations (no gRPC here)
    security/  who may call and how much: tokens, TLS, exposure rules,
               request limits, and the interceptors that enforce them
    wire/      gRPC: proto <-> domain messages, the servicer, the server
               process and the typed client

A second wire (Katib's suggestion API, `katib/`) drives the same `search/`.
"""
