"""The Redis channel layer, made to honour cancellation of a WebSocket's receive loop.

channels_redis receives with BZPOPMIN in a loop (`brpop_timeout`, 5 s per round, repeated while nothing arrives), and
a consumer that ends cancels that loop. On Python 3.11 `asyncio.wait_for`, which redis-py wraps around every send,
can swallow a cancellation that lands while a command is being written (fixed in 3.12); the loop then runs on,
holding a Redis connection, for as long as the process lives. The old read timeout of 5 s (equal to the blocking read)
ended such loops by accident after 5 s, and every idle socket with them; with a read timeout that outlasts the
blocking read (settings.CHANNEL_LAYERS), this class ends them instead, at the end of the round they are in.
"""

from __future__ import annotations

import asyncio

from channels_redis.core import RedisChannelLayer as ChannelsRedisChannelLayer


class RedisChannelLayer(ChannelsRedisChannelLayer):
    async def _brpop_with_clean(self, index, channel, timeout):
        member = await super()._brpop_with_clean(index, channel, timeout)
        task = asyncio.current_task()
        if member is None and task is not None and task.cancelling():
            # Nothing was popped, so nothing is lost: finish the cancellation that was swallowed on the way.
            raise asyncio.CancelledError()
        return member
