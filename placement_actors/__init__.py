"""placement-actors: decide where model-serving replicas run on a GPU cluster, and reserve them.

The public API is re-exported here; this module never imports Ray.
"""

import logging

from placement_actors.actors.deployment_placement import (
    DeploymentPlacementActor,
    DeploymentPlacementProxy,
    deployment_placement_proxy,
)
from placement_actors.actors.messages import (
    ClusterView,
    GetClusterView,
    GpuHolding,
    NodeView,
    Place,
    Release,
    Released,
)
from placement_actors.domain.constraints import EgressKey, GpuStrategy, PlacementConstraints
from placement_actors.domain.deployments import (
    ApiKey,
    CustomRuntime,
    Deployment,
    LocalGpu,
    ProviderKind,
    RemoteNetwork,
    Runtime,
    RuntimeKind,
    TransportKind,
    infer_runtime,
)
from placement_actors.domain.errors import (
    CapacityError,
    ConfigFileError,
    InvalidSpecError,
    NoEgressNodesError,
    NoGpuNodesError,
    NotEnoughGpusError,
    PlacementError,
    UnknownMessageError,
)
from placement_actors.domain.results import NodeAssignment, PlacementResult, Rejection
from placement_actors.domain.topology import NodeTopology

__all__ = [
    "ApiKey",
    "CapacityError",
    "ClusterView",
    "ConfigFileError",
    "CustomRuntime",
    "Deployment",
    "DeploymentPlacementActor",
    "DeploymentPlacementProxy",
    "EgressKey",
    "GetClusterView",
    "GpuHolding",
    "GpuStrategy",
    "InvalidSpecError",
    "LocalGpu",
    "NoEgressNodesError",
    "NoGpuNodesError",
    "NodeAssignment",
    "NodeTopology",
    "NodeView",
    "NotEnoughGpusError",
    "Place",
    "PlacementConstraints",
    "PlacementError",
    "PlacementResult",
    "ProviderKind",
    "Rejection",
    "Release",
    "Released",
    "RemoteNetwork",
    "Runtime",
    "RuntimeKind",
    "TransportKind",
    "UnknownMessageError",
    "deployment_placement_proxy",
    "infer_runtime",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
