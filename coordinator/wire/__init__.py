"""gRPC: the coordinator on the network.

server        `create_server(addr) -> (server, port)`: a grpc.aio server on
              its own event-loop thread, health, reflection, and the
              process main loop (lease ticks, SIGTERM, linger)
servicer      proto -> domain -> `CoordinatorService` -> proto, on the loop
commit_bridge changes answered on the loop once written (commit threads)
held_calls    RequestWork long polls held on the loop until there is work
convert       protobuf <-> domain messages, both directions
status_codes  domain errors <-> gRPC status codes, the one table
relay         `--relays N`: the frames between front processes and the owner
front         a front process: gRPC, TLS, auth and limits, relaying calls
fronts        the owner's fronts: started, restarted if one dies, stopped
client        `CoordinatorClient`: deadlines, retries, domain errors back
collector     garbage-collector settings of a process that serves a search
"""
