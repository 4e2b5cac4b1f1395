"""gRPC: the coordinator on the network.

server        `create_server(addr) -> (server, port)`: a grpc.aio server on
              its own event-loop thread, health, reflection, and the
              process main loop (lease ticks, SIGTERM, linger)
servicer      proto -> domain -> `CoordinatorService` -> proto, on the loop
commit_bridge changes answered on the loop once written (commit threads)
convert       protobuf <-> domain messages, both directions
status_codes  domain errors <-> gRPC status codes, the one table
client        `CoordinatorClient`: deadlines, retries, domain errors back
"""
