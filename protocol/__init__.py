"""Shardwheel's shared language: job specs, schedules, execution records, node<->API messages, shard math,
target URLs.

Pure: no I/O, and no import of the rest of the project (tests/test_layering.py checks it). Everything public
is re-exported here, except the schedule math, ``protocol.slots``, a package with its own ``__all__``
(``from protocol.slots import compile_schedule``) so that importing the wire types does not load croniter.
"""

from .errors import *  # noqa: F403
from .errors import __all__ as _errors
from .executions import *  # noqa: F403
from .executions import __all__ as _executions
from .ids import *  # noqa: F403
from .ids import __all__ as _ids
from .internal import *  # noqa: F403
from .internal import __all__ as _internal
from .jobs import *  # noqa: F403
from .jobs import __all__ as _jobs
from .schedules import *  # noqa: F403
from .schedules import __all__ as _schedules
from .shards import *  # noqa: F403
from .shards import __all__ as _shards
from .targets import *  # noqa: F403
from .targets import __all__ as _targets

__all__ = sorted({*_errors, *_executions, *_ids, *_internal, *_jobs, *_schedules, *_shards, *_targets})
