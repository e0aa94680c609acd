"""The Redis client every process builds: one server, or a Redis Cluster when
`DETECTOR_REDIS_CLUSTER` is set. Worker, API and command line all come through here, so that
they reach the same Redis the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, RedisError

from detector.config import Settings, redis_seed_urls

RedisClient: TypeAlias = Redis | RedisCluster

# What an unreachable Redis raises. The cluster client raises RedisClusterException, which is
# not a RedisError, when it cannot rebuild its map of the slots (no node reachable).
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)

POOL_WAIT_S = 2.0  # how long a request waits for a free connection of a bounded pool


def connect_redis(
    settings: Settings,
    *,
    reply_timeout_s: float | None = None,
    connect_timeout_s: float | None = None,
    max_connections: int | None = None,
) -> RedisClient:
    """A client for `settings.redis_url`; the cluster client finds the other nodes itself.

    `max_connections` bounds the pool: a one-server client then makes callers wait for a free
    connection (up to POOL_WAIT_S), while a cluster client (one pool per node) cannot wait, and
    fails a command beyond the bound with MaxConnectionsError.
    """
    url = settings.redis_url
    if settings.redis_cluster:
        # The first node comes with the URL's options (password, TLS...), the others as
        # further start-up nodes: the client asks them in turn for the map of the slots.
        first, *others = redis_seed_urls(url)
        seeds = [urlsplit(other) for other in others]
        nodes = [ClusterNode(seed.hostname or "", seed.port or 6379) for seed in seeds]
        if max_connections is None:
            return RedisCluster.from_url(
                first,
                startup_nodes=nodes or None,
                socket_timeout=reply_timeout_s,
                socket_connect_timeout=connect_timeout_s,
            )
        return RedisCluster.from_url(
            first,
            startup_nodes=nodes or None,
            socket_timeout=reply_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            max_connections=max_connections,
        )
    if max_connections is None:
        return Redis.from_url(
            url, socket_timeout=reply_timeout_s, socket_connect_timeout=connect_timeout_s
        )
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        socket_timeout=reply_timeout_s,
        socket_connect_timeout=connect_timeout_s,
    )
    return Redis(connection_pool=pool)


async def load_scripts(redis: RedisClient, scripts: Sequence[AsyncScript]) -> None:
    """Load scripts on every primary of a cluster (SCRIPT LOAD goes to all of them).

    A one-server pipeline checks its scripts and loads the missing ones before it runs; a
    cluster pipeline does not, so a store that runs scripts in cluster pipelines loads them
    first, and again after a NoScriptError (a node restarted or failed over).
    """
    for script in scripts:
        await redis.script_load(script.script)
