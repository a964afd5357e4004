"""Checked values: a value made here through its constructors is not checked a second time."""

import copy
import dataclasses
import pickle
from collections.abc import Callable

import pytest

from placement_actors import (
    ApiKey,
    Deployment,
    InvalidSpecError,
    Place,
    PlaceMany,
    PlacementConstraints,
    ProviderKind,
)
from placement_actors.domain.checked import MAX_INSIDE, is_checked
from placement_actors.domain.validation import revalidated


def round_trip(value: object) -> object:
    return pickle.loads(pickle.dumps(value))  # noqa: S301 - our own bytes


def remote_place() -> Place:
    key = ApiKey("sk-test")
    return Place(
        Deployment(name="chat", model="gpt-4o", api_key=key),
        PlacementConstraints(egress_preference={(ProviderKind.OPENAI, key): ("cpu-1",)}),
    )


def forged_deployment(**fields: object) -> Deployment:
    """A Deployment built around its constructor (as unpickling or a hack would)."""
    forged = object.__new__(Deployment)
    for field in dataclasses.fields(Deployment):
        object.__setattr__(forged, field.name, fields.get(field.name, field.default))
    return forged


def test_a_value_made_through_its_constructors_is_checked_all_the_way_down() -> None:
    place = remote_place()
    assert is_checked(place)
    assert is_checked(place.deployment)
    assert is_checked(place.constraints)
    assert is_checked(place.deployment.api_key)
    assert revalidated(place, Place) is place  # taken as it is: no second check


@pytest.mark.parametrize(
    "arrived",
    [
        pytest.param(round_trip, id="unpickled"),
        pytest.param(copy.copy, id="copied"),
        pytest.param(copy.deepcopy, id="deep-copied"),
    ],
)
def test_a_value_that_did_not_pass_its_constructor_here_is_checked_again(arrived: object) -> None:
    place = arrived(remote_place())  # type: ignore[operator]
    assert not is_checked(place)
    rebuilt = revalidated(place, Place)
    assert rebuilt is not place
    assert rebuilt == place
    assert is_checked(rebuilt)


def test_a_checked_message_around_an_unchecked_value_is_not_checked() -> None:
    # Place's own constructor only sees a Deployment; the value inside was never checked.
    place = Place(forged_deployment(name="bad", model="m", replicas=-3))
    assert not is_checked(place)
    with pytest.raises(InvalidSpecError, match="replicas must be an integer >= 1"):
        revalidated(place, Place)
    batch = PlaceMany((Place(Deployment(name="ok", model="m")), place))
    assert not is_checked(batch)
    with pytest.raises(InvalidSpecError, match="replicas"):
        revalidated(batch, PlaceMany)


def test_the_mark_cannot_be_faked_by_a_class_attribute() -> None:
    class Pretender(Deployment):
        __slots__ = ()
        _checked = True  # a class attribute, not the slot

    pretender = object.__new__(Pretender)
    assert not is_checked(pretender)


def test_the_mark_takes_no_part_in_equality_hashing_or_repr() -> None:
    made, unpickled = remote_place(), round_trip(remote_place())
    assert isinstance(unpickled, Place)
    assert made == unpickled
    assert hash(made.deployment) == hash(unpickled.deployment)
    assert repr(made) == repr(unpickled)
    assert "_checked" not in repr(made)


def test_a_field_set_again_behind_the_constructors_back_unmarks_the_value() -> None:
    deployment = Deployment(name="ok", model="m", gpus=1)
    place = Place(deployment)
    object.__setattr__(deployment, "replicas", -3)  # frozen values can still be forced
    assert not is_checked(deployment)
    assert not is_checked(place)  # the change is inside it
    with pytest.raises(InvalidSpecError, match="replicas must be an integer >= 1"):
        revalidated(place, Place)


def test_a_batch_whose_place_changed_after_it_was_made_is_checked_again() -> None:
    inner = Place(Deployment(name="ok", model="m"))
    batch = PlaceMany((inner,))
    object.__setattr__(inner, "deployment", forged_deployment(name="x", model="m", replicas=0))
    assert not is_checked(batch)
    with pytest.raises(InvalidSpecError, match="replicas"):
        revalidated(batch, PlaceMany)


def test_a_subclass_with_a_slot_of_its_own_is_checked_again_when_its_slot_is_unset() -> None:
    class Tagged(ApiKey):
        __slots__ = "tag"  # noqa: PLC0205 - one string, a single slot: what is tested here

    key = Tagged("sk-test")
    assert not is_checked(key)  # "tag" was never set: nothing says the value is whole
    assert revalidated(key, ApiKey) == key  # rebuilt as a plain, checked ApiKey


def test_an_api_key_cannot_be_changed() -> None:
    key = ApiKey("sk-test")
    with pytest.raises(AttributeError, match="immutable"):
        key._secret = "changed"  # noqa: S105 - not a password: a change that must be refused
    with pytest.raises(AttributeError, match="immutable"):
        del key._secret
    assert key.reveal() == "sk-test"
    assert is_checked(key)


@pytest.mark.parametrize(
    "force",
    [
        lambda c: object.__setattr__(c.label_selector, "matches", ()),
        lambda c: object.__setattr__(c.label_selector.matches[0], "values", ("b",)),
        lambda c: object.__delattr__(c.label_selector.matches[0], "negated"),
        lambda c: object.__setattr__(next(iter(c.egress_preference))[1], "_secret", "sk-other"),
    ],
    ids=["selector-field", "an-entry-of-the-selector", "a-deleted-field", "a-key-in-a-mapping"],
)
def test_a_change_forced_four_levels_down_unmarks_every_value_around_it(
    force: Callable[[PlacementConstraints], None],
) -> None:
    key = (ProviderKind.OPENAI, ApiKey("sk-test"))
    constraints = PlacementConstraints(
        label_selector={"zone": "in(a,c)"}, egress_preference={key: ("e1",)}
    )
    batch = PlaceMany((Place(Deployment(name="ok", model="m"), constraints),))
    assert is_checked(batch)
    force(constraints)
    assert not is_checked(constraints)
    assert not is_checked(batch)  # batch -> tuple -> Place -> constraints -> ...


def test_a_value_whose_class_was_swapped_after_construction_is_not_checked() -> None:
    class Posing(Deployment):
        __slots__ = ()

    deployment = Deployment(name="ok", model="m")
    place = Place(deployment)
    object.__setattr__(deployment, "__class__", Posing)
    assert not is_checked(deployment)
    assert not is_checked(place)
    rebuilt = revalidated(place, Place)  # through the constructors of the class it has now
    assert rebuilt == place
    assert is_checked(rebuilt)


def test_a_mark_lists_each_value_once_and_never_more_than_its_bound() -> None:
    keys: dict[tuple[ProviderKind, ApiKey | None], tuple[str, ...]] = {
        (ProviderKind.OPENAI, ApiKey(f"sk-{i}")): ("e1",) for i in range(MAX_INSIDE + 1)
    }
    shared = PlacementConstraints()
    few = PlaceMany(tuple(Place(Deployment(name=f"d{i}", model="m"), shared) for i in range(20)))
    assert is_checked(few)  # 20 places, 20 deployments, one constraints listed once: 41 values
    many = PlacementConstraints(egress_preference=keys)  # more keys than a mark may list
    assert not is_checked(many)
    assert revalidated(many, PlacementConstraints) == many  # checked again, the plain way
    batch = PlaceMany(tuple(Place(Deployment(name=f"d{i}", model="m")) for i in range(40)))
    assert not is_checked(batch)  # 40 places, 40 deployments, 40 constraints
    assert revalidated(batch, PlaceMany) == batch


def test_a_value_shared_across_a_message_is_rebuilt_once_and_stays_shared() -> None:
    keys: dict[tuple[ProviderKind, ApiKey | None], tuple[str, ...]] = {
        (ProviderKind.OPENAI, ApiKey(f"sk-{i}")): ("e1",) for i in range(MAX_INSIDE + 1)
    }
    shared = PlacementConstraints(egress_preference=keys)  # too many keys to be marked
    batch = PlaceMany(tuple(Place(Deployment(name=f"d{i}", model="m"), shared) for i in range(50)))
    arrived = pickle.loads(pickle.dumps(batch))  # noqa: S301 - our own bytes; sharing survives
    rebuilt = revalidated(arrived, PlaceMany)
    assert rebuilt == batch
    assert len({id(p.constraints) for p in rebuilt.places}) == 1  # one rebuild, not fifty
