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
    GetReplicaGroups,
    GpuHolding,
    GroupState,
    NodeView,
    Place,
    PlanReplica,
    Release,
    Released,
    RemoveReplicaGroups,
    ReplicaFailed,
    ReplicaGroupsRemoved,
    ReplicaGroupsView,
    ReplicaGroupView,
)
from placement_actors.actors.planning import PlanningActor, PlanningProxy, planning_proxy
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
    group_name,
    group_prefix,
    infer_runtime,
)
from placement_actors.domain.errors import (
    BackendError,
    CapacityError,
    ConfigFileError,
    ConfigProblem,
    InvalidSpecError,
    NoEgressNodesError,
    NoGpuNodesError,
    NotEnoughGpusError,
    PlacementCancelledError,
    PlacementError,
    PlacementGroupTimeoutError,
    UnknownMessageError,
)
from placement_actors.domain.results import (
    BundleEndpoint,
    BundleStrategy,
    Eventual,
    NodeAssignment,
    PlacementResult,
    Rejection,
    ReplicaBundleSpec,
    ReplicaPlacement,
)
from placement_actors.domain.topology import NodeTopology
from placement_actors.policies.bundle_shapes import plan_replica_bundle_shape

__all__ = [
    "ApiKey",
    "BackendError",
    "BundleEndpoint",
    "BundleStrategy",
    "CapacityError",
    "ClusterView",
    "ConfigFileError",
    "ConfigProblem",
    "CustomRuntime",
    "Deployment",
    "DeploymentPlacementActor",
    "DeploymentPlacementProxy",
    "EgressKey",
    "Eventual",
    "GetClusterView",
    "GetReplicaGroups",
    "GpuHolding",
    "GpuStrategy",
    "GroupState",
    "InvalidSpecError",
    "LocalGpu",
    "NoEgressNodesError",
    "NoGpuNodesError",
    "NodeAssignment",
    "NodeTopology",
    "NodeView",
    "NotEnoughGpusError",
    "Place",
    "PlacementCancelledError",
    "PlacementConstraints",
    "PlacementError",
    "PlacementGroupTimeoutError",
    "PlacementResult",
    "PlanReplica",
    "PlanningActor",
    "PlanningProxy",
    "ProviderKind",
    "Rejection",
    "Release",
    "Released",
    "RemoteNetwork",
    "RemoveReplicaGroups",
    "ReplicaBundleSpec",
    "ReplicaFailed",
    "ReplicaGroupView",
    "ReplicaGroupsRemoved",
    "ReplicaGroupsView",
    "ReplicaPlacement",
    "Runtime",
    "RuntimeKind",
    "TransportKind",
    "UnknownMessageError",
    "deployment_placement_proxy",
    "group_name",
    "group_prefix",
    "infer_runtime",
    "plan_replica_bundle_shape",
    "planning_proxy",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
