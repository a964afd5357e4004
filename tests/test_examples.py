"""The examples run as written."""

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from placement_actors import (
    ClusterView,
    Deployment,
    DeploymentPlacementActor,
    GetClusterView,
    PlanningActor,
)
from placement_actors.backends import ray as on_ray

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.mark.usefixtures("ray_nodes")
def test_the_controller_actor_example_places_learns_its_master_and_releases() -> None:
    example = load("controller_actor")
    planner = PlanningActor.start(backend=on_ray.RayBackend())
    placement = DeploymentPlacementActor.start(
        topology=on_ray.get_cluster_topology(), planner=planner
    )
    address = example.run_controller(
        placement, Deployment(name="example", model="meta-llama/Llama-3.1-8B", gpus=2)
    )
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+:\d+", address)
    view = placement.ask(GetClusterView(), timeout=30)
    assert isinstance(view, ClusterView)
    assert view.deployments == ()  # the controller released it
