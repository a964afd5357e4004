"""The package's shape: imports point down the layers, and Ray is imported in one module only."""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import placement_actors
from placement_actors.domain import errors

PACKAGE = Path(placement_actors.__file__).parent
RAY_PACKAGE = "placement_actors.backends.ray"

# Which of our own layers each layer may import (domain <- policies <- actors -> backends).
ALLOWED = {
    "domain": {"domain"},
    "policies": {"domain", "policies"},
    "backends": {"domain", "policies", "backends"},
    "actors": {"domain", "policies", "actors", "backends"},
}
# Third-party packages each layer may import; the standard library is always allowed.
THIRD_PARTY = {
    "domain": set(),
    "policies": set(),
    "actors": {"pykka"},
    "backends": {"pykka"},
}


def modules() -> list[tuple[str, ast.Module]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts).removesuffix(".__init__")
        found.append((name, ast.parse(path.read_text(encoding="utf-8"))))
    return found


def imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ALLOWED else None


def on_the_ray_side(module: str) -> bool:
    return module == RAY_PACKAGE or module.startswith(RAY_PACKAGE + ".")


def test_ray_is_imported_only_in_the_ray_package() -> None:
    offenders = [
        name
        for name, tree in modules()
        if not on_the_ray_side(name)
        and any(i == "ray" or i.startswith("ray.") for i in imported(tree))
    ]
    assert offenders == []


def test_the_walk_sees_every_module_and_would_catch_a_ray_import() -> None:
    names = [name for name, _ in modules()]
    assert "placement_actors.actors.deployment_placement" in names
    assert imported(ast.parse("import ray.util\nfrom ray import get")) == {"ray.util", "ray"}


@pytest.mark.parametrize(("name", "tree"), modules(), ids=[name for name, _ in modules()])
def test_imports_point_down_the_layers(name: str, tree: ast.Module) -> None:
    own = layer(name)
    if own is None:
        return  # the package root, cli and config files sit on top and may import anything
    for target in imported(tree):
        if target.startswith("placement_actors."):
            assert layer(target) in ALLOWED[own], f"{name} imports {target}"
        elif target != "placement_actors":
            top = target.split(".")[0]
            if top not in importlib.sys.stdlib_module_names:  # type: ignore[attr-defined]
                assert top in THIRD_PARTY[own] or (on_the_ray_side(name) and top == "ray"), (
                    f"{name} imports {target}"
                )


def test_public_modules_declare_complete_all() -> None:
    for info in pkgutil.walk_packages(placement_actors.__path__, "placement_actors."):
        if info.name.endswith("__main__") or info.ispkg:
            continue
        module = importlib.import_module(info.name)
        public = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and getattr(value, "__module__", None) == info.name
            and callable(value)
        }
        declared = set(getattr(module, "__all__", ()))
        assert public <= declared, f"{info.name}.__all__ misses {sorted(public - declared)}"


def test_the_package_root_exports_its_whole_all() -> None:
    assert all(hasattr(placement_actors, name) for name in placement_actors.__all__)
    assert len(set(placement_actors.__all__)) == len(placement_actors.__all__)


def test_every_error_of_the_tree_and_every_event_a_subscriber_is_told_is_at_the_root() -> None:
    tree = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.PlacementError)
    }
    told = {"NodeJoined", "NodeLost", "ReplicaLost", "ReplicaReplaced", "ReplicaMoved"}
    subscribing = {"Subscribe", "Unsubscribe"}
    assert tree | told | subscribing <= set(placement_actors.__all__)


IMPURE = {"os", "threading", "time", "random", "socket", "subprocess", "asyncio", "logging"}
"""Standard modules that read the environment, take locks, tell the time or do I/O."""


@pytest.mark.parametrize(
    ("name", "tree"),
    [(n, t) for n, t in modules() if layer(n) in {"domain", "policies"}],
    ids=[n for n, _ in modules() if layer(n) in {"domain", "policies"}],
)
def test_values_and_policies_are_pure(name: str, tree: ast.Module) -> None:
    touched = {target.split(".")[0] for target in imported(tree)} & IMPURE
    assert touched == set(), f"{name} imports {sorted(touched)}"
