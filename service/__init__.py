"""The HTTP/SSE service: aiohttp app, job manager, event logs, storage.

This package never initialises CUDA: jobs run in spawned worker processes (``trainer.worker``).
"""
