"""Before ``jax.distributed.initialize``: every process reports to process 0, which names a
rank that is missing, given twice or started with another process count.

``jax.distributed.initialize`` alone waits its own timeout (minutes) for a missing process
and then aborts the process from C++ ("another task died"), naming no rank. Here process 0
listens on the coordinator's port + 1; each other process connects, sends its rank and
process count, and waits for process 0's verdict, so every process fails with one line
naming the problem within ``config.distributed.timeout_s``.
"""

from __future__ import annotations

import contextlib
import socket
import time

from fnn_jax.config import ConfigError


def rendezvous(address: str, processes: int, rank: int, timeout_s: float) -> None:
    """Returns once every rank 0..processes-1 reported, each once, with the same count;
    ConfigError on every process otherwise (or when process 0 never answers)."""
    host, port = address.rsplit(":", 1)
    where = (host, int(port) + 1)
    if rank == 0:
        _gather(where, processes, timeout_s)
    else:
        _report(where, processes, rank, timeout_s)


def _gather(where: tuple[str, int], processes: int, timeout_s: float) -> None:
    try:
        server = socket.create_server(("", where[1]))
    except OSError as error:
        raise ConfigError(
            f"config.distributed.process_id=0: cannot listen on port {where[1]} "
            f"({error.strerror}); is another process 0 of this run already up?"
        ) from None
    joined: set[int] = set()
    connections: list[socket.socket] = []  # every one gets the verdict
    problems: list[str] = []
    deadline = time.monotonic() + timeout_s
    with server:
        while len(joined) < processes - 1 and not problems:
            server.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                connection, _ = server.accept()
            except TimeoutError:
                break
            connection.settimeout(max(deadline - time.monotonic(), 0.01))
            rank, count = (int(part) for part in connection.recv(64).decode().split())
            if count != processes:
                problems.append(
                    f"process {rank} has num_processes={count}; process 0 has {processes}"
                )
            elif rank in joined or rank == 0:
                problems.append(f"process_id {rank} is given to two processes")
            joined.add(rank)
            connections.append(connection)
        missing = sorted(set(range(1, processes)) - set(joined))
        if missing and not problems:
            problems.append(
                f"process(es) {missing} of {processes} did not join within {timeout_s:g} s "
                "(config.distributed.timeout_s)"
            )
        verdict = "; ".join(problems) or "ok"
        for connection in connections:
            with contextlib.suppress(OSError):  # a process that is gone fails on its own
                connection.sendall(verdict.encode())
            connection.close()
    if problems:
        raise ConfigError(f"the run's processes do not fit together: {verdict}")


def _report(where: tuple[str, int], processes: int, rank: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connection = socket.create_connection(where, timeout=1.0)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"process 0 did not answer at {where[0]}:{where[1]} within {timeout_s:g} s "
                    "(config.distributed.timeout_s): is it running, with this "
                    "coordinator_address?"
                ) from None
            time.sleep(0.2)
    with connection:
        connection.sendall(f"{rank} {processes}".encode())
        connection.settimeout(timeout_s + 5.0)  # process 0 answers by its own deadline
        try:
            verdict = connection.recv(4096).decode() or "process 0 closed the connection"
        except TimeoutError:
            verdict = "process 0 sent no verdict"
    if verdict != "ok":
        raise ConfigError(f"the run's processes do not fit together: {verdict}")
