"""Mutated deployment and cluster files: each loads, or fails with a ConfigFileError naming lines.

The mutants are reproducible (one seeded `random.Random`); a failure prints the mutant's index, its
mutations and its bytes, so it can be turned into a table row in tests/test_config_files.py.
"""

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from placement_actors import cli, config_files
from placement_actors.config_files import ClusterFile, load_cluster, load_deployments
from placement_actors.domain.errors import ConfigFileError

EXAMPLES = Path(__file__).parent.parent / "examples"
SEED = 20_261_122
MUTANTS_PER_KIND = 700  # deployments and cluster files: 1,400 in all
CLI_SAMPLE = 200
KNOWN = ("head", "gpu-a", "gpu-b", "gpu-c", "edge-1")  # the nodes of examples/cluster.yaml

EXTRA_DEPLOYMENTS = [
    b"""deployments:
  - name: pinned
    model: meta-llama/Llama-3.1-8B-Instruct
    replicas: 3
    gpus: 2
    strategy: spread
    gpu_nodes: &gpus [gpu-a, gpu-b]
  - name: pinned-too
    model: Qwen/Qwen2.5-7B-Instruct
    gpu_nodes: *gpus
  - name: api
    model: claude-sonnet-4-5
    replicas: 2
    api_key_env: ANTHROPIC_API_KEY
    egress_strategy: pack
    egress_nodes:
      - head
      - edge-1
""",
    (
        b"deployments:\n"
        b"  - {name: a, model: m, replicas: 1, gpus: 4, runtime: sglang}\n"
        b"  - {name: b, model: gpt-4o-mini, egress_strategy: spread, egress_nodes: [edge-1]}\n"
        b"  - {name: c, model: 'litellm/gpt-4o', replicas: 2}\n"
    ),
]
EXTRA_CLUSTERS = [
    (
        b"nodes:\n"
        b"  - {id: head, gpus: 0, head: true, egress: true}\n"
        b"  - {id: gpu-a, gpus: 8, labels: {zone: a, rack: '1'}}\n"
        b"  - {id: gpu-b, gpus: 8, labels: {zone: b}}\n"
        b"  - {id: edge-1, egress: true}\n"
    ),
    b"""nodes:
  - id: head
    head: true
    egress: true
  - id: gpu-a
    gpus: 4
    labels:
      zone: a
      tier: "gold"
""",
]

ODD_SCALARS = [
    b"100000000000000",
    b"1000001",
    b"99999999999999999999999999999999",
    b"9" * 5000,
    b"1:2:3:4:5:6:7:8:9:10:11:12:13:14:15:16:17:18:19:20:21:22:23:24:25:26",
    b"-1",
    b"0",
    b"-99999999999",
    b"1e400",
    b".nan",
    b"0x7fffffffffffffff",
    b"0o17",
    b"2024-13-45",
    b"2024-01-01",
    b"yes",
    b"null",
    b"~",
    b"''",
    b'"   "',
    b"'\\t'",
    b"\xc3\xa9" * 300,
    "\u202egpu-a".encode(),
    "\U0001f680".encode(),
    b"x" * 2000,
    b"sk-proj-0123456789abcdefghijklmnopqrstuvwxyz",
    b"[a, [b, [c, [d]]]]",
    b"{a: 1, a: 2}",
    b"*undefined",
    b"&anchor value",
    b"!!python/object:os.system",
    b"!!binary aGVsbG8=",
    b"!!int not-a-number",
    b"!custom tag",
    b"[",
    b"{",
    b"'unterminated",
    b"|\n  block\n  text",
    b"<<: *x",
    b"? complex",
]
PLAUSIBLE_SCALARS = [
    b"1",
    b"2",
    b"4",
    b"8",
    b"16",
    b"1000000",
    b"gpu-a",
    b"gpu-c",
    b"edge-1",
    b"head",
    b"spread",
    b"pack",
    b"vllm",
    b"openai",
    b"true",
    b"false",
    b"gpt-4o",
    b"meta-llama/Llama-3.1-8B-Instruct",
]
ODD_BYTES = [
    b"\x00",
    b"\xff",
    b"\xfe",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\x07",
    b"\x1b",
    b"\t",
    b"\r",
    b"\x85",
    b"\xef\xbb\xbf",
    b"\n",
    b":",
    b"-",
    b"#",
    b"&a",
    b"*a",
    b"%YAML 1.1\n",
    b"---\n",
    b"...\n",
]
SCALAR = re.compile(rb"(?<=: )[^\n{}\[\],]+|(?<=- )[^\n{}\[\],:]+|(?<=\[)[^\n\]\[,]+")


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def delete_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    del lines[rng.randrange(len(lines))]
    return b"\n".join(lines)


def duplicate_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    at = rng.randrange(len(lines))
    lines.insert(at, lines[at])  # in a mapping: a duplicate key
    return b"\n".join(lines)


def swap_lines(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def reindent_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    at = rng.randrange(len(lines))
    lines[at] = b" " * rng.choice([0, 1, 3, 8]) + lines[at].lstrip(b" ")
    return b"\n".join(lines)


def flip_byte(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    at = rng.randrange(len(data))
    return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]


def insert_bytes(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    extra = rng.choice([*ODD_BYTES, bytes([rng.randrange(256)])])
    return data[:at] + extra + data[at:]


def replace_scalar(rng: random.Random, data: bytes) -> bytes:
    found = list(SCALAR.finditer(data))
    if not found:
        return insert_bytes(rng, data)
    match = rng.choice(found)
    return data[: match.start()] + rng.choice(ODD_SCALARS) + data[match.end() :]


def replace_scalar_plausibly(rng: random.Random, data: bytes) -> bytes:
    found = list(SCALAR.finditer(data))
    if not found:
        return data
    match = rng.choice(found)
    return data[: match.start()] + rng.choice(PLAUSIBLE_SCALARS) + data[match.end() :]


def deepen_nesting(rng: random.Random, data: bytes) -> bytes:
    found = list(SCALAR.finditer(data))
    if not found:
        return data
    match = rng.choice(found)
    depth = rng.choice([5, 31, 33, 200, 10_000])
    opener, closer = rng.choice([(b"[", b"]"), (b"{a: ", b"}")])
    closed = rng.random() < 0.7
    inner = opener * depth + match.group() + (closer * depth if closed else b"")
    return data[: match.start()] + inner + data[match.end() :]


def add_alias_bomb(rng: random.Random, data: bytes) -> bytes:
    """Replace a scalar with nested aliases: ``width ** levels`` values once expanded."""
    found = list(SCALAR.finditer(data))
    if not found:
        return data
    match = rng.choice(found)
    width, levels = rng.choice([(2, 3), (3, 4), (10, 9), (2, 40)])
    parts = [b"&b0 [" + b", ".join([b"x"] * width) + b"]"]
    parts += [
        b"&b%d [" % level + b", ".join([b"*b%d" % (level - 1)] * width) + b"]"
        for level in range(1, levels)
    ]
    bomb = b"[" + b", ".join(parts) + b"]"
    return data[: match.start()] + bomb + data[match.end() :]


def add_document(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    lines.insert(rng.randrange(len(lines) + 1), rng.choice([b"---", b"--- !x", b"..."]))
    return b"\n".join(lines)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


MUTATIONS: list[Callable[[random.Random, bytes], bytes]] = [
    delete_line,
    duplicate_line,
    swap_lines,
    reindent_line,
    flip_byte,
    insert_bytes,
    replace_scalar,
    replace_scalar_plausibly,
    replace_scalar_plausibly,
    replace_scalar_plausibly,
    deepen_nesting,
    add_alias_bomb,
    add_document,
    truncate,
]


@dataclass(frozen=True)
class Mutant:
    index: int
    mutations: tuple[str, ...]
    data: bytes

    def describe(self) -> str:
        return f"mutant {self.index} ({', '.join(self.mutations)}): {self.data[:600]!r}"


def mutants(rng: random.Random, seeds: list[bytes], count: int) -> list[Mutant]:
    found = []
    for index in range(count):
        data = rng.choice(seeds)
        names = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            mutation = rng.choice(MUTATIONS)
            data = mutation(rng, data)
            names.append(mutation.__name__)
        found.append(Mutant(index=index, mutations=tuple(names), data=data))
    return found


@dataclass
class Tally:
    valid: int = 0
    invalid: int = 0


def check_outcome(load: Callable[[Path], object], path: Path, mutant: Mutant, tally: Tally) -> bool:
    """Load one mutant; only a result or a ConfigFileError whose problems name lines may come."""
    try:
        load(path)
    except ConfigFileError as exc:
        text = str(exc)
        for problem in exc.problems:
            if problem.problem == "the file is empty":
                assert problem.line is None, mutant.describe()
                continue
            assert problem.line is not None, f"{text}\n{mutant.describe()}"
            assert f"{path}:{problem.line}: " in text, f"{text}\n{mutant.describe()}"
        tally.invalid += 1
        return False
    except Exception as exc:  # noqa: BLE001 - any other error fails the test with its mutant
        pytest.fail(f"{type(exc).__name__}: {exc}\n{mutant.describe()}")
    tally.valid += 1
    return True


def test_mutated_files_load_or_fail_with_a_config_error_naming_lines_also_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    rng = random.Random(SEED)
    deployment_seeds = [(EXAMPLES / "deployments.yaml").read_bytes(), *EXTRA_DEPLOYMENTS]
    cluster_seeds = [(EXAMPLES / "cluster.yaml").read_bytes(), *EXTRA_CLUSTERS]

    def load_specs(path: Path) -> object:
        return load_deployments(path, environ={}, known_nodes=KNOWN)

    kinds: list[tuple[str, list[bytes], Callable[[Path], object]]] = [
        ("deployments", deployment_seeds, load_specs),
        ("cluster", cluster_seeds, load_cluster),
    ]
    tallies = {}
    files: dict[tuple[str, bool], list[tuple[Path, Mutant]]] = {}
    for kind, seeds, load in kinds:
        tally = Tally()
        files[kind, True], files[kind, False] = [], []
        for mutant in mutants(rng, seeds, MUTANTS_PER_KIND):
            path = tmp_path / f"{kind}-{mutant.index:04d}.yaml"
            path.write_bytes(mutant.data)
            valid = check_outcome(load, path, mutant, tally)
            files[kind, valid].append((path, mutant))
        tallies[kind] = tally

    # The CLI sample: half valid deployments files (they reach the placement actor), half
    # invalid; a mutated cluster file one time in four, else the example.
    exits = {0: 0, 3: 0, 4: 0}
    for run in range(CLI_SAMPLE):
        deployments, d_mutant = rng.choice(files["deployments", run % 2 == 0])
        if rng.random() < 0.25:
            cluster, c_mutant = rng.choice(files["cluster", rng.random() < 0.5])
        else:
            cluster, c_mutant = EXAMPLES / "cluster.yaml", None
        where = f"{d_mutant.describe()}\ncluster {c_mutant.describe() if c_mutant else 'example'}"
        code = cli.main(["place", str(deployments), "--cluster", str(cluster)])
        out, err = capsys.readouterr()
        assert code in exits, f"exit {code}\n{err}\n{where}"
        assert "Traceback" not in out + err, where
        if code == cli.EXIT_INVALID_SPEC:
            named = re.search(
                rf"({re.escape(str(deployments))}|{re.escape(str(cluster))}):\d+", err
            )
            assert named or "the file is empty" in err, f"{err}\n{where}"
        exits[code] += 1

    summary = [
        f"config fuzz: {kind}: {t.valid + t.invalid} mutants, {t.invalid} refused "
        f"(ConfigFileError), {t.valid} valid"
        for kind, t in tallies.items()
    ]
    summary.append(f"config fuzz: cli place --cluster, {CLI_SAMPLE} runs: exit codes {exits}")
    if request.config.getoption("capture") == "no":  # -s: show the counts
        with capsys.disabled():
            print("\n" + "\n".join(summary))  # noqa: T201 - the fuzz's report
    for tally in tallies.values():
        assert tally.invalid >= (tally.valid + tally.invalid) // 2  # the fuzz exercises errors
        assert tally.valid > 0  # ... and does not only break files
    assert exits[3] > 0
    assert exits[0] + exits[4] > 0


def test_the_fuzz_seed_files_are_valid(tmp_path: Path) -> None:
    for number, data in enumerate(EXTRA_CLUSTERS):
        path = tmp_path / f"cluster-{number}.yaml"
        path.write_bytes(data)
        assert isinstance(load_cluster(path), ClusterFile)
    for number, data in enumerate(EXTRA_DEPLOYMENTS):
        path = tmp_path / f"deployments-{number}.yaml"
        path.write_bytes(data)
        assert load_deployments(path, environ={}, known_nodes=KNOWN)


def test_mutated_files_load_or_fail_the_same_way_with_pyyamls_own_parser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_files, "_LOADER", yaml.SafeLoader)  # as without libyaml
    rng = random.Random(SEED + 1)
    tally = Tally()
    seeds = [(EXAMPLES / "deployments.yaml").read_bytes(), *EXTRA_DEPLOYMENTS]
    for mutant in mutants(rng, seeds, 300):
        path = tmp_path / f"deployments-{mutant.index:04d}.yaml"
        path.write_bytes(mutant.data)
        check_outcome(lambda p: load_deployments(p, environ={}), path, mutant, tally)
    seeds = [(EXAMPLES / "cluster.yaml").read_bytes(), *EXTRA_CLUSTERS]
    for mutant in mutants(rng, seeds, 300):
        path = tmp_path / f"cluster-{mutant.index:04d}.yaml"
        path.write_bytes(mutant.data)
        check_outcome(load_cluster, path, mutant, tally)
    assert tally.invalid >= 300
