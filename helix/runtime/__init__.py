"""The distributed serving runtime: workers (one per planned node) and the coordinator, on Ray.

`Worker` (worker.py) wraps `helix.engine` for one layer range and is testable without Ray; `actor.py` runs
it as a thin Ray actor; activations travel worker → worker over ZeroMQ sockets whose addresses are
exchanged through Ray (transport.py); `Coordinator` (coordinator.py) admits, routes and streams requests.
"""
