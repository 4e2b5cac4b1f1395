"""Who may reach the coordinator, and how much each call may ask.

tokens        bearer tokens, roles and rights, where tokens come from
auth          the token-checking server interceptor
tls           certificates for the server and its clients (mutual TLS)
exposure      the exposure rules: loopback, TLS and tokens by address
limits        message sizes, concurrency, and their interceptor
interceptors  per-RPC logging and counters, and `rewrap` for all of them
"""
