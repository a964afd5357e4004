import contextlib
import dataclasses
import http.server
import io
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from placement_actors import Deployment, cli
from placement_actors.actors.messages import (
    ClusterView,
    GpuHolding,
    NodeJoined,
    NodeLost,
    NodeState,
    NodeView,
    ReplicaLost,
    ReplicaMoved,
    ReplicaReplaced,
)
from placement_actors.cli import commands, render
from placement_actors.domain.errors import BackendError, NotEnoughGpusError
from placement_actors.domain.results import NodeAssignment, PlacementResult, Rejection
from placement_actors.domain.topology import NodeTopology
from placement_actors.service import EventsMissed, ServiceEvent

EXAMPLES = Path(__file__).parent.parent / "examples"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_place_prints_decisions_then_the_deployment_that_does_not_fit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-demo-secret")
    code, out, _ = run(
        capsys,
        "place",
        str(EXAMPLES / "deployments.yaml"),
        "--cluster",
        str(EXAMPLES / "cluster.yaml"),
    )
    assert code == cli.EXIT_NO_CAPACITY
    for name in ("llama-8b", "llama-70b", "mixtral", "gpt-4o", "claude"):
        assert name in out
    assert "+" not in out  # largest first: no replica of this file needs a split (see below)
    assert "llama-405b did not fit" in out
    assert "NotEnoughGpusError" in out
    assert out.index("Replicas") < out.index("llama-405b did not fit")
    assert "sk-demo-secret" not in out


def test_demo_places_end_to_end_on_ray_and_removes_its_groups(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, ray_cluster: Any, ray_nodes: dict[str, str]
) -> None:
    deployments = tmp_path / "d.yaml"
    deployments.write_text(
        "deployments:\n"
        "  - {name: cli-tp2, model: m, gpus: 2}\n"
        "  - {name: cli-api, model: claude-3-haiku}\n"
        "  - {name: cli-huge, model: m, gpus: 1000}\n"
    )
    code, out, _ = run(
        capsys, "demo", "--deployments", str(deployments), "--address", ray_cluster.address
    )
    assert code == cli.EXIT_OK
    row = next(line for line in out.splitlines() if "cli-tp2" in line)
    assert re.search(r"\d+\.\d+\.\d+\.\d+:\d+", row)  # the master address and port
    assert "cli-huge did not fit" in out
    assert "placement groups left alive: 0" in out
    del ray_nodes  # its teardown asserts that no group is left alive


def test_place_exits_with_no_capacity_when_a_deployment_does_not_fit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, _ = run(
        capsys,
        "place",
        str(EXAMPLES / "deployments.yaml"),
        "--cluster",
        str(EXAMPLES / "cluster.yaml"),
    )
    assert code == cli.EXIT_NO_CAPACITY


def test_keys_that_are_not_set_are_named_in_one_line_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-set")
    code, _, err = run(capsys, *PLACE)
    assert code == cli.EXIT_NO_CAPACITY
    assert err == "not set: OPENAI_API_KEY; placed without an API key: gpt-4o, gpt-4o-mini\n"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-set")
    assert run(capsys, *PLACE)[2] == ""  # every key set: nothing to say


def test_demo_with_an_invalid_file_exits_before_starting_ray(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    deployments = tmp_path / "d.yaml"
    deployments.write_text("deployments:\n  - {name: x, model: m, gpus: 0}\n")
    code, out, err = run(capsys, "demo", "--deployments", str(deployments))
    assert code == cli.EXIT_INVALID_SPEC
    assert "d.yaml:2: gpus: must be ≥ 1" in err
    assert "Ray" not in out


def test_an_unreachable_cluster_is_a_backend_failure(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "demo", "--deployments", str(EXAMPLES / "deployments.yaml"), "--address", "x:1"
    )
    assert code == cli.EXIT_BACKEND
    assert "cluster backend failed" in err


class Quiet(http.server.BaseHTTPRequestHandler):
    """A web server's handler that logs nothing (it answers every GET with a 404)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        del format, args


def test_an_address_where_another_server_answers_fails_at_once_instead_of_waiting_for_ray() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        done = subprocess.run(  # noqa: S603 - this interpreter running the command line
            [sys.executable, "-m", "placement_actors", "status", "--address", address],
            capture_output=True,
            text=True,
            timeout=60,  # Ray itself would wait for ever
            check=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == cli.EXIT_BACKEND
    assert done.stdout == ""
    assert done.stderr.startswith(
        f"cluster backend failed: something answers at {address}, but not as a Ray cluster's GCS"
    )
    assert len(done.stderr.splitlines()) == 1


def test_place_exits_zero_when_everything_fits(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    deployments = tmp_path / "d.yaml"
    deployments.write_text("deployments:\n  - {name: small, model: m, gpus: 2}\n")
    code, out, _ = run(
        capsys, "place", str(deployments), "--cluster", str(EXAMPLES / "cluster.yaml")
    )
    assert code == cli.EXIT_OK
    assert "small" in out


def test_an_invalid_file_exits_with_invalid_spec_and_names_the_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    deployments = tmp_path / "d.yaml"
    deployments.write_text("deployments:\n  - name: x\n    model: m\n    replicas: 0\n")
    code, out, err = run(
        capsys, "place", str(deployments), "--cluster", str(EXAMPLES / "cluster.yaml")
    )
    assert code == cli.EXIT_INVALID_SPEC
    assert "d.yaml:4: replicas: must be ≥ 1" in err
    assert out == ""


def test_a_usage_error_exits_two_with_one_line_that_points_to_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "place")
    assert code == cli.EXIT_USAGE == 2
    assert out == ""
    assert err == (
        "usage error: the following arguments are required: file "
        "(see `placement-actors place --help`)\n"
    )


def test_place_on_a_file_speaks_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "place",
        str(EXAMPLES / "deployments.yaml"),
        "--cluster",
        str(EXAMPLES / "cluster.yaml"),
        "--json",
    )
    data = json.loads(out)
    assert code == cli.EXIT_NO_CAPACITY
    assert [d["deployment"] for d in data["did_not_fit"]] == ["llama-405b"]
    # Largest replicas first: llama-70b (8 GPUs) gets gpu-c whole before the small ones come.
    large = next(p for p in data["placed"] if p["deployment"] == "llama-70b")
    assert [n["name"] for n in large["replicas"][0]["nodes"]] == ["gpu-c"]
    assert {n["name"] for n in data["cluster"]["nodes"]} >= {"gpu-a", "gpu-b", "gpu-c"}


def test_demo_speaks_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, ray_cluster: Any, ray_nodes: dict[str, str]
) -> None:
    deployments = tmp_path / "d.yaml"
    deployments.write_text("deployments:\n  - {name: cli-json, model: m, gpus: 2}\n")
    code, out, _ = run(
        capsys,
        "demo",
        "--deployments",
        str(deployments),
        "--address",
        ray_cluster.address,
        "--json",
    )
    data = json.loads(out)
    assert code == cli.EXIT_OK
    assert data["groups_left_alive"] == 0
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+:\d+", data["placed"][0]["replicas"][0]["master"])
    del ray_nodes


def test_demo_json_on_the_embedded_cluster_prints_its_moves_in_the_one_object(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ray_nodes: dict[str, str],
) -> None:
    """On the embedded cluster a node leaves: its moves are data, not a table above the JSON."""
    deployments = tmp_path / "d.yaml"
    deployments.write_text("deployments:\n  - {name: cli-moves, model: m, gpus: 1}\n")
    row = {
        "deployment": "cli-moves",
        "replica": 0,
        "from": ray_nodes["gpu-a"],
        "from_name": "gpu-a",
        "to": [ray_nodes["gpu-b"]],
        "to_names": ["gpu-b"],
        "gpus": [[0]],
        "master": "10.0.0.1:5000",
    }

    @contextlib.contextmanager
    def embedded(address: str | None, out: Any) -> Iterator[Any]:
        del address, out
        yield object()  # the session's cluster stands in for a new one (connected already)

    monkeypatch.setattr(commands, "_ray_cluster", embedded)
    monkeypatch.setattr(commands, "_a_node_leaves", lambda *_, **__: [row])
    monkeypatch.setattr(
        commands,
        "_the_service_restarts",
        lambda ref, **_: (ref, {"seconds": 0.1, "recovered": 1, "masters_unchanged": True}),
    )
    code, out, _ = run(capsys, "--json", "demo", "--deployments", str(deployments))
    assert code == cli.EXIT_OK
    data = json.loads(out)  # the one object, nothing before it
    assert data["moved"] == [row]
    assert data["groups_left_alive"] == 0
    code, out, _ = run(capsys, "demo", "--deployments", str(deployments))
    assert code == cli.EXIT_OK
    assert "Moved when a node left" in out
    assert "gpu-a left the cluster" in out
    table_row = next(line for line in out.splitlines() if "cli-moves" in line and "gpu-b" in line)
    assert "10.0.0.1:5000" in table_row


# -- every input: a result or one typed error, never a traceback ---------------------------------

PLACE = ("place", str(EXAMPLES / "deployments.yaml"), "--cluster", str(EXAMPLES / "cluster.yaml"))
PLAN = ("plan", "--tp", "4", "--cluster", str(EXAMPLES / "cluster.yaml"))


def cluster_file(tmp_path: Path, *nodes: tuple[str, int]) -> Path:
    """A cluster file of ``(id, gpus)`` nodes; ids are quoted (JSON is YAML) whatever they hold."""
    path = tmp_path / "cluster.yaml"
    lines = [f"  - {{id: {json.dumps(node)}, gpus: {gpus}}}" for node, gpus in nodes]
    path.write_text(
        "nodes:\n  - {id: head, gpus: 0, head: true, egress: true}\n" + "\n".join(lines)
    )
    return path


def fits_and_huge(tmp_path: Path) -> Path:
    path = tmp_path / "d.yaml"
    path.write_text(
        "deployments:\n  - {name: fits, model: m, gpus: 2}\n  - {name: huge, model: m, gpus: 64}\n"
    )
    return path


@pytest.mark.parametrize(
    "flags",
    [("--json",), ("-v",), ("--verbose",), ("--json", "-v")],
    ids=["json", "v", "verbose", "json-and-v"],
)
@pytest.mark.parametrize("command", [PLACE, PLAN], ids=["place", "plan"])
def test_global_flags_give_the_same_output_before_and_after_the_command(
    capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], command: tuple[str, ...]
) -> None:
    before = run(capsys, *flags, *command)
    after = run(capsys, *command, *flags)
    split = run(capsys, flags[-1], *command, *flags[:-1])
    assert before[:2] == after[:2] == split[:2]  # exit code and standard output
    for _, out, err in (before, after, split):
        if "--json" in flags:
            assert json.loads(out)["exit_code"] == before[0]
        else:
            assert out.startswith(("Replicas", "Replica of TP size 4"))
        assert "Traceback" not in out + err  # -v shows tracebacks of unexpected failures only


MARKUP_IDS = ["[/]", "[blink red]gpu-a", "[link=x]y[/link]", "[bold]", "a\\[b]", "x\\"]


@pytest.mark.parametrize("node_id", MARKUP_IDS, ids=MARKUP_IDS)
def test_rich_markup_in_a_node_id_is_printed_literally_and_does_not_crash(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, node_id: str
) -> None:
    cluster = cluster_file(tmp_path, (node_id, 4))
    code, out, err = run(capsys, "place", str(fits_and_huge(tmp_path)), "--cluster", str(cluster))
    assert code == cli.EXIT_NO_CAPACITY
    assert "Traceback" not in out + err
    lines = out.splitlines()
    assert any(line.startswith("│ fits ") and f" {node_id} " in line for line in lines)  # Replicas
    assert any(line.startswith(f"│ {node_id} ") and " 2/4 " in line for line in lines)  # Nodes
    assert f"  {node_id}: has 4 GPUs in all; a whole replica needs 64" in lines  # did not fit


@pytest.mark.parametrize("node_id", MARKUP_IDS, ids=MARKUP_IDS)
def test_rich_markup_in_a_node_id_is_kept_in_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, node_id: str
) -> None:
    cluster = cluster_file(tmp_path, (node_id, 4))
    code, out, _ = run(
        capsys, "--json", "place", str(fits_and_huge(tmp_path)), "--cluster", str(cluster)
    )
    data = json.loads(out)
    assert code == data["exit_code"] == cli.EXIT_NO_CAPACITY
    assert data["placed"][0]["replicas"][0]["nodes"][0]["node"] == node_id
    assert node_id in [r["node"] for r in data["did_not_fit"][0]["rejections"]]


def test_a_sixty_character_node_id_appears_whole_in_every_table_and_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    node_id = "node-" + "0123456789abcdef" * 3 + "0123456"  # 5 + 48 + 7 = 60 characters
    assert len(node_id) == 60
    cluster = cluster_file(tmp_path, (node_id, 4))
    code, out, _ = run(capsys, "place", str(fits_and_huge(tmp_path)), "--cluster", str(cluster))
    assert code == cli.EXIT_NO_CAPACITY
    # one replica row, one node row, one reason: all whole, nothing cut, no ellipsis
    assert out.count(node_id) == 3
    assert f"  {node_id}: has 4 GPUs in all; a whole replica needs 64" in out.splitlines()
    assert "…" not in out


def test_a_node_id_wider_than_the_table_wraps_but_is_never_cut(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    node_id = "n" + "0123456789" * 20  # 201 characters: wider than the 120-column table
    cluster = cluster_file(tmp_path, (node_id, 4))
    code, out, _ = run(capsys, "place", str(fits_and_huge(tmp_path)), "--cluster", str(cluster))
    assert code == cli.EXIT_NO_CAPACITY
    assert "…" not in out
    # A folded cell continues on the next lines of its column: read the column top to bottom.
    assert column(out, "Replicas", 4) == f"node(s){node_id}"
    assert column(out, "Nodes", 1) == f"nodehead (head){node_id}"
    assert f"  {node_id}: has 4 GPUs in all" in out  # the reason is one unwrapped line


def column(out: str, title: str, index: int) -> str:
    """The cells of one column of the table titled ``title``, joined without their spaces."""
    lines = out.splitlines()
    start = lines.index(next(line for line in lines if line.startswith(title)))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("└"))
    rows = [re.split("[│┃]", line) for line in lines[start:end]]
    return "".join(row[index].strip() for row in rows if len(row) > index)


def boom(*args: object, **kwargs: object) -> None:
    del args, kwargs
    msg = "boom [/] at [bold]x"
    raise RuntimeError(msg)


def interrupt(*args: object, **kwargs: object) -> None:
    del args, kwargs
    raise KeyboardInterrupt


def no_file(tmp_path: Path) -> tuple[str, ...]:
    return ("place", str(tmp_path / "[/]missing.yaml"), "--cluster", str(EXAMPLES / "cluster.yaml"))


def invalid_file(tmp_path: Path) -> tuple[str, ...]:
    path = tmp_path / "d.yaml"
    path.write_text("deployments:\n  - name: x\n    model: m\n    replicas: 0\n")
    return ("place", str(path), "--cluster", str(EXAMPLES / "cluster.yaml"))


def unknown_node(tmp_path: Path) -> tuple[str, ...]:
    path = tmp_path / "d.yaml"
    path.write_text("deployments:\n  - {name: x, model: m, gpu_nodes: [gpu-z]}\n")
    return ("place", str(path), "--cluster", str(EXAMPLES / "cluster.yaml"))


FAILURES = [
    # (id, argv from tmp_path, a command to replace, exit code, error type, stderr line starts)
    ("usage", lambda _: ("place",), None, 2, "UsageError", "usage error: the following"),
    ("no-command", lambda _: (), None, 2, "UsageError", "usage error: the following"),
    ("bad-choice", lambda _: ("nope",), None, 2, "UsageError", "usage error: argument COMMAND"),
    ("bad-int", lambda _: ("plan", "--tp", "[/]"), None, 2, "UsageError", "usage error: argument"),
    ("bad-timeout", lambda _: (*PLACE, "--ready-timeout", "nan"), None, 2, "UsageError", "usage"),
    ("no-address", lambda _: ("why", "x"), None, 2, "UsageError", "usage error: why needs"),
    ("missing-file", no_file, None, 3, "ConfigFileError", "invalid spec: "),
    ("invalid-file", invalid_file, None, 3, "ConfigFileError", "invalid spec: "),
    ("unknown-node", unknown_node, None, 3, "ConfigFileError", "invalid spec: "),
    ("capacity", lambda _: PLACE, None, 4, "NotEnoughGpusError", None),
    (
        "plan-capacity",
        lambda _: (*PLAN[:2], "16", *PLAN[3:]),
        None,
        4,
        "NotEnoughGpusError",
        "does",
    ),
    ("unexpected", lambda _: PLAN, boom, 1, "RuntimeError", "unexpected failure: RuntimeError: "),
    ("interrupted", lambda _: PLAN, interrupt, 130, "KeyboardInterrupt", "interrupted"),
]


@pytest.fixture(params=FAILURES, ids=[f[0] for f in FAILURES])
def failure(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[tuple[str, ...], int, str, str | None]:
    _, argv, replacement, code, error, line = request.param
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for variable in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):  # the example file's keys: set
        monkeypatch.setenv(variable, "sk-test-key")
    if replacement is not None:
        monkeypatch.setattr(commands, "load_cluster", replacement)
    return argv(tmp_path), code, error, line


def test_with_json_every_failure_is_one_json_object_with_its_exit_code(
    capsys: pytest.CaptureFixture[str], failure: tuple[tuple[str, ...], int, str, str | None]
) -> None:
    argv, expected, error, _ = failure
    code, out, err = run(capsys, "--json", *argv)
    data = json.loads(out)  # one document, nothing else on standard output
    assert code == expected == data["exit_code"]
    assert data["error"] == error
    assert isinstance(data["message"], str)
    assert data["message"]
    assert "Traceback" not in out + err


def test_without_json_every_failure_is_one_line_on_stderr_without_a_traceback(
    capsys: pytest.CaptureFixture[str], failure: tuple[tuple[str, ...], int, str, str | None]
) -> None:
    argv, expected, _, line = failure
    code, out, err = run(capsys, *argv)
    assert code == expected
    assert "Traceback" not in out + err
    if line is None:  # a placement that did not fit reports on standard output, as data
        assert "did not fit" in out
        assert err == ""
        return
    assert out == ""
    assert err.startswith(line)
    _, *more = err.splitlines()
    if "ConfigFileError" in str(failure):  # a file error has one line per problem
        return
    if expected == cli.EXIT_NO_CAPACITY:  # then one indented line per node and its reason
        assert more
        assert all(m.startswith("  ") and ": " in m for m in more)
    else:
        assert more == []


def test_the_message_of_an_error_is_printed_literally(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, _, err = run(capsys, *no_file(tmp_path))
    assert "[/]missing.yaml: cannot read" in err
    monkeypatch.setattr(commands, "load_cluster", boom)
    _, _, err = run(capsys, *PLAN)
    assert err == "unexpected failure: RuntimeError: boom [/] at [bold]x\n"


def test_a_file_error_in_json_lists_each_problem_with_its_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "--json", *invalid_file(tmp_path))
    data = json.loads(out)
    assert code == data["exit_code"] == cli.EXIT_INVALID_SPEC
    assert data["problems"] == [
        {"file": str(tmp_path / "d.yaml"), "line": 4, "field": "replicas", "problem": "must be ≥ 1"}
    ]


def test_an_unknown_gpu_node_is_a_problem_of_the_deployments_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, *unknown_node(tmp_path))
    assert code == cli.EXIT_INVALID_SPEC
    assert "d.yaml:2: gpu_nodes: unknown node 'gpu-z'" in err


@pytest.mark.parametrize(
    "verbose",
    [("-v", *PLAN), (*PLAN, "-v"), ("--verbose", *PLAN), ("--json", *PLAN, "--verbose")],
    ids=["v-before", "v-after", "verbose-before", "verbose-after-with-json"],
)
def test_an_unexpected_failure_shows_its_traceback_only_with_verbose(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, verbose: tuple[str, ...]
) -> None:
    monkeypatch.setattr(commands, "load_cluster", boom)
    code, _, err = run(capsys, *PLAN)
    assert code == cli.EXIT_UNEXPECTED
    assert "Traceback" not in err
    code, out, err = run(capsys, *verbose)
    assert code == cli.EXIT_UNEXPECTED
    assert "Traceback" in err
    assert "RuntimeError: boom [/] at [bold]x" in err
    if "--json" in verbose:
        assert json.loads(out)["error"] == "RuntimeError"
    else:
        assert err.rstrip().endswith("unexpected failure: RuntimeError: boom [/] at [bold]x")


@pytest.mark.parametrize(
    "argv",
    [("--help",), ("place", "--help"), ("--json", "plan", "-h"), ("status", "--help", "--json")],
    ids=["top", "place", "json-plan", "status-json"],
)
def test_help_prints_the_help_and_exits_zero(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == cli.EXIT_OK
    assert out.startswith("usage: placement-actors")
    assert "--json" in out
    assert err == ""


@pytest.mark.parametrize(
    "value", ["0", "-1", "nan", "inf", "86401", "soon"], ids=lambda v: f"timeout-{v}"
)
def test_a_ready_timeout_that_is_not_a_positive_number_of_seconds_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    code, _, err = run(capsys, *PLACE, "--ready-timeout", value)
    assert code == cli.EXIT_USAGE
    assert err.startswith("usage error: argument --ready-timeout:")


@pytest.mark.parametrize("command", [PLACE, PLAN], ids=["place", "plan"])
def test_an_address_and_a_cluster_file_together_are_a_usage_error(
    capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    code, out, err = run(capsys, *command, "--address", "10.0.0.1:6379")
    assert code == cli.EXIT_USAGE  # which one would be used is not obvious: neither is
    assert out == ""
    assert err.startswith("usage error: argument --address: not allowed with argument --cluster")


def test_flags_after_a_double_dash_are_arguments_not_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, *PLACE, "--", "--json")
    assert code == cli.EXIT_USAGE
    assert out == ""  # not JSON: --json after -- is no flag
    assert err.startswith("usage error: unrecognized arguments: -- --json")


@pytest.mark.parametrize("name", MARKUP_IDS, ids=MARKUP_IDS)
def test_rich_markup_in_a_node_name_from_ray_labels_is_printed_literally(name: str) -> None:
    node_id = "f" * 56  # a Ray node id: its name comes from a label, which anyone may set
    view = ClusterView(
        nodes=(
            NodeView(
                node_id=node_id,
                capacity=2,
                free_gpus=(0, 1),
                held=(),
                is_head=False,
                egress=False,
                remote_replicas=0,
            ),
        ),
        deployments=(),
    )
    error = NotEnoughGpusError(
        "deployment d needs 4 free GPUs",
        deployment="d",
        requested=4,
        available=2,
        largest_node=2,
        rejections=(
            Rejection(node_id=node_id, reason="2 free GPUs, 4 needed", requested=4, available=2),
        ),
        refusing_by_free=((2, 1),),
    )
    printed = io.StringIO()
    console = Console(file=printed, width=120)
    data = render.view_data(view, {node_id: name})
    render.print_cluster(console, data)
    render.print_occupancy(console, data)
    render.print_failure(console, render.failure_data(error, {node_id: name}))
    lines = printed.getvalue().splitlines()
    assert any(line.startswith(f"│ {name} ") for line in lines)  # the Nodes table
    assert any(line.startswith(f"{name}  □ □") for line in lines)  # the occupancy picture
    assert f"  {name}: 2 free GPUs, 4 needed" in lines  # the reason
    assert not any("more nodes" in line or "by free GPUs" in line for line in lines)  # all named


def test_why_on_a_large_cluster_counts_the_nodes_it_does_not_name() -> None:
    error = NotEnoughGpusError(
        "deployment d needs 8 free GPUs",
        deployment="d",
        requested=8,
        available=4,
        largest_node=8,
        rejections=(
            Rejection(node_id="n0", reason="4 of 8 GPUs free, 8 needed", requested=8, available=4),
        ),
        rejections_omitted=5_999,
        refusing_by_free=((0, 1_000), (4, 5_000)),
    )
    printed = io.StringIO()
    render.print_failure(Console(file=printed, width=120), render.failure_data(error, {}))
    lines = printed.getvalue().splitlines()
    assert "  ... and 5,999 more nodes" in lines
    assert "Nodes that turned it down, by free GPUs: 1,000 with 0 free, 5,000 with 4 free" in lines


def lost_and_outside_view() -> ClusterView:
    return ClusterView(
        nodes=(
            NodeView(
                node_id="gpu-a",
                capacity=4,
                free_gpus=(3,),
                held=(GpuHolding(ordinal=0, deployment="kept"),),
                is_head=False,
                egress=False,
                remote_replicas=0,
                outside=2,  # ordinals 1 and 2: neither free nor held by a deployment
            ),
            NodeView(
                node_id="gpu-gone",
                capacity=0,
                free_gpus=(),
                held=(),
                is_head=False,
                egress=False,
                remote_replicas=0,
                state=NodeState.LOST,
            ),
        ),
        deployments=("kept",),
        degraded=("kept",),
    )


def test_status_data_has_each_nodes_state_its_outside_gpus_and_the_degraded_deployments() -> None:
    data = render.view_data(lost_and_outside_view(), {})
    assert [(n["node"], n["state"], n["outside"]) for n in data["nodes"]] == [
        ("gpu-a", "alive", 2),
        ("gpu-gone", "lost", 0),
    ]
    assert data["degraded"] == ["kept"]


def test_status_tables_show_lost_nodes_outside_gpus_and_degraded_deployments() -> None:
    printed = io.StringIO()
    console = Console(file=printed, width=120)
    data = render.view_data(lost_and_outside_view(), {})
    render.print_cluster(console, data)
    render.print_occupancy(console, data)
    text = printed.getvalue()
    header = next(line for line in text.splitlines() if "free GPUs" in line)
    assert re.findall(r"\w[\w ]*\w", header) == [
        "node",
        "state",
        "free GPUs",
        "held by",
        "outside",
        "egress",
        "remote",
    ]
    assert re.search(r"│ gpu-gone +│ lost +│ - ", text)
    assert re.search(r"│ gpu-a +│ alive +│ 1/4 +│ kept \[0\] +│ 2 ", text)
    assert "Degraded (replicas missing): kept" in text
    # Held by kept (its letter: no colours in a file), outside, outside, free.
    assert re.search(r"^gpu-a +A ▣ ▣ □ $", text, re.MULTILINE)
    assert "A kept" in text  # the legend names the letter's holder
    assert "▣ outside the service" in text


def test_letters_go_to_the_deployments_that_hold_gpus_only() -> None:
    printed = io.StringIO()
    view = dataclasses.replace(lost_and_outside_view(), deployments=("an-api", "kept"))
    render.print_occupancy(Console(file=printed, width=120), render.view_data(view, {}))
    text = printed.getvalue()
    assert re.search(r"^gpu-a +A ▣ ▣ □ $", text, re.MULTILINE)  # not B: the remote one holds none
    assert "A kept" in text
    assert "an-api" not in text


def test_in_colour_each_holders_gpus_are_squares_of_its_colour() -> None:
    printed = io.StringIO()
    console = Console(file=printed, width=120, force_terminal=True, color_system="truecolor")
    render.print_occupancy(console, render.view_data(lost_and_outside_view(), {}))
    text = re.sub(r"\x1b\[[0-9;]*m", "", printed.getvalue())  # the colours taken off
    assert re.search(r"^gpu-a +■ ▣ ▣ □ $", text, re.MULTILINE)
    assert "■ kept" in text
    assert "\x1b[" in printed.getvalue()  # coloured indeed


def test_with_no_color_on_a_terminal_each_holders_gpus_carry_its_letter() -> None:
    printed = io.StringIO()
    console = Console(file=printed, width=120, force_terminal=True, no_color=True)
    render.print_occupancy(console, render.view_data(lost_and_outside_view(), {}))
    text = re.sub(r"\x1b\[[0-9;]*m", "", printed.getvalue())
    assert re.search(r"^gpu-a +A ▣ ▣ □ $", text, re.MULTILINE)


def test_status_shows_no_outside_column_when_no_node_has_outside_gpus() -> None:
    view = dataclasses.replace(
        lost_and_outside_view(),
        nodes=(dataclasses.replace(lost_and_outside_view().nodes[0], outside=0),),
        degraded=(),
    )
    printed = io.StringIO()
    render.print_cluster(Console(file=printed, width=120), render.view_data(view, {}))
    assert "outside" not in printed.getvalue()
    assert "Degraded" not in printed.getvalue()


def test_status_shows_gpus_others_took_from_under_the_services_waiting_groups() -> None:
    waiting = dataclasses.replace(
        lost_and_outside_view().nodes[0],
        free_gpus=(),
        held=(GpuHolding(ordinal=0, deployment="kept"), GpuHolding(ordinal=3, deployment="late")),
        outside=0,
        outside_waiting=1,
    )
    view = dataclasses.replace(lost_and_outside_view(), nodes=(waiting,), degraded=())
    data = render.view_data(view, {})
    assert data["nodes"][0]["outside_waiting"] == 1
    printed = io.StringIO()
    render.print_cluster(Console(file=printed, width=120), data)
    assert re.search(r"│ gpu-a +│ alive +│ 0/4 +│ .* +│ 0 \+1 waiting ", printed.getvalue())


AT = 1_763_800_000.25  # 2025-11-22T08:26:40.250+00:00
REPLACED = ReplicaReplaced(
    deployment="llama",
    replica_index=1,
    placement=None,
    assignments=(NodeAssignment(replica_index=1, node="gpu-b", gpus=(0, 1, 2)),),
)


@pytest.mark.parametrize(
    ("event", "fields", "text"),
    [
        (
            NodeJoined(node=NodeTopology(node_id="n-1", num_gpus=8), egress=True),
            {"kind": "node_joined", "node": "n-1", "name": "gpu-new", "gpus": 8, "egress": True},
            "node joined: gpu-new (8 GPUs, egress)",
        ),
        (
            NodeLost(node_id="n-1"),
            {"kind": "node_lost", "node": "n-1", "name": "gpu-new"},
            "node lost: gpu-new",
        ),
        (
            ReplicaLost(deployment="llama", replica_index=1, node_id=None, will_replace=False),
            {"kind": "replica_lost", "deployment": "llama", "replica": 1, "node": None},
            (
                "replica lost: llama #1 (Ray rescheduled its group); "
                "not placed again (its Place turned replace_lost off)"
            ),
        ),
        (
            REPLACED,
            {
                "kind": "replica_replaced",
                "group": None,
                "nodes": [{"node": "gpu-b", "name": "gpu-b", "gpus": [0, 1, 2]}],
            },
            "replica placed again: llama #1 on gpu-b (GPUs 0-2)",
        ),
        (
            ReplicaMoved(
                deployment="llama",
                replica_index=0,
                from_node="n-1",
                to_node="gpu-c",
                placement=None,
                assignments=(NodeAssignment(replica_index=0, node="gpu-c", gpus=(4, 5)),),
            ),
            {"kind": "replica_moved", "from_name": "gpu-new", "name": "gpu-c", "gpus": [4, 5]},
            "replica moved: llama #0 from gpu-new to gpu-c (GPUs 4,5)",
        ),
        (
            EventsMissed(after=3, missed=12),
            {"kind": "events_missed", "after": 3, "missed": 12},
            "events missed: 12 (this watch fell behind the service's buffer)",
        ),
        (
            EventsMissed(after=3, missed=None),
            {"kind": "events_missed", "missed": None},
            "events missed: the service started again; its earlier events are gone",
        ),
    ],
    ids=["joined", "lost", "replica-lost", "replaced", "moved", "fell-behind", "restarted"],
)
def test_each_event_is_one_json_object_and_one_readable_line(
    event: object, fields: dict[str, Any], text: str
) -> None:
    data = render.event_data(ServiceEvent(sequence=7, at=AT, event=event), {"n-1": "gpu-new"})
    assert data["sequence"] == 7
    assert data["time"] == "2025-11-22T08:26:40.250+00:00"
    assert fields.items() <= data.items()
    assert json.loads(json.dumps(data)) == data
    line = render.event_line(data)
    assert line.endswith(f"  #7  {text}")
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.250  ", line)  # local time


class _InterruptedClient:
    """Yields one event, then the user presses Ctrl-C."""

    def watch(self, after: int | None, *, timeout_s: float | None) -> Iterator[ServiceEvent]:
        del after, timeout_s
        yield ServiceEvent(sequence=1, at=AT, event=NodeLost(node_id="n-1"))
        raise KeyboardInterrupt


def test_watch_json_stops_on_ctrl_c_with_only_event_lines_on_stdout(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "_client", lambda _: _InterruptedClient())
    monkeypatch.setattr(commands, "_node_names", lambda _: {})
    code, out, err = run(capsys, "watch", "--address", "ray://nowhere:1", "--json")
    assert code == cli.EXIT_INTERRUPTED
    assert [json.loads(line)["kind"] for line in out.splitlines()] == ["node_lost"]
    assert err == "interrupted\n"


def no_service(_: str) -> Any:
    msg = "no placement service runs on this cluster; start one with placement-actors serve"
    raise BackendError(msg, operation="connect")


def test_watch_json_that_cannot_reach_the_service_prints_its_error_object_on_stdout(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the stream runs, an error is reported as for every command: one JSON object."""
    monkeypatch.setattr(commands, "_client", no_service)
    code, out, err = run(capsys, "watch", "--address", "ray://nowhere:1", "--json")
    assert code == cli.EXIT_BACKEND
    report = json.loads(out)
    assert report["error"] == "BackendError"
    assert report["message"].startswith("no placement service runs on this cluster")
    assert report["exit_code"] == cli.EXIT_BACKEND
    assert "no placement service" not in err


@contextlib.contextmanager
def cluster_that_does_not_start(address: str | None, out: Any) -> Iterator[Any]:
    del address, out
    msg = "the local Ray cluster did not start: raylet exited"
    raise BackendError(msg, operation="start cluster")
    yield  # pragma: no cover - a generator that never gets this far


def test_a_sandbox_json_that_cannot_start_prints_its_error_object_on_stdout(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "_ray_cluster", cluster_that_does_not_start)
    code, out, _ = run(capsys, "--json", "sandbox")
    assert code == cli.EXIT_BACKEND
    report = json.loads(out)
    assert (report["error"], report["exit_code"]) == ("BackendError", cli.EXIT_BACKEND)
    assert "did not start" in report["message"]


@pytest.mark.parametrize(
    "argv",
    [("--count", "0"), ("--after", "-1"), ("--after", "2", "--new"), ("--timeout", "0")],
    ids=["no-count", "negative-after", "after-and-new", "no-timeout"],
)
def test_watch_refuses_malformed_options_as_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, out, err = run(capsys, "watch", "--address", "ray://nowhere:1", *argv)
    assert code == cli.EXIT_USAGE
    assert out == ""
    assert err.startswith("usage error: ")


def test_place_keeps_a_deployment_on_the_nodes_its_label_selector_picks_in_the_cluster_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    deployments = tmp_path / "zoned.yaml"
    deployments.write_text(
        "deployments:\n"
        "  - {name: zoned, model: meta-llama/x, gpus: 4, replicas: 3,"
        " label_selector: {zone: b}}\n",
        encoding="utf-8",
    )
    code, out, _ = run(
        capsys, "--json", "place", str(deployments), "--cluster", str(EXAMPLES / "cluster.yaml")
    )
    assert code == 0
    (placed,) = json.loads(out)["placed"]
    nodes = [n["node"] for replica in placed["replicas"] for n in replica["nodes"]]
    assert sorted(nodes) == ["gpu-b", "gpu-c", "gpu-c"]  # zone b; gpu-a is in zone a


def test_status_shows_the_labels_a_selector_can_use_and_not_the_services_own() -> None:
    labelled = dataclasses.replace(
        lost_and_outside_view().nodes[0],
        labels={"zone": "east", "gpu-type": "H100", "placement-actors.io/name": "gpu-a"},
    )
    view = dataclasses.replace(lost_and_outside_view(), nodes=(labelled,))
    data = render.view_data(view, {})
    assert data["nodes"][0]["labels"]["zone"] == "east"  # --json keeps every label
    printed = io.StringIO()
    render.print_cluster(Console(file=printed, width=160), data)
    text = printed.getvalue()
    assert re.search(r"│ gpu-type=H100, zone=east +│", text)
    assert "placement-actors.io/name" not in text
    unlabelled = dataclasses.replace(view, nodes=(dataclasses.replace(labelled, labels={}),))
    printed = io.StringIO()
    render.print_cluster(Console(file=printed, width=160), render.view_data(unlabelled, {}))
    assert "labels" not in printed.getvalue()


def test_a_replica_not_placed_now_is_shown_so_in_the_replicas_table() -> None:
    result = PlacementResult(
        deployment=Deployment(name="half", model="m", gpus=1, replicas=2),
        assignments=(NodeAssignment(replica_index=0, node="n1", gpus=(3,)),),  # 1 was lost
    )
    data = render.result_data(result, {"n1": "gpu-a"}, {})
    printed = io.StringIO()
    render.print_replicas(Console(file=printed, width=120), [data], masters=True)
    lines = [line for line in printed.getvalue().splitlines() if "half" in line]
    assert "gpu-a" in lines[0]
    assert "not placed now" not in lines[0]
    assert "not placed now" in lines[1]
    assert data["replicas"][1]["nodes"] == []


def test_an_api_key_variable_that_is_not_utf8_is_a_problem_of_the_file_never_shown(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ODD_KEY", "sk-SECRET\udcffTAIL")  # an undecodable byte, as Python reads it
    deployments = tmp_path / "d.yaml"
    deployments.write_text("deployments:\n  - {name: api, model: gpt-4o, api_key_env: ODD_KEY}\n")
    code, out, err = run(
        capsys, "place", str(deployments), "--cluster", str(EXAMPLES / "cluster.yaml")
    )
    assert code == cli.EXIT_INVALID_SPEC
    assert "d.yaml:2: api_key_env: the value of ODD_KEY is not UTF-8 text" in err
    assert "SECRET" not in out + err


def test_place_on_a_cluster_file_keeps_replicas_off_heads_as_the_service_would(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PLACEMENT_ACTORS_IGNORE_HEAD_NODE", "1")
    cluster = tmp_path / "c.yaml"
    cluster.write_text("nodes:\n  - {id: h, gpus: 8, head: true}\n  - {id: w, gpus: 4}\n")
    deployments = tmp_path / "d.yaml"
    deployments.write_text("deployments:\n  - {name: big, model: m, gpus: 8}\n")
    code, out, _ = run(capsys, "place", str(deployments), "--cluster", str(cluster))
    assert code == cli.EXIT_NO_CAPACITY
    assert "h: is a head node (head exclusion is on)" in out


@pytest.mark.parametrize(
    "command",
    [("plan", "--tp", "8"), ("place", str(EXAMPLES / "deployments.yaml"))],
    ids=["plan", "place"],
)
def test_without_a_cluster_file_or_an_address_nothing_is_made_up(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: tuple[str, ...],
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, out, err = run(capsys, *command)
    assert code == cli.EXIT_USAGE
    assert out == ""
    assert "needs --cluster FILE" in err
    assert "--address ADDR" in err
    assert "Local Ray cluster" not in err  # no demo cluster started behind the user's back


def test_the_address_help_of_place_and_plan_says_a_cluster_file_will_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for command in ("place", "plan"):
        code, out, _ = run(capsys, command, "--help")
        assert code == cli.EXIT_OK
        assert "needed unless --cluster is given" in " ".join(out.split())
        assert "local cluster is started" not in " ".join(out.split())


def test_a_shape_no_node_or_split_holds_names_each_nodes_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan = ("plan", "--tp", "16", "--cluster", str(EXAMPLES / "cluster.yaml"))
    code, out, err = run(capsys, *plan)
    assert code == cli.EXIT_NO_CAPACITY
    assert out == ""
    assert "  gpu-c: has 8 GPUs in all; a whole replica needs 16" in err.splitlines()
    code, out, _ = run(capsys, "--json", *plan)
    data = json.loads(out)
    assert code == data["exit_code"] == cli.EXIT_NO_CAPACITY
    assert "deployment" not in data  # a shape is no deployment's
    assert {r["name"]: r["available"] for r in data["rejections"]} == {
        "edge-1": 0,
        "gpu-a": 4,
        "gpu-b": 4,
        "gpu-c": 8,
        "head": 0,
    }


@pytest.mark.parametrize(
    ("text", "names", "named"),
    [
        ("on abcdef and abc", {"abc": "gpu-1", "abcdef": "gpu-2"}, "on gpu-2 and gpu-1"),
        ("n2 then n3", {"n2": "n3", "n3": "n4"}, "n3 then n4"),  # one pass, no chains
        ("node n10 is not n1", {"n1": "gpu-1"}, "node n10 is not gpu-1"),  # whole ids only
        ("runs on x already", {"y": "gpu-y"}, "runs on x already"),
        ("on abc: 0 free, or on abc.", {"abc": "gpu-a"}, "on gpu-a: 0 free, or on gpu-a."),
        ("n1.5 and n1:x", {"n1": "gpu-1"}, "n1.5 and n1:x"),  # parts of longer words
    ],
    ids=["longest-first", "no-chain", "whole-ids", "none", "punctuation", "inside-words"],
)
def test_an_error_line_names_nodes_by_their_names_in_one_pass(
    text: str, names: dict[str, str], named: str
) -> None:
    assert render.named(text, names) == named


def test_a_refusal_over_more_nodes_than_it_lists_says_how_many_more(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cluster = tmp_path / "wide.yaml"
    cluster.write_text(
        "nodes:\n" + "".join(f"  - {{id: n{i:02d}, gpus: 2}}\n" for i in range(30)),
        encoding="utf-8",
    )
    plan = ("plan", "--tp", "64", "--cluster", str(cluster))
    code, _, err = run(capsys, *plan)
    assert code == cli.EXIT_NO_CAPACITY
    assert err.splitlines()[-1] == "  ... and 10 more nodes"
    code, out, _ = run(capsys, "--json", *plan)
    data = json.loads(out)
    assert (len(data["rejections"]), data["rejections_omitted"]) == (20, 10)


@pytest.mark.parametrize(
    ("argv", "points_at"),
    [
        (("sandbox", "--address", "x"), "placement-actors sandbox --help"),
        (("-v", "status", "--bogus"), "placement-actors status --help"),
        (("--bogus",), "placement-actors --help"),
    ],
    ids=["sandbox", "status-after-a-global-flag", "no-command"],
)
def test_an_unknown_flag_points_at_the_help_of_the_command_it_was_given_to(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], points_at: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (cli.EXIT_USAGE, "")
    assert err.rstrip().endswith(f"(see `{points_at}`)")


def test_a_tp_size_below_one_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "plan", "--tp", "0", "--cluster", str(EXAMPLES / "cluster.yaml"))
    assert code == cli.EXIT_USAGE
    assert "--tp" in err


def test_a_file_path_with_a_newline_still_gives_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(
        capsys, "place", "no\nsuch.yaml", "--cluster", str(EXAMPLES / "cluster.yaml")
    )
    assert code == cli.EXIT_INVALID_SPEC
    assert err.count("\n") == 1
    assert "no\\nsuch.yaml" in err


def test_a_reader_that_closes_the_output_early_leaves_the_exit_code_and_standard_error_whole(
    tmp_path: Path,
) -> None:
    cluster = tmp_path / "c.yaml"
    cluster.write_text("nodes:\n" + "".join(f"  - {{id: n{i:03d}, gpus: 8}}\n" for i in range(400)))
    deployments = tmp_path / "d.yaml"
    deployments.write_text(
        "deployments:\n" + "".join(f"  - {{name: d{i:04d}, model: m}}\n" for i in range(3000))
    )
    command = [sys.executable, "-m", "placement_actors", "place", str(deployments)]
    with subprocess.Popen(  # noqa: S603 - this interpreter running the command line
        [*command, "--cluster", str(cluster)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as reader:
        assert reader.stdout is not None
        assert reader.stderr is not None
        assert reader.stdout.readline()  # as `| head -1` would: one line, then the pipe is closed
        reader.stdout.close()
        err = reader.stderr.read().decode()
        assert reader.wait(timeout=120) == cli.EXIT_OK  # every deployment fitted
    assert "unexpected failure" not in err
    assert "Traceback" not in err
