"""The control API's routes, named once: handlers, tests, the CLI and the docs use these constants."""

from __future__ import annotations

__all__ = ["ALERTS", "AUDIT", "CLUSTER", "EXECUTIONS", "KEYS", "HEALTHZ", "JOB", "JOBS", "JOBS_BATCH", "JOB_PAUSE", "JOB_RESUME", "JOB_TRIGGER", "READYZ",
           "SCHEDULES", "STATS", "V1"]  # fmt: skip

V1 = "/v1"
JOBS = f"{V1}/jobs"
JOBS_BATCH = f"{JOBS}:batch"
JOB = f"{JOBS}/{{job_id:str}}"
JOB_PAUSE = f"{JOB}/pause"
JOB_RESUME = f"{JOB}/resume"
JOB_TRIGGER = f"{JOB}/trigger"
SCHEDULES = f"{V1}/schedules"
ALERTS = f"{V1}/alerts"
EXECUTIONS = f"{V1}/executions"
AUDIT = f"{V1}/audit"
KEYS = f"{V1}/keys"
CLUSTER = f"{V1}/cluster"
STATS = f"{V1}/stats"
HEALTHZ = "/healthz"
READYZ = "/readyz"
