"""gRPC: the coordinator on the network.

server        `create_server(addr) -> (server, port)`, health, reflection,
              the process main loop (lease ticks, SIGTERM, linger)
servicer      proto -> domain -> `CoordinatorService` -> proto
convert       protobuf <-> domain messages, both directions
status_codes  domain errors <-> gRPC status codes, the one table
client        `CoordinatorClient`: deadlines, retries, domain errors back
"""
