import pytest

from placement_actors.settings import IGNORE_HEAD_NODE_ENV, head_exclusion


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("true", True),
        (" YES ", True),
        ("True", True),
        ("0", False),
        ("", False),
        ("no", False),
        ("on", False),
    ],
    ids=repr,
)
def test_head_exclusion_reads_the_environment(value: str, expected: bool) -> None:  # noqa: FBT001
    assert head_exclusion(None, {IGNORE_HEAD_NODE_ENV: value}) is expected


def test_an_explicit_head_exclusion_wins_over_the_environment() -> None:
    assert head_exclusion(False, {IGNORE_HEAD_NODE_ENV: "1"}) is False  # noqa: FBT003
    assert head_exclusion(True, {}) is True  # noqa: FBT003


def test_head_exclusion_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(IGNORE_HEAD_NODE_ENV, "yes")
    assert head_exclusion() is True
    monkeypatch.delenv(IGNORE_HEAD_NODE_ENV)
    assert head_exclusion() is False
