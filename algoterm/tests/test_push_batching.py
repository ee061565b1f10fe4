"""Pushes made inside `pushes_batched` reach the user's group as one channel-layer message once what they report has
committed, in the order they were made; a push whose transaction or savepoint rolled back is never sent."""

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connections, transaction

from algoterm.realtime import push_to_user, pushes_batched, user_group

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture(autouse=True)
async def _close_connections():
    yield
    await database_sync_to_async(connections.close_all)()


async def listen(user_id: str) -> str:
    """A channel in the user's group, as a /ws/events socket's."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(user_group(user_id), channel)
    return channel


async def received(channel: str, timeout: float = 0.5) -> list[list[str]]:
    """The titles each message carried, one list per channel-layer message."""
    layer, messages = get_channel_layer(), []
    while True:
        try:
            message = await asyncio.wait_for(layer.receive(channel), timeout)
        except TimeoutError:
            return messages
        events = message["events"] if message["type"] == "user.events" else [message]
        messages.append([event["p"]["title"] for event in events])


def push(user_id: str, title: str) -> None:
    push_to_user(user_id=user_id, message_type="notification", payload={"id": title, "title": title})


async def test_the_pushes_of_a_block_go_as_one_message_after_the_commit():
    channel = await listen("usr_batch1")

    @database_sync_to_async
    def work():
        with pushes_batched():
            with transaction.atomic():
                push("usr_batch1", "a")
                push("usr_batch1", "b")
            with transaction.atomic():
                push("usr_batch1", "c")

    await work()
    assert await received(channel) == [["a", "b", "c"]]


async def test_nothing_leaves_before_the_block_ends():
    channel = await listen("usr_batch6")
    inside, release = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    @database_sync_to_async
    def work():
        with pushes_batched():
            with transaction.atomic():
                push("usr_batch6", "committed early")
            loop.call_soon_threadsafe(inside.set)
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=5)

    task = asyncio.ensure_future(work())
    await inside.wait()
    assert await received(channel, timeout=0.2) == []
    release.set()
    await task
    assert await received(channel) == [["committed early"]]


async def test_a_push_rolled_back_with_its_savepoint_or_transaction_is_not_sent():
    channel = await listen("usr_batch2")

    @database_sync_to_async
    def work():
        with pushes_batched():
            with transaction.atomic():
                push("usr_batch2", "kept")
                try:
                    with transaction.atomic():
                        push("usr_batch2", "undone")
                        raise RuntimeError("the savepoint rolls back")
                except RuntimeError:
                    pass
            try:
                with transaction.atomic():
                    push("usr_batch2", "lost")
                    raise RuntimeError("the transaction rolls back")
            except RuntimeError:
                pass

    await work()
    assert await received(channel) == [["kept"]]


async def test_a_block_ending_inside_a_transaction_sends_at_its_commit_and_nothing_on_its_rollback():
    channel = await listen("usr_batch3")

    @database_sync_to_async
    def committed():
        with transaction.atomic():
            with pushes_batched():
                push("usr_batch3", "at the commit")

    @database_sync_to_async
    def rolled_back():
        try:
            with transaction.atomic():
                with pushes_batched():
                    push("usr_batch3", "never")
                raise RuntimeError("rolled back after the block")
        except RuntimeError:
            pass

    await committed()
    await rolled_back()
    assert await received(channel) == [["at the commit"]]


async def test_each_user_gets_only_their_own_pushes_and_blocks_nest():
    mine, theirs = await listen("usr_batch4"), await listen("usr_batch5")

    @database_sync_to_async
    def work():
        with pushes_batched():
            push("usr_batch4", "mine")
            with pushes_batched():
                push("usr_batch5", "theirs")
            push("usr_batch4", "mine again")

    await work()
    assert await received(mine) == [["mine", "mine again"]]
    assert await received(theirs) == [["theirs"]]
