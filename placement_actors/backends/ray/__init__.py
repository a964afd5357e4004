"""Ray, the distributed engine: the only package of placement-actors that imports ``ray``.

It turns the service's decisions into Ray placement groups and maps Ray's failures and states
to the `placement_actors.domain` values (`GroupStatus`, the `PlacementError` tree; always
``raise ... from exc``). One concern per module, one implementation of each Ray operation:

- `connection`: connect a process to Ray in the service's namespace.
- `cluster`: the alive nodes, their GPUs, head flag and labels.
- `groups`: create, wait for, remove and reap placement groups; Ray's states as `GroupStatus`.
- `bundles`: tasks inside a bundle: its node's IP, free ports.
- `engines`: options that run a controller's engine in a replica's bundle (`bundle_options`).
- `backend`: `RayBackend`, what the actors use (every method returns at once).
- `checkpoints`: `GcsCheckpoints`, the service's records in Ray's GCS key-value store.
- `membership`: `ClusterWatcher`, nodes that join or die, groups Ray reschedules, GPUs in use.
- `hosting`: a service object in a named, detached Ray actor, and calls to it.
- `local`: `LocalCluster`, several raylets with logical GPUs on one machine.
- `port_agents`: one long-lived actor per node that finds free ports there (no task per bundle).

The blocking functions (`groups.build_pg`, `bundles.get_free_port_in_bundle`, ...) serve
drivers, the CLI and `placement_actors.ray_placement`; the actors only use `RayBackend`, whose
methods call the same functions.
"""

from placement_actors.backends.ray.backend import RayBackend
from placement_actors.backends.ray.bundles import (
    PROCESS_PORTS,
    RAY_WORKER_PORTS,
    get_bundle_node_ip,
    get_free_port_in_bundle,
    probe_bundle,
    release_ports,
    run_in_bundle,
    submit_in_bundle,
)
from placement_actors.backends.ray.checkpoints import CHECKPOINT_ROOT, GcsCheckpoints
from placement_actors.backends.ray.cluster import (
    EGRESS_LABEL,
    HEAD_RESOURCE,
    NAME_LABEL,
    alive_nodes,
    free_resources,
    get_cluster_topology,
    get_egress_nodes,
    gpus_held_outside,
    gpus_in_use,
    is_egress,
    node_names,
    node_topology,
)
from placement_actors.backends.ray.connection import (
    NAMESPACE,
    check_namespace,
    connect,
    connected,
)
from placement_actors.backends.ray.engines import bundle_options, replica_group
from placement_actors.backends.ray.groups import (
    READY_TIMEOUT_S,
    GroupTable,
    build_pg,
    build_replica_pg,
    bundle_nodes,
    create_group,
    find_group,
    find_group_by_id,
    get_held_groups,
    group_gpus,
    group_states,
    group_table,
    groups_in,
    live_groups,
    remove_group,
    remove_named_pgs_with_prefix,
    status_of,
)
from placement_actors.backends.ray.hosting import RayEventual, RemoteHost, find_host, start_host
from placement_actors.backends.ray.lease import (
    LEASE_NAME,
    ServiceLease,
    end_lease_of,
    lease_holder,
    take_service_lease,
)
from placement_actors.backends.ray.local import LocalCluster
from placement_actors.backends.ray.membership import (
    JOIN_WAIT_S,
    LOSS_WATCH_S,
    RESEND_S,
    SETTLE_S,
    ClusterWatcher,
    GpuUse,
    read_gpu_use,
)
from placement_actors.backends.ray.port_agents import (
    AGENT_NAME_ROOT,
    AGENT_TIMEOUT_S,
    forget_port_agent,
    port_agent,
    probe_with_agent,
    start_port_agents,
)

__all__ = [
    "AGENT_NAME_ROOT",
    "AGENT_TIMEOUT_S",
    "CHECKPOINT_ROOT",
    "EGRESS_LABEL",
    "HEAD_RESOURCE",
    "JOIN_WAIT_S",
    "LEASE_NAME",
    "LOSS_WATCH_S",
    "NAMESPACE",
    "NAME_LABEL",
    "PROCESS_PORTS",
    "RAY_WORKER_PORTS",
    "READY_TIMEOUT_S",
    "RESEND_S",
    "SETTLE_S",
    "ClusterWatcher",
    "GcsCheckpoints",
    "GpuUse",
    "GroupTable",
    "LocalCluster",
    "RayBackend",
    "RayEventual",
    "RemoteHost",
    "ServiceLease",
    "alive_nodes",
    "build_pg",
    "build_replica_pg",
    "bundle_nodes",
    "bundle_options",
    "check_namespace",
    "connect",
    "connected",
    "create_group",
    "end_lease_of",
    "find_group",
    "find_group_by_id",
    "find_host",
    "forget_port_agent",
    "free_resources",
    "get_bundle_node_ip",
    "get_cluster_topology",
    "get_egress_nodes",
    "get_free_port_in_bundle",
    "get_held_groups",
    "gpus_held_outside",
    "gpus_in_use",
    "group_gpus",
    "group_states",
    "group_table",
    "groups_in",
    "is_egress",
    "lease_holder",
    "live_groups",
    "node_names",
    "node_topology",
    "port_agent",
    "probe_bundle",
    "probe_with_agent",
    "read_gpu_use",
    "release_ports",
    "remove_group",
    "remove_named_pgs_with_prefix",
    "replica_group",
    "run_in_bundle",
    "start_host",
    "start_port_agents",
    "status_of",
    "submit_in_bundle",
    "take_service_lease",
]
