"""The service's lease on Ray: taken once per namespace, ended on release (real Ray cluster)."""

import os

import pytest

from placement_actors import ServiceRunningError
from placement_actors.backends import ray as on_ray
from placement_actors.backends.ray.lease import _Holder

pytestmark = pytest.mark.usefixtures("ray_nodes")


def test_a_lease_is_taken_once_and_free_again_as_soon_as_it_is_released() -> None:
    lease = on_ray.take_service_lease()
    try:
        assert on_ray.lease_holder() == lease.holder
        assert f"pid {os.getpid()}" in lease.holder
        with pytest.raises(ServiceRunningError, match=f"pid {os.getpid()}"):
            on_ray.take_service_lease()
    finally:
        lease.release()
    assert lease.released
    assert on_ray.lease_holder() is None  # the handle is still referenced: released, not dropped
    again = on_ray.take_service_lease()
    again.release()
    again.release()  # a second release does nothing


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        ({"words": "a driver", "job": "01000000"}, "a driver"),
        ({"words": "a host", "actor_id": 7, "job": ["x"]}, "a host"),  # odd fields dropped
        ({"words": "w" * 10_000}, "w" * 200),  # bounded
        (("a driver", None), "an actor that answered ('a driver', None)"),
        ({"words": 3}, "an actor that answered {'words': 3}"),
    ],
)
def test_what_a_lease_answers_is_read_as_what_it_is(answer: object, words: str) -> None:
    holder = _Holder.of(answer)
    assert holder.words == words
    assert all(v is None or isinstance(v, str) for v in (holder.actor_id, holder.job))
