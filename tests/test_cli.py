from pathlib import Path

import pytest

from placement_actors import cli

EXAMPLES = Path(__file__).parent.parent / "examples"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_prints_assignments_then_the_deployment_that_does_not_fit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-demo-secret")
    code, out, _ = run(
        capsys,
        "demo",
        "--cluster",
        str(EXAMPLES / "cluster.yaml"),
        "--deployments",
        str(EXAMPLES / "deployments.yaml"),
    )
    assert code == cli.EXIT_OK
    for name in ("llama-8b", "qwen-32b", "mixtral", "gpt-4o", "claude"):
        assert name in out
    assert "llama-405b did not fit" in out
    assert "NotEnoughGpusError" in out
    assert out.index("Placements") < out.index("llama-405b did not fit")
    assert "sk-demo-secret" not in out


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
