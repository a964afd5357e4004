"""CallbackFuture: one future for threads (.get) and asyncio (await), never blocking a loop."""

import asyncio
import queue
import threading
import time
from typing import Any

import pykka
import pytest

from placement_actors import (
    Deployment,
    DeploymentPlacementActor,
    NodeTopology,
    Place,
    PlacementResult,
    deployment_placement_proxy,
)
from placement_actors.actors.futures import CallbackFuture, pipe_to
from placement_actors.actors.mailbox import KeepServingActor

TIMEOUT = 5


class Echo(KeepServingActor):
    def on_receive(self, message: object) -> object:
        return message


def set_later(future: CallbackFuture[int], value: int, delay_s: float) -> None:
    threading.Timer(delay_s, future.set, (value,)).start()


def test_callbacks_run_once_the_value_is_set() -> None:
    future: CallbackFuture[int] = CallbackFuture()
    seen: list[int] = []
    future.add_done_callback(lambda f: seen.append(f.get(timeout=0)))
    assert not future.done()
    future.set(7)
    future.add_done_callback(lambda f: seen.append(f.get(timeout=0) + 1))  # already done: at once
    assert seen == [7, 8]
    assert future.done()


def test_callbacks_run_when_an_error_is_set() -> None:
    future: CallbackFuture[int] = CallbackFuture()
    errors: list[BaseException] = []

    def record(settled: CallbackFuture[int]) -> None:
        try:
            settled.get(timeout=0)
        except ValueError as exc:
            errors.append(exc)

    future.add_done_callback(record)
    try:
        message = "no"
        raise ValueError(message)  # noqa: TRY301 - set_exception reads the error being handled
    except ValueError:
        future.set_exception()
    assert [str(e) for e in errors] == ["no"]


def test_a_failing_callback_does_not_reach_the_setter() -> None:
    future: CallbackFuture[int] = CallbackFuture()
    future.add_done_callback(lambda _: 1 / 0)
    future.set(1)
    assert future.get(timeout=0) == 1


def test_threads_still_block_on_get_with_a_timeout() -> None:
    future: CallbackFuture[int] = CallbackFuture()
    with pytest.raises(pykka.Timeout):
        future.get(timeout=0.01)
    set_later(future, 3, 0.01)
    assert future.get(timeout=TIMEOUT) == 3


def test_every_getter_waiting_on_one_future_gets_its_value() -> None:
    future: CallbackFuture[int] = CallbackFuture()
    got: list[int] = []
    getters = [
        threading.Thread(target=lambda: got.append(future.get(timeout=TIMEOUT))) for _ in range(4)
    ]
    for getter in getters:
        getter.start()
    future.set(9)
    for getter in getters:
        getter.join(TIMEOUT)
    assert got == [9, 9, 9, 9]
    assert future.get(timeout=0) == 9  # and again, as often as asked


def test_a_future_settles_once_as_pykka_futures_do() -> None:
    future: CallbackFuture[int] = CallbackFuture()
    future.set(1)
    with pytest.raises(queue.Full):
        future.set(2)
    with pytest.raises(queue.Full):
        future.set_exception((ValueError, ValueError("late"), None))
    with pytest.raises(queue.Full):
        future.set_get_hook(lambda _: 3)
    assert future.get(timeout=0) == 1


def test_a_zero_timeout_on_an_unsettled_future_raises_at_once() -> None:
    future: CallbackFuture[int] = CallbackFuture()
    started = time.monotonic()
    with pytest.raises(pykka.Timeout, match="0 seconds"):
        future.get(timeout=0)
    assert time.monotonic() - started < TIMEOUT


def test_a_timeout_beyond_what_the_platform_can_wait_is_waited_as_forever() -> None:
    future: CallbackFuture[int] = CallbackFuture()
    set_later(future, 4, 0.01)
    assert future.get(timeout=1e12) == 4


def test_a_get_hook_set_while_a_thread_waits_answers_that_thread() -> None:
    future: CallbackFuture[int] = CallbackFuture()
    got: list[int] = []
    getter = threading.Thread(target=lambda: got.append(future.get(timeout=TIMEOUT)))
    getter.start()
    time.sleep(0.01)
    # The hook is given what is left of the getter's wait.
    future.set_get_hook(lambda left: 11 if left is not None and 0 < left < TIMEOUT else -1)
    getter.join(TIMEOUT)
    assert got == [11]
    with pytest.raises(queue.Full):
        future.set(12)  # a future with a get hook is settled by it


class HeldGate:
    """A future's gate whose first getter is held between taking it and giving it back."""

    def __init__(self, gate: Any, setter: int) -> None:
        self._gate, self._setter = gate, setter
        self.let_go = threading.Event()
        self.holding = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:  # noqa: FBT001, FBT002 - a lock's signature
        return bool(self._gate.acquire(blocking, timeout))

    def release(self) -> None:
        if threading.get_ident() != self._setter and not self.holding.is_set():
            self.holding.set()
            assert self.let_go.wait(TIMEOUT)
        self._gate.release()


def test_a_getter_whose_wait_ends_while_another_holds_the_gate_still_gets_the_value() -> None:
    future: CallbackFuture[int] = CallbackFuture()
    gate = HeldGate(future._gate, threading.get_ident())
    future._gate = gate  # type: ignore[assignment]
    got: list[object] = []

    def get(timeout: float) -> None:
        try:
            got.append(future.get(timeout=timeout))
        except pykka.Timeout as exc:
            got.append(exc)

    getters = [threading.Thread(target=get, args=(0.3,)) for _ in range(2)]
    for getter in getters:
        getter.start()
    time.sleep(0.05)
    future.set(42)  # one getter takes the gate and is held there; the other's wait runs out
    assert gate.holding.wait(TIMEOUT)
    time.sleep(0.4)
    gate.let_go.set()
    for getter in getters:
        getter.join(TIMEOUT)
    assert got == [42, 42]


def test_a_get_hook_runs_once_however_many_threads_get_at_once() -> None:
    future: CallbackFuture[int] = CallbackFuture()
    calls: list[float | None] = []

    def hook(timeout: float | None) -> int:
        calls.append(timeout)
        time.sleep(0.05)
        return 5

    future.set_get_hook(hook)
    got: list[int] = []
    getters = [
        threading.Thread(target=lambda: got.append(future.get(timeout=TIMEOUT))) for _ in range(4)
    ]
    for getter in getters:
        getter.start()
    for getter in getters:
        getter.join(TIMEOUT)
    assert got == [5, 5, 5, 5]
    assert len(calls) == 1


def test_an_error_given_as_a_type_alone_is_raised_as_a_new_one() -> None:
    future: CallbackFuture[int] = CallbackFuture()
    future.set_exception((KeyError, None, None))
    with pytest.raises(KeyError):
        future.get(timeout=0)


async def test_awaiting_gives_the_value_or_raises_the_error() -> None:
    future: CallbackFuture[int] = CallbackFuture()
    set_later(future, 5, 0.01)
    assert await future == 5
    failing: CallbackFuture[int] = CallbackFuture()
    threading.Timer(0.01, failing.set_exception, ((KeyError, KeyError("k"), None),)).start()
    with pytest.raises(KeyError):
        await failing


async def test_a_ticker_keeps_ticking_while_a_future_is_awaited() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    future: CallbackFuture[int] = CallbackFuture()
    set_later(future, 1, 0.5)
    start = time.monotonic()
    assert await future == 1
    waited = time.monotonic() - start
    task.cancel()
    # a blocking await would let the ticker run once; a free loop runs it every 10 ms
    assert waited >= 0.45
    assert ticks >= 10


async def test_asyncio_wait_for_bounds_an_await() -> None:
    future: CallbackFuture[int] = CallbackFuture()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(future, 0.05)
    future.set(1)  # the abandoned bridge is cancelled; setting later harms nothing


async def test_actor_replies_are_awaitable_by_ask_and_by_proxy() -> None:
    ref = DeploymentPlacementActor.start(topology=[NodeTopology(node_id="n", num_gpus=4)])
    deployment = Deployment(name="d", model="m", gpus=2)
    asked = ref.ask(Place(deployment), block=False)
    assert isinstance(asked, CallbackFuture)
    result = await asked
    assert isinstance(result, PlacementResult)
    proxy = deployment_placement_proxy(ref)
    again = await proxy.place(Place(deployment))
    assert again == result


async def test_mapped_futures_are_awaited_too() -> None:
    future: CallbackFuture[int] = CallbackFuture()
    doubled = future.map(lambda v: v * 2)
    set_later(future, 21, 0.01)
    assert await doubled == 42


def test_derived_futures_settle_and_run_their_callbacks() -> None:
    future: CallbackFuture[list[int]] = CallbackFuture()
    mapped = future.map(len)
    kept = future.filter(lambda v: v > 1)
    summed = future.reduce(lambda a, b: a + b, 0)
    seen: list[object] = []
    mapped.add_done_callback(lambda f: seen.append(f.get(timeout=0)))
    future.set([1, 2, 3])
    assert mapped.done()
    assert seen == [3]
    assert kept.get(timeout=0) == [2, 3]
    assert summed.get(timeout=0) == 6


def test_a_future_settled_by_a_get_hook_can_be_mapped_too() -> None:
    """pykka's ``stop(block=False)`` answers through a get hook, which runs no callbacks."""
    ref = Echo.start()
    stopped = ref.stop(block=False)
    assert isinstance(stopped, CallbackFuture)
    assert stopped.map(lambda value: f"stopped: {value}").get(timeout=TIMEOUT) == "stopped: True"


def test_a_join_settles_once_every_future_has_without_blocking_the_setter() -> None:
    first: CallbackFuture[int] = CallbackFuture()
    second: CallbackFuture[int] = CallbackFuture()
    joined = first.join(second)
    first.set(1)  # the other is not in yet: setting this one returns at once
    assert not joined.done()
    second.set(2)
    assert joined.get(timeout=0) == [1, 2]


def test_a_join_carries_the_first_error_in_its_order() -> None:
    first: CallbackFuture[int] = CallbackFuture()
    second: CallbackFuture[int] = CallbackFuture()
    joined = first.join(second)
    second.set_exception((KeyError, KeyError("second"), None))
    first.set(1)
    with pytest.raises(KeyError, match="second"):
        joined.get(timeout=0)


def test_a_derived_future_carries_the_error_of_its_function() -> None:
    future: CallbackFuture[int] = CallbackFuture()
    broken = future.map(lambda v: v // 0)
    future.set(1)
    with pytest.raises(ZeroDivisionError):
        broken.get(timeout=0)


async def test_a_stop_iteration_reply_reaches_the_awaiting_task_as_an_error() -> None:
    future: CallbackFuture[int] = CallbackFuture()
    threading.Timer(0.01, future.set_exception, ((StopIteration, StopIteration(), None),)).start()
    with pytest.raises(RuntimeError, match="StopIteration"):
        await asyncio.wait_for(future, TIMEOUT)


def test_abandoned_awaits_leave_no_callbacks_behind(caplog: pytest.LogCaptureFixture) -> None:
    future: CallbackFuture[int] = CallbackFuture()

    async def give_up_often() -> None:
        for _ in range(50):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(future, 0.001)

    asyncio.run(give_up_often())
    future.set(1)  # the loop is closed now: nothing may be scheduled on it
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


class Inbox(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[object] = []

    def on_receive(self, message: object) -> object:
        if message == "read":
            return list(self.seen)
        self.seen.append(message)
        return None


@pytest.mark.parametrize(
    "make",
    [CallbackFuture, pykka.ThreadingFuture],
    ids=["callback-future", "plain-pykka-future"],
)
def test_pipe_to_turns_a_settled_future_into_a_message(make: type[CallbackFuture[int]]) -> None:
    inbox = Inbox.start()
    future = make()
    pipe_to(future, inbox, lambda settled: ("got", settled.get(timeout=0)))
    future.set(9)
    deadline = time.monotonic() + TIMEOUT
    while inbox.ask("read", timeout=TIMEOUT) != [("got", 9)]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
