"""Prints who it is, sleeps $SLEEP seconds (default 0.5), exits 0 (a cheap job for tests)."""

import os
import time

print(
    f"hello from rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} "
    f"attempt {os.environ.get('FLYWHEEL_JOB_ATTEMPT')}",
    flush=True,
)
time.sleep(float(os.environ.get("SLEEP", "0.5")))
