"""No command prints an API key: not as text, not in --json, not in -v's logs, not in any record.

A key is planted in the environment variable a deployments file names (``api_key_env``), and once
more where a user pasted the key itself into ``api_key_env``. Every command runs in each mode.
"""

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from placement_actors import cli
from placement_actors.config_files import load_deployments
from placement_actors.domain.errors import BackendError
from placement_actors.service import PlacementClient

SECRET = f"sk-planted-{secrets.token_hex(16)}"
KEY_VARIABLE = "PLACEMENT_ACTORS_TEST_PLANTED_KEY"
CLUSTER = Path(__file__).parent.parent / "examples" / "cluster.yaml"
MODES = {"text": (), "json": ("--json",), "verbose": ("-v",)}


class Watch:
    """Runs commands and keeps everything they print; the log records come from ``caplog``."""

    def __init__(
        self, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
    ) -> None:
        self.capsys = capsys
        self.caplog = caplog
        self.seen: list[str] = []

    def run(self, *argv: str) -> int:
        code = cli.main(list(argv))
        self.seen.extend(self.capsys.readouterr())
        return code

    def assert_the_key_was_never_shown(self) -> None:
        seen = [*self.seen, self.caplog.text]
        for record in self.caplog.records:
            seen += [record.getMessage(), repr(record.args), repr(record.exc_info)]
        leaks = [text for text in seen if SECRET in text]
        assert not leaks, f"the planted key was printed or logged: {leaks[0][:300]!r}"


@pytest.fixture
def watch(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> Watch:
    """The key planted, and every log record of every logger kept, DEBUG and up."""
    monkeypatch.setenv(KEY_VARIABLE, SECRET)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="placement_actors")
    return Watch(capsys, caplog)


def deployments(tmp_path: Path, prefix: str) -> Path:
    """A remote deployment keyed by the planted variable, one that fits and one that never does."""
    path = tmp_path / f"{prefix}.yaml"
    path.write_text(
        "deployments:\n"
        f"  - {{name: {prefix}-api, model: gpt-4o, api_key_env: {KEY_VARIABLE}}}\n"
        f"  - {{name: {prefix}-local, model: m, gpus: 1}}\n"
        f"  - {{name: {prefix}-huge, model: m, gpus: 1000}}\n"
    )
    specs = load_deployments(path)  # the key really is read: the test is not vacuous
    api_key = specs[0].deployment.api_key
    assert api_key is not None
    assert api_key.reveal() == SECRET
    return path


def misused(tmp_path: Path) -> Path:
    """The key pasted into ``api_key_env`` instead of a variable's name."""
    path = tmp_path / "misused.yaml"
    path.write_text(
        f"deployments:\n  - {{name: sec-misused, model: gpt-4o, api_key_env: {SECRET}}}\n"
    )
    return path


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_the_commands_without_ray_never_print_the_key(
    watch: Watch, tmp_path: Path, mode: tuple[str, ...]
) -> None:
    path = deployments(tmp_path, "sec")
    place = ("place", str(path), "--cluster", str(CLUSTER))
    assert watch.run(*mode, *place) == cli.EXIT_NO_CAPACITY  # sec-huge never fits
    assert watch.run(*mode, "plan", "--tp", "2", "--cluster", str(CLUSTER)) == cli.EXIT_OK
    misuse = ("place", str(misused(tmp_path)), "--cluster", str(CLUSTER))
    assert watch.run(*mode, *misuse) == cli.EXIT_INVALID_SPEC
    demo = ("demo", "--deployments", str(misused(tmp_path)))  # refused before Ray starts
    assert watch.run(*mode, *demo) == cli.EXIT_INVALID_SPEC
    watch.assert_the_key_was_never_shown()


@pytest.fixture
def address(ray_cluster: Any, ray_nodes: dict[str, str]) -> Iterator[str]:
    """The session cluster's address; afterwards no service runs and no group of ours is left."""
    del ray_nodes  # its teardown asserts that no placement group is left alive
    yield ray_cluster.address
    try:
        client = PlacementClient.connect(ray_cluster.address)
    except BackendError:
        return  # serve --stop stopped it, as it should
    cli.main(["reap", "sec-", "--address", ray_cluster.address])
    client.stop_service()


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_the_commands_on_ray_never_print_the_key(
    watch: Watch, tmp_path: Path, address: str, mode: tuple[str, ...]
) -> None:
    at = ("--address", address)
    steps = [
        (("demo", "--deployments", str(deployments(tmp_path, "sec-demo")), *at), cli.EXIT_OK),
        (("place", str(misused(tmp_path)), *at), cli.EXIT_INVALID_SPEC),
        (("serve", *at), cli.EXIT_OK),
        (("place", str(deployments(tmp_path, "sec")), "--ready-timeout", "20", *at), 4),
        (("status", *at), cli.EXIT_OK),
        (("why", "sec-huge", *at), cli.EXIT_NO_CAPACITY),
        (("release", "sec-api", *at), cli.EXIT_OK),
        (("reap", "sec-", *at), cli.EXIT_OK),
        (("serve", "--stop", *at), cli.EXIT_OK),
    ]
    for argv, expected in steps:
        assert watch.run(*mode, *argv) == expected, argv
    watch.assert_the_key_was_never_shown()
