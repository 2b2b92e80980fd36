"""Multi-process start-up: ``jax.distributed`` before anything touches devices.

Initialised when the environment names a coordinator (``DIDIFF_COORDINATOR=host:port``,
``DIDIFF_NUM_PROCESSES``, ``DIDIFF_PROCESS_ID``); otherwise a single-process run.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger("didiff_jax")


def initialize() -> None:
    address = os.environ.get("DIDIFF_COORDINATOR")
    if address:
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=int(os.environ["DIDIFF_NUM_PROCESSES"]),
            process_id=int(os.environ["DIDIFF_PROCESS_ID"]),
        )
    log.info(
        "process %d/%d: %d local devices, %d global (%s)",
        jax.process_index(), jax.process_count(), jax.local_device_count(),
        jax.device_count(), jax.devices()[0].platform,
    )  # fmt: skip
