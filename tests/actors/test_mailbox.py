"""KeepServingActor: a failing tell is logged, not fatal (this leans on pykka 4 internals)."""

import logging

import pykka
import pytest

from placement_actors.actors.mailbox import KeepServingActor

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
