import json
import re
from pathlib import Path
from typing import Any

import pytest

from placement_actors import cli

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
    assert "gpu-b + gpu-c" in out  # llama-70b is split 2 x 4
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


def test_a_usage_error_exits_two(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["place"])
    assert caught.value.code == 2
    assert "usage" in capsys.readouterr().err


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
    split = next(p for p in data["placed"] if p["deployment"] == "llama-70b")
    assert [n["name"] for n in split["replicas"][0]["nodes"]] == ["gpu-b", "gpu-c"]
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
