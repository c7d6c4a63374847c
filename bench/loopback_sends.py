"""What 1,000 loopback sends cost on this machine, without the server around them (issue 15).

The live fan-out writes one frame to each of 1,000 SSE sockets; ``bench/sse_load.py`` measures that inside
the server. This takes the server away: a uvloop process accepts 1,000 TCP connections from two reader
processes (each reads whatever is ready, as the load test's clients do) and writes a frame of
``--frame-bytes`` to every socket, ``--rounds`` times, 40 ms apart. Each round is timed both ways,
interleaved:

- ``transport``: uvloop's ``transport.write`` (the server's path; uvloop keeps the GIL through the write);
- ``os.write`` from ``--threads`` threads, each taking its share of the sockets (``os.write`` releases the
  GIL, so two threads can send on two cores at once);

and, with ``--busy``, next to a process that keeps one core busy, as a training worker does. It prints the
medians of each round's wall time and of the sending thread's CPU time.

    .venv/bin/python bench/loopback_sends.py --busy --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import select
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

CONNECTIONS = 1000
READER_PROCESSES = 2


def reader(port: int, count: int, ready, stop) -> None:
    """Opens ``count`` connections and reads every socket that is ready until ``stop``."""
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    poller = select.epoll()
    by_fd = {}
    for sock in sockets:
        sock.setblocking(False)
        poller.register(sock.fileno(), select.EPOLLIN)
        by_fd[sock.fileno()] = sock
    ready.set()
    while not stop.is_set():
        for fd, _ in poller.poll(0.1):
            try:
                by_fd[fd].recv(65536)
            except BlockingIOError:
                pass


def busy(stop) -> None:
    while not stop.is_set():
        sum(range(100_000))


class Accepted(asyncio.Protocol):
    def __init__(self, transports: list) -> None:
        self.transports = transports

    def connection_made(self, transport) -> None:
        self.transports.append(transport)


async def measure(args: argparse.Namespace) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    loop = asyncio.get_running_loop()
    transports: list = []
    server = await loop.create_server(lambda: Accepted(transports), "127.0.0.1", 0, backlog=2048)
    port = server.sockets[0].getsockname()[1]
    stop = mp.Event()
    children = []
    for _ in range(READER_PROCESSES):
        ready = mp.Event()
        child = mp.Process(target=reader, args=(port, CONNECTIONS // READER_PROCESSES, ready, stop))
        child.start()
        children.append((child, ready))
    if args.busy:
        children.append((mp.Process(target=busy, args=(stop,)), None))
        children[-1][0].start()
    try:
        while len(transports) < CONNECTIONS:
            await asyncio.sleep(0.05)
        for transport in transports:
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fds = [transport.get_extra_info("socket").fileno() for transport in transports]
        frame = b"x" * args.frame_bytes
        share = -(-CONNECTIONS // args.threads)
        pool = ThreadPoolExecutor(args.threads)

        def write_share(index: int) -> float:
            started = time.thread_time()
            for fd in fds[index * share:(index + 1) * share]:
                os.write(fd, frame)
            return time.thread_time() - started

        results: dict[str, dict[str, list[float]]] = {"transport": {"wall": [], "cpu": []},
                                                      f"os.write x{args.threads}": {"wall": [], "cpu": []}}
        await asyncio.sleep(0.5)
        for _ in range(args.rounds):
            for way, result in results.items():
                wall, cpu = time.perf_counter(), time.thread_time()
                if way == "transport":
                    for transport in transports:
                        transport.write(frame)
                    cpu = time.thread_time() - cpu
                else:
                    cpu = max(pool.map(write_share, range(args.threads)))
                result["wall"].append(time.perf_counter() - wall)
                result["cpu"].append(cpu)
                await asyncio.sleep(0.04)
        pool.shutdown()
        return {way: {"wall_ms_p50": round(1000 * statistics.median(r["wall"]), 2),
                      "send_cpu_ms_p50": round(1000 * statistics.median(r["cpu"]), 2)}
                for way, r in results.items()}
    finally:
        stop.set()
        for child, _ in children:
            child.join(5)
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="threads for the os.write way")
    parser.add_argument("--frame-bytes", type=int, default=600)
    parser.add_argument("--busy", action="store_true", help="keep one core busy, as a training worker does")
    args = parser.parse_args()
    import uvloop

    result = uvloop.run(measure(args))
    print(json.dumps({"connections": CONNECTIONS, "busy": args.busy, "load_average": os.getloadavg(), **result}))


if __name__ == "__main__":
    main()
