"""Every Python sample in the README and the docs runs, each in a fresh interpreter."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
