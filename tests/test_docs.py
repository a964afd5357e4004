"""Every Python sample in the README and the docs runs, each in a fresh interpreter; every
command of the CLI is in the README's list and the CLI reference."""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from placement_actors.config_files import load_cluster, load_deployments

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def samples() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for number, code in enumerate(FENCE.findall(page.read_text(encoding="utf-8")), 1):
            if code.lstrip().startswith("--8<--"):
                continue  # an included file: tests/test_examples.py runs it
            found.append((f"{page.relative_to(ROOT)}#{number}", code))
    return found


def test_the_docs_have_samples_to_run() -> None:
    assert len(samples()) >= 4


@pytest.mark.parametrize(("where", "code"), samples(), ids=[w for w, _ in samples()])
def test_the_sample_runs(where: str, code: str) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(  # noqa: S603 - this interpreter running the docs' own sample
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"{where} failed:\n{done.stderr[-3000:]}"


YAML_FENCE = re.compile(r"```yaml\n(.*?)```", re.DOTALL)


def yaml_samples() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for number, text in enumerate(YAML_FENCE.findall(page.read_text(encoding="utf-8")), 1):
            found.append((f"{page.relative_to(ROOT)}#yaml{number}", text))
    return found


@pytest.mark.parametrize(("where", "text"), yaml_samples(), ids=[w for w, _ in yaml_samples()])
def test_the_yaml_sample_is_a_valid_file(where: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / "sample.yaml"
    path.write_text(text, encoding="utf-8")
    if text.lstrip().startswith("# deployments") or "deployments:" in text:
        assert load_deployments(path, environ={}), where
    else:
        assert load_cluster(path).topology, where


def _commands() -> list[str]:
    from placement_actors import cli  # noqa: PLC0415 - only this test needs the parser

    (sub,) = (a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


@pytest.mark.parametrize("command", _commands())
def test_every_command_is_in_the_readmes_list_and_the_cli_reference(command: str) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (listing,) = re.findall(r"## Command line\n\n```sh\n(.*?)```", readme, re.DOTALL)
    assert re.search(rf"^placement-actors {command}\b", listing, re.MULTILINE), command
    reference = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert re.search(rf"^\| `{command}\b", reference, re.MULTILINE), command
