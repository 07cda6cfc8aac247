"""The PostgreSQL access layer: plain asyncpg coroutines that take a pool (or a connection) and import no trio.

The control API (asyncio) awaits them directly; the scheduler node calls them through the one trio-asyncio
adapter, ``scheduler_node.trio_store.TrioStore``. Every write for a shard is fenced by the shard's epoch
(``epochs``: the rule and why it holds); hot-path writes are one statement per batch (``unnest`` arrays).

Modules, one concept each: ``pool`` (connections), ``migrate`` (schema), ``cluster`` (the cluster row),
``epochs`` (fencing), ``jobs``, ``executions`` (claims, results, takeover), ``partitions``, ``alerts``, ``keys``
(API keys), ``audit``, ``idempotency``, ``rollups`` (per-minute execution figures).
"""

from .alerts import *  # noqa: F403
from .alerts import __all__ as _alerts
from .audit import *  # noqa: F403
from .audit import __all__ as _audit
from .cluster import *  # noqa: F403
from .cluster import __all__ as _cluster
from .epochs import *  # noqa: F403
from .epochs import __all__ as _epochs
from .executions import *  # noqa: F403
from .executions import __all__ as _executions
from .jobs import *  # noqa: F403
from .jobs import __all__ as _jobs
from .keys import *  # noqa: F403
from .keys import __all__ as _keys
from .migrate import migrate, migrations
from .partitions import *  # noqa: F403
from .partitions import __all__ as _partitions
from .pool import *  # noqa: F403
from .pool import __all__ as _pool
from .rollups import *  # noqa: F403
from .rollups import __all__ as _rollups

__all__ = sorted(
    {*_alerts, *_audit, *_cluster, *_epochs, *_executions, *_jobs, *_keys, *_partitions, *_pool, *_rollups,
     "migrate", "migrations"}
)  # fmt: skip
