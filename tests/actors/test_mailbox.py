"""KeepServingActor: a failing tell is logged, not fatal (this leans on pykka 4 internals)."""

import logging
import threading
import time
from typing import Any

import pykka
import pytest
from pykka._envelope import Envelope

from placement_actors.actors.futures import CallbackFuture
from placement_actors.actors.mailbox import KeepServingActor, stop_first, why_stopped
from placement_actors.domain.errors import InvalidSpecError

TIMEOUT = 5


class Echo(KeepServingActor):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[object] = []

    def on_receive(self, message: object) -> object:
        if message == "boom":
            msg = "told to fail"
            raise ValueError(msg)
        self.seen.append(message)
        return message

    def count(self) -> int:
        return len(self.seen)


def test_a_failing_tell_is_logged_and_the_actor_lives(caplog: pytest.LogCaptureFixture) -> None:
    ref = Echo.start()
    with caplog.at_level(logging.WARNING, logger="placement_actors.actors.mailbox"):
        ref.tell("boom")
        assert ref.ask("still here", timeout=TIMEOUT) == "still here"
    assert ref.is_alive()
    assert "told str failed and was dropped: ValueError: told to fail" in caplog.text


def test_asked_errors_still_reach_the_asker() -> None:
    ref = Echo.start()
    with pytest.raises(ValueError, match="told to fail"):
        ref.ask("boom", timeout=TIMEOUT)
    assert ref.ask("ok", timeout=TIMEOUT) == "ok"


def test_told_messages_are_handled_and_their_replies_dropped() -> None:
    ref = Echo.start()
    ref.tell("one")
    ref.tell("two")
    proxy = ref.proxy()
    assert proxy.count().get(timeout=TIMEOUT) == 2


def test_a_plain_pykka_actor_dies_of_the_same_tell() -> None:
    """The behaviour KeepServingActor exists to change; if pykka changes it, revisit the mailbox."""

    class Plain(pykka.ThreadingActor):
        def on_receive(self, message: object) -> object:
            raise ValueError(message)

    ref = Plain.start()
    ref.tell("boom")
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("anything", timeout=TIMEOUT)


def test_an_ask_that_reaches_the_mailbox_after_the_actor_stopped_is_told_so() -> None:
    """pykka checks that the actor lives, then sends: a stop can come in between."""
    ref = Echo.start()
    inbox = ref.actor_inbox
    ref.stop()
    late: CallbackFuture[object] = CallbackFuture()
    inbox.put(Envelope("late", reply_to=late))  # sent by an ask that saw the actor alive
    with pytest.raises(pykka.ActorDeadError):
        late.get(timeout=TIMEOUT)


def test_asks_racing_a_stop_are_all_answered() -> None:
    ref = Echo.start()
    sent: list[pykka.Future[object]] = []
    lock = threading.Lock()

    def ask_on() -> None:
        for i in range(2000):
            try:
                reply = ref.ask(i, block=False)
            except pykka.ActorDeadError:
                continue
            with lock:
                sent.append(reply)

    senders = [threading.Thread(target=ask_on) for _ in range(4)]
    for sender in senders:
        sender.start()
    time.sleep(0.002)
    ref.stop()
    for sender in senders:
        sender.join(TIMEOUT)
    unanswered = 0
    for reply in sent:
        try:
            reply.get(timeout=TIMEOUT)
        except pykka.ActorDeadError:
            pass
        except pykka.Timeout:
            unanswered += 1
    assert unanswered == 0


class Refuser(KeepServingActor):
    """Refuses every message with a typed error, or fails of a bug on "bug"."""

    def on_receive(self, message: object) -> object:
        if message == "bug":
            return self.broken()
        return self.refuse(message)

    def refuse(self, message: object) -> object:
        msg = f"no {message}"
        raise InvalidSpecError(msg, field="name")

    def broken(self) -> object:
        known: dict[str, object] = {}
        return known["missing"]


def frames_of(error: BaseException) -> list[str]:
    names, traceback = [], error.__traceback__
    while traceback is not None:
        names.append(traceback.tb_frame.f_code.co_name)
        traceback = traceback.tb_next
    return names


def test_a_typed_refusal_reaches_the_asker_without_the_actors_frames() -> None:
    """A refusal is an answer about the request: its traceback ends where it was asked."""
    ref = Refuser.start()
    with pytest.raises(InvalidSpecError, match="no thing") as refused:
        ref.ask("thing", timeout=TIMEOUT)
    assert "refuse" not in frames_of(refused.value)
    assert refused.value.field == "name"


def test_an_unexpected_error_keeps_the_actors_frames_for_whoever_debugs_it() -> None:
    ref = Refuser.start()
    with pytest.raises(KeyError) as failed:
        ref.ask("bug", timeout=TIMEOUT)
    assert "broken" in frames_of(failed.value)
    with pytest.raises(InvalidSpecError):  # and the actor serves on
        ref.ask("again", timeout=TIMEOUT)


# -- waiting for other actors' replies while answering queries -----------------------------------


class Query:
    """A read-only question the waiting actor answers at once."""


class SlowQuery:
    """A read-only question that takes the actor a while to answer."""


class Waiter(KeepServingActor):
    """Waits for the replies it is handed; answers queries meanwhile; logs every other message."""

    def __init__(
        self,
        reply: CallbackFuture[str],
        wait_s: float = TIMEOUT,
        held: threading.Event | None = None,
        more: tuple[CallbackFuture[str], ...] = (),
        log: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.replies = (reply, *more)
        self.wait_s = wait_s
        self.log: list[str] = [] if log is None else log  # a list of the test's outlives it
        self.answered = 0
        self.held = held or threading.Event()
        self.holding = threading.Event()  # set as "hold" starts
        self._handlers = {Query: self.query, SlowQuery: self.slow_query, str: self.command}

    def query(self, _: Query) -> tuple[str, ...]:
        return tuple(self.log)

    def slow_query(self, _: SlowQuery) -> int:
        time.sleep(0.02)
        self.answered += 1
        return self.answered

    def command(self, message: str) -> str:
        if message == "wait":
            self.log.append("waiting")
            serve = frozenset({Query, SlowQuery})
            try:
                self._wait_serving(self.replies, self.wait_s, serve=serve)
            except pykka.Timeout:
                self.log.append(f"timed out after {self.answered} slow queries")
                raise
            self.log.append("got " + ", ".join(r.get(timeout=0) for r in self.replies))
            return "waited"
        if message == "hold":
            self.holding.set()
            assert self.held.wait(TIMEOUT)
        self.log.append(message)
        return message


def started_waiting(ref: pykka.ActorRef[Any]) -> pykka.Future[object]:
    waiting = ref.ask("wait", block=False)
    deadline = time.monotonic() + TIMEOUT
    while "waiting" not in ref.ask(Query(), timeout=TIMEOUT):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return waiting


def test_a_waiting_actor_answers_queries_and_holds_commands_back_in_order() -> None:
    reply: CallbackFuture[str] = CallbackFuture()
    ref = Waiter.start(reply)
    try:
        waiting = started_waiting(ref)
        first, second = ref.ask("first", block=False), ref.ask("second", block=False)
        # The query is answered during the wait; the commands sent before it are not handled yet.
        assert ref.ask(Query(), timeout=TIMEOUT) == ("waiting",)
        reply.set("the reply")
        assert waiting.get(timeout=TIMEOUT) == "waited"
        assert (first.get(timeout=TIMEOUT), second.get(timeout=TIMEOUT)) == ("first", "second")
        assert ref.ask(Query(), timeout=TIMEOUT) == ("waiting", "got the reply", "first", "second")
    finally:
        ref.stop(timeout=TIMEOUT)


def test_a_wait_that_times_out_raises_to_its_handler_and_loses_no_message() -> None:
    reply: CallbackFuture[str] = CallbackFuture()
    ref = Waiter.start(reply, wait_s=0.5)
    try:
        waiting = started_waiting(ref)
        held = ref.ask("held", block=False)
        with pytest.raises(pykka.Timeout):
            waiting.get(timeout=TIMEOUT)
        assert held.get(timeout=TIMEOUT) == "held"
        reply.set("too late")  # its wake-up arrives after the wait ended, and is dropped
        assert ref.ask(Query(), timeout=TIMEOUT) == (
            "waiting",
            "timed out after 0 slow queries",
            "held",
        )
    finally:
        ref.stop(timeout=TIMEOUT)
    assert_no_thread_left("Waiter")


def test_a_late_wake_up_left_in_the_mailbox_does_not_hold_the_actor_thread_at_stop() -> None:
    reply: CallbackFuture[str] = CallbackFuture()
    held = threading.Event()
    ref = Waiter.start(reply, wait_s=0.2, held=held)
    with pytest.raises(pykka.Timeout):
        started_waiting(ref).get(timeout=TIMEOUT)
    holding = ref.ask("hold", block=False)  # the actor thread is busy while the mailbox fills
    stopped = ref.stop(block=False)
    reply.set("too late")  # its wake-up lands behind the stop: pykka's teardown reads it
    held.set()
    holding.get(timeout=TIMEOUT)
    stopped.get(timeout=TIMEOUT)
    assert_no_thread_left("Waiter")


def assert_no_thread_left(prefix: str) -> None:
    """pykka's actor threads are not daemons: one left running would hang the interpreter's exit."""
    deadline = time.monotonic() + TIMEOUT
    while any(t.name.startswith(f"{prefix}-") for t in threading.enumerate()):
        assert time.monotonic() < deadline, [t.name for t in threading.enumerate()]
        time.sleep(0.01)


def test_a_busy_mailbox_does_not_put_off_the_timeout() -> None:
    reply: CallbackFuture[str] = CallbackFuture()
    ref = Waiter.start(reply, wait_s=0.3)
    try:
        waiting = started_waiting(ref)
        asked = [ref.ask(SlowQuery(), block=False) for _ in range(100)]  # 2 s of answers
        with pytest.raises(pykka.Timeout):
            waiting.get(timeout=TIMEOUT)
        log = ref.ask(Query(), timeout=TIMEOUT)
        assert isinstance(log, tuple)
        (timed_out,) = [entry for entry in log if entry.startswith("timed out")]
        assert int(timed_out.split()[3]) < 50  # gave up at its deadline, mid-queue
        assert sorted(a.get(timeout=TIMEOUT) for a in asked) == list(range(1, 101))
    finally:
        ref.stop(timeout=TIMEOUT)


def test_each_reply_gets_the_whole_timeout_from_the_one_before() -> None:
    first: CallbackFuture[str] = CallbackFuture()
    second: CallbackFuture[str] = CallbackFuture()
    ref = Waiter.start(first, wait_s=1.0, more=(second,))
    try:
        waiting = started_waiting(ref)
        threading.Timer(0.6, first.set, args=("one",)).start()
        threading.Timer(1.2, second.set, args=("two",)).start()  # 1.2 s in all: over 1.0
        assert waiting.get(timeout=TIMEOUT) == "waited"
        log = ref.ask(Query(), timeout=TIMEOUT)
        assert isinstance(log, tuple)
        assert log[-1] == "got one, two"
    finally:
        ref.stop(timeout=TIMEOUT)


def test_a_reply_that_comes_too_long_after_the_one_before_times_out() -> None:
    first: CallbackFuture[str] = CallbackFuture()
    second: CallbackFuture[str] = CallbackFuture()
    ref = Waiter.start(first, wait_s=0.5, more=(second,))
    try:
        waiting = started_waiting(ref)
        threading.Timer(0.05, first.set, args=("one",)).start()
        threading.Timer(0.95, second.set, args=("two",)).start()  # 0.9 s after the first
        with pytest.raises(pykka.Timeout):
            waiting.get(timeout=TIMEOUT)
    finally:
        ref.stop(timeout=TIMEOUT)


def test_a_stop_sent_during_a_wait_takes_effect_after_it() -> None:
    reply: CallbackFuture[str] = CallbackFuture()
    ref = Waiter.start(reply)
    waiting = started_waiting(ref)
    stopped = ref.stop(block=False)
    assert ref.is_alive()
    reply.set("last")
    assert waiting.get(timeout=TIMEOUT) == "waited"
    stopped.get(timeout=TIMEOUT)
    assert not ref.is_alive()


def test_a_failing_query_during_a_wait_goes_to_its_asker_and_the_wait_goes_on() -> None:
    class Failing(Waiter):
        def query(self, _: Query) -> tuple[str, ...]:
            msg = "no answer"
            raise ValueError(msg)

    reply: CallbackFuture[str] = CallbackFuture()
    ref = Failing.start(reply)
    try:
        waiting = ref.ask("wait", block=False)
        time.sleep(0.1)
        with pytest.raises(ValueError, match="no answer"):
            ref.ask(Query(), timeout=TIMEOUT)
        ref.tell(Query())  # a told query that fails is logged, as outside a wait
        reply.set("done")
        assert waiting.get(timeout=TIMEOUT) == "waited"
    finally:
        ref.stop(timeout=TIMEOUT)


def turned_away(reply: pykka.Future[object]) -> str:
    """The `pykka.ActorDeadError` ``reply`` was answered with, in words."""
    with pytest.raises(pykka.ActorDeadError) as caught:
        reply.get(timeout=TIMEOUT)
    return str(caught.value)


class Logged(KeepServingActor):
    """Logs every message that reaches its `on_receive` (before any dispatch)."""

    def __init__(self, log: list[object], holding: threading.Event, held: threading.Event) -> None:
        super().__init__()
        self.log, self.holding, self.held = log, holding, held

    def on_receive(self, message: object) -> object:
        self.log.append(message)
        if message == "hold":
            self.holding.set()
            assert self.held.wait(TIMEOUT)
        return message


def logged() -> tuple[pykka.ActorRef[Logged], list[object], threading.Event, threading.Event]:
    log: list[object] = []
    holding, held = threading.Event(), threading.Event()
    return Logged.start(log, holding, held), log, holding, held


def test_a_stop_sent_first_passes_the_waiting_messages_and_each_is_told_why() -> None:
    ref, log, holding, held = logged()
    in_hand = ref.ask("hold", block=False)
    assert holding.wait(TIMEOUT)  # the actor is busy while the mailbox fills
    waiting = [ref.ask(f"sent before {i}", block=False) for i in range(3)]
    ref.tell("told before")
    stopped = stop_first(ref, "stepped down: another holds the lease")
    late = ref.ask("sent after", block=False)
    held.set()
    assert in_hand.get(timeout=TIMEOUT) == "hold"  # the message in hand runs to its end
    stopped.get(timeout=TIMEOUT)
    assert not ref.is_alive()
    for reply in (*waiting, late):
        assert turned_away(reply) == "stepped down: another holds the lease"
    assert log == ["hold"]
    assert why_stopped(ref) == "stepped down: another holds the lease"
    assert_no_thread_left("Logged")


def test_a_stop_sent_first_to_an_idle_actor_stops_it_and_nothing_else_reaches_it() -> None:
    ref, log, _, _ = logged()
    assert ref.ask("first", timeout=TIMEOUT) == "first"
    time.sleep(0.05)  # the actor waits on its empty mailbox
    stop_first(ref, "stepped down").get(timeout=TIMEOUT)
    assert not ref.is_alive()
    assert log == ["first"]  # not even the wake-up that came with the stop
    assert_no_thread_left("Logged")


def test_every_stop_sent_first_is_answered_and_the_first_reason_is_kept() -> None:
    ref, log, holding, held = logged()
    in_hand = ref.ask("hold", block=False)
    assert holding.wait(TIMEOUT)
    stops = [stop_first(ref, f"reason {i}") for i in range(3)]
    waiting = ref.ask("waiting", block=False)
    held.set()
    in_hand.get(timeout=TIMEOUT)
    for stopped in stops:
        stopped.get(timeout=TIMEOUT)
    assert turned_away(waiting) == "reason 0"
    assert why_stopped(ref) == "reason 0"
    assert log == ["hold"]


def test_a_stop_sent_first_while_the_actor_stops_is_answered() -> None:
    ref, _, holding, held = logged()
    in_hand = ref.ask("hold", block=False)
    assert holding.wait(TIMEOUT)
    plain = ref.stop(block=False)  # queued: the actor stops on it
    racing = [stop_first(ref, "late") for _ in range(50)]
    held.set()
    in_hand.get(timeout=TIMEOUT)
    plain.get(timeout=TIMEOUT)
    for stopped in racing:
        stopped.get(timeout=TIMEOUT)
    assert not ref.is_alive()


def test_a_stop_sent_first_during_a_wait_comes_before_the_messages_the_wait_held() -> None:
    log: list[str] = []
    reply: CallbackFuture[str] = CallbackFuture()
    ref = Waiter.start(reply, log=log)
    waiting = started_waiting(ref)
    held = ref.ask("held by the wait", block=False)
    stopped = stop_first(ref, "stepped down")
    assert ref.ask(Query(), timeout=TIMEOUT) == ("waiting",)  # queries are still answered
    reply.set("the reply")
    assert waiting.get(timeout=TIMEOUT) == "waited"
    stopped.get(timeout=TIMEOUT)
    assert not ref.is_alive()
    assert turned_away(held) == "stepped down"
    assert log == ["waiting", "got the reply"]
    assert_no_thread_left("Waiter")


def test_a_stop_sent_first_to_a_stopped_actor_is_answered_and_gives_no_reason() -> None:
    ref = Echo.start()
    ref.stop(timeout=TIMEOUT)
    stop_first(ref, "too late").get(timeout=TIMEOUT)
    assert why_stopped(ref) == ""  # it had stopped the usual way


def test_an_actor_stopped_the_usual_way_has_no_reason_given() -> None:
    ref = Echo.start()
    last = ref.ask("last", block=False)
    ref.stop(timeout=TIMEOUT)
    assert last.get(timeout=TIMEOUT) == "last"  # a plain stop waits its turn
    assert why_stopped(ref) == ""


def test_a_stop_sent_first_to_a_stock_pykka_actor_waits_its_turn() -> None:
    class Stock(pykka.ThreadingActor):
        def on_receive(self, message: object) -> object:
            return message

    ref = Stock.start()
    waiting = ref.ask("before", block=False)
    stop_first(ref, "ignored").get(timeout=TIMEOUT)
    assert waiting.get(timeout=TIMEOUT) == "before"
    assert why_stopped(ref) == ""


def test_a_late_wake_up_reaches_no_handler() -> None:
    seen: list[str] = []

    class Seeing(Waiter):
        def on_receive(self, message: object) -> object:
            seen.append(type(message).__name__)
            return super().on_receive(message)

    reply: CallbackFuture[str] = CallbackFuture()
    ref = Seeing.start(reply, wait_s=0.2)
    try:
        with pytest.raises(pykka.Timeout):
            started_waiting(ref).get(timeout=TIMEOUT)
        reply.set("too late")  # its wake-up arrives after the wait ended
        assert ref.ask("after", timeout=TIMEOUT) == "after"
    finally:
        ref.stop(timeout=TIMEOUT)
    assert "_Wake" not in seen
    assert seen[-1] == "str"
