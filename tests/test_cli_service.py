"""The commands that talk to a running service, on the session's Ray cluster."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray.util import remove_placement_group

from placement_actors import (
    BundleStrategy,
    Deployment,
    InvalidSpecError,
    NodeAssignment,
    Place,
    PlacementConstraints,
    PlanReplica,
    cli,
    group_prefix,
)
from placement_actors.actors.messages import NodeJoined
from placement_actors.backends import ray as on_ray
from placement_actors.policies.bundle_shapes import NODE_ID_LABEL
from placement_actors.service import PlacementClient

pytestmark = pytest.mark.usefixtures("ray_nodes")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def address(ray_cluster: Any, capsys: pytest.CaptureFixture[str]) -> Iterator[str]:
    """A served placement service; stopped, with all its deployments released, afterwards."""
    code, out, _ = run(capsys, "serve", "--address", ray_cluster.address)
    assert code == cli.EXIT_OK
    assert "placement-actors-service runs on" in out
    yield ray_cluster.address
    client = PlacementClient.connect(ray_cluster.address)
    run(capsys, "reap", "cli-", "--address", ray_cluster.address)
    client.stop_service()


def test_serving_a_service_that_runs_says_so_and_stopping_one_that_does_not_is_no_error(
    capsys: pytest.CaptureFixture[str], address: str
) -> None:
    loopback = f"127.0.0.1:{address.rpartition(':')[2]}"  # the same cluster, written otherwise
    code, out, _ = run(capsys, "serve", "--address", loopback, "--ignore-head-node")
    assert code == cli.EXIT_OK
    assert "already runs on" in out
    assert "stop it first" in " ".join(out.split())  # --ignore-head-node did not apply
    code, out, _ = run(capsys, "--json", "serve", "--address", address, "--stop")
    assert code == cli.EXIT_OK
    assert json.loads(out)["was_running"] is True
    code, out, _ = run(capsys, "serve", "--address", address, "--stop")
    assert code == cli.EXIT_OK
    assert "was not running" in out
    code, out, _ = run(capsys, "--json", "serve", "--address", address)  # for the fixture
    assert (code, json.loads(out)["started"]) == (cli.EXIT_OK, True)


def deployments_file(tmp_path: Path, ray_nodes: dict[str, str]) -> Path:
    path = tmp_path / "d.yaml"
    path.write_text(
        "deployments:\n"
        f"  - {{name: cli-small, model: m, gpus: 2, gpu_nodes: [{ray_nodes['gpu-a']}]}}\n"
        "  - {name: cli-huge, model: m, gpus: 1000}\n"
    )
    return path


def test_place_status_why_release_through_the_service(
    capsys: pytest.CaptureFixture[str], address: str, tmp_path: Path, ray_nodes: dict[str, str]
) -> None:
    path = deployments_file(tmp_path, ray_nodes)
    code, out, _ = run(capsys, "place", str(path), "--address", address)
    assert code == cli.EXIT_NO_CAPACITY  # cli-huge did not fit
    assert "cli-small" in out
    assert "cli-huge did not fit" in out

    code, out, _ = run(capsys, "status", "--address", address)
    assert code == cli.EXIT_OK
    assert "GPU occupancy" in out
    assert "gpu-a" in out
    assert "cli-small [0-1]" in out or "cli-small [0,1]" in out

    code, out, _ = run(capsys, "why", "cli-huge", "--address", address)
    assert code == cli.EXIT_NO_CAPACITY
    assert "gpu-bulk: has 64 GPUs in all; a whole replica needs 1000" in out

    code, out, _ = run(capsys, "release", "cli-small", "--address", address)
    assert code == cli.EXIT_OK
    assert "freed 2 GPUs of 1 replica." in out
    code, out, _ = run(capsys, "why", "cli-small", "--address", address)
    assert code == cli.EXIT_OK
    assert "cli-small: not placed, and no failed Place of it is on record." in out
    code, _, err = run(capsys, "show", "cli-huge", "--address", address)
    assert code == cli.EXIT_INVALID_SPEC
    assert "its last Place failed: `why cli-huge` says why" in " ".join(err.split())


def test_show_gives_a_deployments_replicas_with_their_masters_as_place_did(
    capsys: pytest.CaptureFixture[str], address: str, ray_nodes: dict[str, str]
) -> None:
    nodes = (ray_nodes["gpu-a"], ray_nodes["gpu-b"])  # 4 GPUs each: 8 are split 2 x 4
    placed = PlacementClient.connect(address).ask(
        Place(
            Deployment(name="cli-split", model="m", gpus=8), PlacementConstraints(gpu_nodes=nodes)
        )
    )
    (replica,) = placed.replicas
    master = f"{replica.master.node_ip.get(timeout=60)}:{replica.master.port.get(timeout=60)}"
    code, out, _ = run(capsys, "show", "cli-split", "--address", address, "--json")
    assert code == cli.EXIT_OK
    shown = json.loads(out)
    (row,) = shown["replicas"]
    assert row["master"] == master
    assert [n["node"] for n in row["nodes"]] == [b.node for b in replica.bundles]  # rank order
    assert [len(n["gpus"]) for n in row["nodes"]] == [4, 4]
    assert shown["missing"] == []
    code, out, _ = run(capsys, "show", "cli-split", "--address", address)
    assert code == cli.EXIT_OK
    assert master in out
    assert "gpu-a" in out
    assert "gpu-b" in out
    code, out, err = run(capsys, "show", "cli-nowhere", "--address", address)
    assert code == cli.EXIT_INVALID_SPEC
    assert "cli-nowhere is not placed" in err
    assert "why" not in err  # no Place of it failed: nothing for `why` to say


def test_every_service_command_speaks_json(
    capsys: pytest.CaptureFixture[str], address: str, tmp_path: Path, ray_nodes: dict[str, str]
) -> None:
    path = deployments_file(tmp_path, ray_nodes)
    code, out, _ = run(capsys, "place", str(path), "--address", address, "--json")
    placed = json.loads(out)
    assert code == cli.EXIT_NO_CAPACITY
    assert placed["placed"][0]["deployment"] == "cli-small"
    assert placed["placed"][0]["replicas"][0]["master"].count(":") == 1
    assert placed["did_not_fit"][0]["error"] == "NotEnoughGpusError"

    _, out, _ = run(capsys, "status", "--address", address, "--json")
    status = json.loads(out)
    node = next(n for n in status["nodes"] if n["name"] == "gpu-a")
    assert node["held"] == {"cli-small": [0, 1]}

    _, out, _ = run(capsys, "why", "cli-huge", "--address", address, "--json")
    assert json.loads(out)["retryable"] is False

    _, out, _ = run(capsys, "reap", "cli-", "--address", address, "--json")
    assert json.loads(out)["released"] == ["cli-small"]


def test_defrag_names_the_replica_to_move_to_free_a_node(
    capsys: pytest.CaptureFixture[str], address: str, tmp_path: Path, ray_nodes: dict[str, str]
) -> None:
    a, b = ray_nodes["gpu-a"], ray_nodes["gpu-b"]
    path = tmp_path / "scattered.yaml"
    path.write_text(
        "deployments:\n"
        f"  - {{name: cli-two, model: m, gpus: 2, gpu_nodes: [{b}], keep_whole: true}}\n"
        f"  - {{name: cli-one, model: m, gpus: 1, strategy: spread, gpu_nodes: [{a}, {b}]}}\n"
    )
    code, _, _ = run(capsys, "place", str(path), "--address", address)
    assert code == cli.EXIT_OK
    # gpu-b: cli-two (2 free; it may not leave); gpu-a, the least loaded: cli-one (3 free).
    code, out, _ = run(capsys, "defrag", "--gpus", "4", "--address", address, "--json")
    assert code == cli.EXIT_OK
    plan = json.loads(out)
    status = run(capsys, "status", "--address", address, "--json")[1]
    assert [(m["deployment"], m["from_name"], m["to_name"]) for m in plan["moves"]] == [
        ("cli-one", "gpu-a", "gpu-b")
    ], status
    assert [n["name"] for n in plan["freed_nodes"]] == ["gpu-a"]
    code, out, _ = run(capsys, "defrag", "--gpus", "4", "--address", address)
    assert code == cli.EXIT_OK
    assert "1 move(s) would leave 4 GPUs free on: gpu-a" in out
    assert "move cli-one/r0 (1 GPU): gpu-a -> gpu-b" in out
    code, out, _ = run(capsys, "defrag", "--gpus", "100", "--address", address)
    assert code == cli.EXIT_OK
    assert "No node has 100 GPUs in all (the largest has 64): no move frees one." in out
    code, _, err = run(capsys, "defrag", "--max-moves", "0", "--address", address)
    assert code == cli.EXIT_USAGE
    assert "must be at least 1" in err
    code, _, err = run(capsys, "defrag", "--max-moves", "5000", "--address", address)
    assert code == cli.EXIT_USAGE  # a flag out of its range, as the one below its range
    assert "must be at most 1000" in err
    code, out, _ = run(capsys, "defrag", "--gpus", "4", "--apply", "--address", address)
    assert code == cli.EXIT_OK
    assert "1 move(s) will leave 4 GPUs free on: gpu-a" in out
    assert "Made 1 move(s)" in out
    status = json.loads(run(capsys, "status", "--address", address, "--json")[1])
    held = {n["name"]: n["held"] for n in status["nodes"]}
    assert held["gpu-a"] == {}
    assert sorted(held["gpu-b"]) == ["cli-one", "cli-two"]
    assert len(on_ray.bundle_nodes(group_prefix("cli-one"))) == 1  # its old group is gone


def test_move_takes_a_replica_to_a_node_named_by_its_name(
    capsys: pytest.CaptureFixture[str], address: str, tmp_path: Path, ray_nodes: dict[str, str]
) -> None:
    path = tmp_path / "one.yaml"
    a, b = ray_nodes["gpu-a"], ray_nodes["gpu-b"]
    path.write_text(f"deployments:\n  - {{name: cli-moved, model: m, gpu_nodes: [{a}, {b}]}}\n")
    assert run(capsys, "place", str(path), "--address", address)[0] == cli.EXIT_OK
    status = json.loads(run(capsys, "status", "--address", address, "--json")[1])
    (now,) = [n["name"] for n in status["nodes"] if "cli-moved" in n["held"]]
    other = "gpu-b" if now == "gpu-a" else "gpu-a"
    code, out, _ = run(capsys, "move", "cli-moved", "0", other, "--address", address, "--json")
    assert code == cli.EXIT_OK
    moved = json.loads(out)
    assert (moved["from_name"], moved["to_name"], moved["gpus"]) == (now, other, [0])
    assert list(on_ray.bundle_nodes(group_prefix("cli-moved")).values()) == [{0: ray_nodes[other]}]
    code, _, err = run(capsys, "move", "cli-moved", "0", "gpu-c", "--address", address)
    assert code == cli.EXIT_INVALID_SPEC  # gpu-c is not one of its gpu_nodes
    assert "do not allow" in err
    code, _, err = run(capsys, "move", "cli-moved", "0", other, "--address", address)
    assert code == cli.EXIT_INVALID_SPEC
    assert f"runs on {other} already" in " ".join(err.split())  # named as the user named it
    assert ray_nodes[other] not in err
    code, out, _ = run(capsys, "--json", "move", "cli-moved", "0", other, "--address", address)
    assert code == cli.EXIT_INVALID_SPEC
    assert f"runs on {other} already" in json.loads(out)["message"]  # --json too
    code, _, err = run(capsys, "move", "cli-moved", "0", "gpu-nowhere", "--address", address)
    assert code == cli.EXIT_INVALID_SPEC
    assert "not a GPU node here" in err
    # Back by its id, from a process of its own (as an operator runs it: not yet on Ray).
    argv = ["--json", "move", "cli-moved", "0", ray_nodes[now], "--address", address]
    done = subprocess.run(  # noqa: S603 - this interpreter running the project's own CLI
        [sys.executable, "-m", "placement_actors", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    assert done.returncode == cli.EXIT_OK, done.stderr[-2000:]
    assert json.loads(done.stdout)["to_name"] == now


def test_status_saves_the_occupancy_picture_as_svg(
    capsys: pytest.CaptureFixture[str], address: str, tmp_path: Path, ray_nodes: dict[str, str]
) -> None:
    run(capsys, "place", str(deployments_file(tmp_path, ray_nodes)), "--address", address)
    picture = tmp_path / "status.svg"
    code, _, _ = run(capsys, "status", "--address", address, "--svg", str(picture))
    assert code == cli.EXIT_OK
    svg = picture.read_text()
    assert svg.startswith("<svg")
    text = svg.replace("&#160;", " ")
    assert "GPU occupancy" in text
    assert "cli-small" in text  # the legend names the holder of the coloured cells


def test_status_reports_an_svg_file_it_cannot_write_as_one_usage_error(
    capsys: pytest.CaptureFixture[str], address: str, tmp_path: Path
) -> None:
    picture = tmp_path / "no-such-dir" / "status.svg"
    code, out, err = run(capsys, "status", "--address", address, "--svg", str(picture), "--json")
    data = json.loads(out)  # the error object only: not the status document too
    assert code == data["exit_code"] == cli.EXIT_USAGE
    assert data["error"] == "UsageError"
    assert data["message"] == f"cannot write --svg {picture}: No such file or directory"
    assert "Traceback" not in out + err


def test_plan_on_the_ray_cluster_and_on_a_file(
    capsys: pytest.CaptureFixture[str], ray_cluster: Any
) -> None:
    code, out, _ = run(capsys, "plan", "--tp", "16", "--address", ray_cluster.address, "--json")
    assert code == cli.EXIT_OK
    assert json.loads(out)["strategy"] == "STRICT_PACK"  # gpu-bulk has 64
    examples = Path(__file__).parent.parent / "examples" / "cluster.yaml"
    code, out, _ = run(capsys, "plan", "--tp", "8", "--cluster", str(examples))
    assert code == cli.EXIT_OK
    assert "STRICT_PACK" in out  # gpu-c has 8
    code, _, err = run(capsys, "plan", "--tp", "16", "--cluster", str(examples))
    assert code == cli.EXIT_NO_CAPACITY
    assert "TP size 16" in err


def test_service_commands_need_an_address(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, _, err = run(capsys, "status")
    assert code == cli.EXIT_USAGE
    assert "needs --address" in err


def test_place_reports_masters_still_pending_and_exits_non_zero(
    capsys: pytest.CaptureFixture[str], address: str, tmp_path: Path, ray_nodes: dict[str, str]
) -> None:
    holder = on_ray.build_pg(
        [{"GPU": 4}],
        BundleStrategy.STRICT_PACK,
        name="t-cli-holder",
        bundle_label_selector=[{NODE_ID_LABEL: ray_nodes["gpu-b"]}],
        ready_timeout_s=20,
    )
    try:
        path = tmp_path / "d.yaml"
        node = ray_nodes["gpu-b"]
        path.write_text(
            f"deployments:\n  - {{name: cli-late, model: m, gpus: 4, gpu_nodes: [{node}]}}\n"
        )
        code, out, _ = run(
            capsys, "place", str(path), "--address", address, "--ready-timeout", "1", "--json"
        )
        data = json.loads(out)
        assert code == data["exit_code"] == cli.EXIT_NO_CAPACITY
        master = data["placed"][0]["replicas"][0]["master"]
        assert master.startswith("pending")
        assert data["error"] == "PlacementGroupTimeoutError"
        assert data["message"].startswith(
            "1 master address(es) not known: placement-actors:cli-late"
        )
    finally:
        remove_placement_group(holder)


def test_demo_refuses_a_cluster_where_the_service_runs(
    capsys: pytest.CaptureFixture[str], address: str
) -> None:
    examples = Path(__file__).parent.parent / "examples" / "deployments.yaml"
    code, _, err = run(capsys, "demo", "--deployments", str(examples), "--address", address)
    assert code == cli.EXIT_USAGE
    assert "place FILE --address" in err


def test_the_service_does_not_take_plan_replica(address: str, ray_nodes: dict[str, str]) -> None:
    client = PlacementClient.connect(address)
    message = PlanReplica(
        deployment="cli-direct",
        replica_index=0,
        assignments=(NodeAssignment(replica_index=0, node=ray_nodes["gpu-a"], gpus=(0,)),),
    )
    with pytest.raises(InvalidSpecError, match="through Place"):
        client.ask(message)


def test_place_names_the_line_of_a_node_the_service_does_not_know(
    capsys: pytest.CaptureFixture[str], address: str, tmp_path: Path
) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(
        "deployments:\n  - name: cli-nowhere\n    model: m\n    gpu_nodes: [no-such-node]\n"
    )
    code, _, err = run(capsys, "place", str(path), "--address", address)
    assert code == cli.EXIT_INVALID_SPEC
    assert f"{path}:4: gpu_nodes: unknown node 'no-such-node'" in err


def test_watch_streams_a_lost_node_and_status_shows_it_lost_and_the_deployment_degraded(
    capsys: pytest.CaptureFixture[str], address: str, ray_cluster: Any
) -> None:
    client = PlacementClient.connect(address)
    node_id = ray_cluster.add_worker(gpus=1, name="cli-doomed")
    removed = False
    try:
        deadline = time.monotonic() + 60
        while not any(isinstance(e.event, NodeJoined) for e in client.events(0, wait_s=5)[0]):
            assert time.monotonic() < deadline, "the service never saw the node join"
        # pinned to the doomed node: once it is lost, the replica fits nowhere
        pinned = PlacementConstraints(gpu_nodes=(node_id,))
        result = client.ask(Place(Deployment(name="cli-pinned", model="m"), pinned))
        assert result.replicas[0].master.port.get(timeout=60) > 0
        ray_cluster.remove_worker(node_id)
        removed = True

        code, out, err = run(capsys, "watch", "--address", address, "--json", "--count", "2")
        assert code == cli.EXIT_OK
        lines = out.splitlines()
        assert len(lines) == 2  # one JSON object per line, nothing else
        joined, second = map(json.loads, lines)
        assert (joined["kind"], joined["sequence"], joined["node"]) == ("node_joined", 1, node_id)
        assert (joined["name"], joined["gpus"], joined["egress"]) == ("cli-doomed", 1, False)
        # the watcher may see Ray reschedule the group a moment before it sees the node gone
        assert second["kind"] in {"node_lost", "replica_lost"}

        code, out, _ = run(capsys, "watch", "--address", address, "--count", "3")
        assert code == cli.EXIT_OK
        assert [line.split()[2] for line in out.splitlines()] == ["#1", "#2", "#3"]
        assert "#1  node joined: cli-doomed (1 GPU)" in out
        assert "node lost: cli-doomed" in out  # named by the label it joined with
        assert "replica lost: cli-pinned #0 " in out
        assert "the service places it again when it fits" in out

        code, out, err = run(capsys, "watch", "--address", address, "--new", "--timeout", "0.5")
        assert (code, out) == (cli.EXIT_OK, "")  # nothing new within half a second
        assert "watched for 0.5s: 0 event(s)" in err

        code, out, _ = run(capsys, "status", "--address", address, "--json")
        status = json.loads(out)
        assert code == status["exit_code"] == cli.EXIT_OK
        states = {n["node"]: n["state"] for n in status["nodes"]}
        assert states.pop(node_id) == "lost"
        assert set(states.values()) == {"alive"}
        assert status["degraded"] == ["cli-pinned"]
        assert all(n["outside"] == 0 for n in status["nodes"])

        code, out, _ = run(capsys, "status", "--address", address)
        assert code == cli.EXIT_OK
        row = next(line for line in out.splitlines() if "cli-doomed" in line)
        assert "lost" in row  # a lost node keeps the name it joined with
        assert "Degraded (replicas missing): cli-pinned" in out
    finally:
        if not removed:
            ray_cluster.remove_worker(node_id)


def test_watch_exits_with_a_backend_failure_when_the_service_goes_away(
    capsys: pytest.CaptureFixture[str], address: str
) -> None:
    stopper = threading.Timer(2.0, PlacementClient.connect(address).stop_service)
    stopper.start()
    try:
        code, out, err = run(capsys, "watch", "--address", address, "--json", "--timeout", "60")
    finally:
        stopper.join()
        run(capsys, "serve", "--address", address)  # for the fixture's clean-up
    assert code == cli.EXIT_BACKEND
    assert out == ""  # standard output holds the stream only: the failure is on stderr
    # (Ray's own messages about the killed actor go to standard error too, before it)
    failure = err[err.index("cluster backend failed:") :]
    assert failure.startswith("cluster backend failed: the service stopped answering after 0 event")


SANDBOX_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}


def start_sandbox(*, session: bool = False) -> subprocess.Popen[str]:
    """``placement-actors --json sandbox`` in a process of its own, as in another terminal.

    ``session``: in a session (and process group) of its own, as a supervisor starts it.
    """
    return subprocess.Popen(
        [sys.executable, "-m", "placement_actors", "--json", "sandbox"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=SANDBOX_ENV,
        start_new_session=session,
    )


def first_line(sandbox: subprocess.Popen[str]) -> dict[str, Any]:
    """The sandbox's one JSON line, once its cluster and service are up (at most 180 s)."""
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(sandbox.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout=180)
    assert first, "the sandbox printed no address within 180 s"
    started: dict[str, Any] = json.loads(first[0])
    return started


def test_a_sandbox_serves_other_commands_until_ctrl_c_then_stops_everything() -> None:
    env = SANDBOX_ENV
    sandbox = start_sandbox()
    try:
        started = first_line(sandbox)
        address = started["address"]
        assert (started["gpus"]["gpu-c"], started["egress"]) == (8, ["head", "edge-1"])
        status = subprocess.run(  # noqa: S603 - as an operator in another terminal
            [sys.executable, "-m", "placement_actors", "--json", "status", "--address", address],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=env,
        )
        assert status.returncode == cli.EXIT_OK, status.stderr[-2000:]
        nodes = {n["name"]: n["capacity"] for n in json.loads(status.stdout)["nodes"]}
        assert {k: v for k, v in nodes.items() if k.startswith("gpu-")} == {
            "gpu-a": 4,
            "gpu-b": 4,
            "gpu-c": 8,
        }
        watch = subprocess.Popen(  # noqa: S603 - a third terminal, watching as the sandbox stops
            [sys.executable, "-m", "placement_actors", "watch", "--address", address],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        time.sleep(10)  # most likely connected and waiting by then; either way it must end well
    finally:
        sandbox.send_signal(signal.SIGINT)  # as Ctrl-C
        _, err = sandbox.communicate(timeout=120)
    assert sandbox.returncode == cli.EXIT_OK, err[-2000:]
    assert "Local Ray cluster stopped." in err
    try:  # the watch ends at once with the service gone, not after Ray's minute of retries
        _, watched = watch.communicate(timeout=45)
    finally:
        watch.kill()
    assert watch.returncode == cli.EXIT_BACKEND, watched[-2000:]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["kill", "terminal-closed"])
def test_a_sandbox_told_to_terminate_stops_everything_as_ctrl_c_does(stop: signal.Signals) -> None:
    sandbox = start_sandbox()
    try:
        assert first_line(sandbox)["address"]
    finally:
        sandbox.send_signal(stop)
        _, err = sandbox.communicate(timeout=120)
    assert sandbox.returncode == cli.EXIT_OK, err[-2000:]
    assert "Stopping the service and the local cluster" in err
    assert "Local Ray cluster stopped." in err


def test_a_sandbox_whose_whole_process_group_is_terminated_stops_without_waiting_on_ray() -> None:
    sandbox = start_sandbox(session=True)
    try:
        assert first_line(sandbox)["address"]
    finally:
        # As GNU timeout and many supervisors do: Ray's processes, in the group, get it too,
        # and Ray's GCS stops answering. Waiting on it would take Ray's minute, then its abort.
        os.killpg(sandbox.pid, signal.SIGTERM)
        try:
            _, err = sandbox.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            os.killpg(sandbox.pid, signal.SIGKILL)  # leave nothing running for later tests
            _, err = sandbox.communicate(timeout=30)  # reaped, and what it said on the way
            pytest.fail(f"the sandbox did not stop within 45 s; it said:\n{err[-3000:]}")
    assert sandbox.returncode == cli.EXIT_OK, err[-2000:]
    assert "Ray's GCS no longer answers" in err
    assert "Local Ray cluster stopped." in err
