import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from placement_actors import InvalidSpecError, LabelSelector, PlacementConstraints
from placement_actors.domain.checked import is_checked
from placement_actors.domain.labels import MAX_SELECTOR_VALUES


@pytest.mark.parametrize(
    ("value", "labels", "picked"),
    [
        ("a", {"zone": "a"}, True),
        ("a", {"zone": "b"}, False),
        ("a", {}, False),
        ("!a", {"zone": "b"}, True),
        ("!a", {"zone": "a"}, False),
        ("!a", {}, True),  # a node without the label is not "a"
        ("in(a,b)", {"zone": "b"}, True),
        ("in(a,b)", {"zone": "c"}, False),
        ("in(a,b)", {}, False),
        ("!in(a,b)", {"zone": "c"}, True),
        ("!in(a,b)", {"zone": "a"}, False),
        ("!in(a,b)", {}, True),
    ],
)
def test_each_of_rays_forms_picks_the_nodes_ray_would(
    value: str,
    labels: dict[str, str],
    picked: bool,  # noqa: FBT001 - a parametrized expectation
) -> None:
    assert LabelSelector({"zone": value}).picks(labels) is picked


def test_every_entry_must_hold() -> None:
    selector = LabelSelector({"zone": "in(a,b)", "gpu-type": "!T4"})
    assert selector.picks({"zone": "a", "gpu-type": "H100"})
    assert not selector.picks({"zone": "a", "gpu-type": "T4"})
    assert not selector.picks({"zone": "c", "gpu-type": "H100"})


@pytest.mark.parametrize(
    "selector",
    [
        {"zone": ""},
        {"zone": "in()"},
        {"zone": "in(a,)"},
        {"zone": "a,b"},
        {"zone": "!!a"},
        {"zone": "in(a(b)"},
        {"zone": "in(a, b)"},
        {"zone": " a"},
        {"zone key": "a"},
        {"": "a"},
        {"zone": 1},
        {1: "a"},
        {"zone": "x" * 257},
        {"zone": "in(" + "a," * 10**6 + "a)"},
        {f"k{i}": "v" for i in range(65)},
        {"zone": f"in({','.join(str(i) for i in range(MAX_SELECTOR_VALUES + 1))})"},
        "zone=a",
        ["zone"],
    ],
    ids=[
        "empty-value",
        "empty-in",
        "empty-member",
        "comma-outside-in",
        "double-negation",
        "paren-in-value",
        "space-after-comma",
        "space-before-value",
        "space-in-key",
        "blank-key",
        "number-value",
        "number-key",
        "value-too-long",
        "text-too-long-to-read",
        "too-many-entries",
        "too-many-values",
        "a-string",
        "a-list",
    ],
)
def test_a_malformed_selector_is_a_typed_error_naming_the_field(selector: object) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        PlacementConstraints(label_selector=selector)  # type: ignore[arg-type]
    assert caught.value.field == "label_selector"


def test_a_selector_is_an_immutable_checked_mapping_equal_to_its_dict() -> None:
    constraints = PlacementConstraints(label_selector={"zone": "in(a,b)"})
    selector = constraints.label_selector
    assert isinstance(selector, LabelSelector)
    assert selector == {"zone": "in(a,b)"}
    assert hash(selector) == hash(LabelSelector({"zone": "in(a,b)"}))
    assert is_checked(constraints)
    with pytest.raises(AttributeError):
        selector.matches = ()
    assert pickle.loads(pickle.dumps(constraints)) == constraints  # noqa: S301 - our own bytes


def test_a_selector_forced_after_construction_is_built_again_or_refused() -> None:
    selector = LabelSelector({"zone": "a"})
    object.__setattr__(selector, "_entries", {"zone": "in("})  # forced past its constructor
    with pytest.raises(InvalidSpecError):
        PlacementConstraints(label_selector=selector)
    with pytest.raises(InvalidSpecError):
        PlacementConstraints(label_selector=object.__new__(LabelSelector))


labels = st.dictionaries(st.sampled_from(["zone", "tier"]), st.sampled_from("abc"), max_size=2)
values = st.lists(st.sampled_from("abcd"), min_size=1, max_size=3)


@given(labels, st.sampled_from(["zone", "tier"]), values, st.booleans())
def test_in_and_its_negation_split_every_node_in_two(
    node: dict[str, str],
    key: str,
    listed: list[str],
    single: bool,  # noqa: FBT001 - drawn by hypothesis
) -> None:
    form = listed[0] if single else f"in({','.join(listed)})"
    chosen = LabelSelector({key: form}).picks(node)
    assert chosen != LabelSelector({key: f"!{form}"}).picks(node)
    assert chosen == (node.get(key) in (listed[:1] if single else listed))


def test_each_entry_is_kept_in_one_written_form() -> None:
    selector = LabelSelector({"zone": "in(b,a,b)", "tier": "in(x)", "gpu": "!in(T4)"})
    assert dict(selector) == {"gpu": "!T4", "tier": "x", "zone": "in(a,b)"}
    assert selector == {"zone": "in(a,b)", "tier": "x", "gpu": "!T4"}
    assert selector != {"zone": "in(a,c)", "tier": "x", "gpu": "!T4"}
    assert selector != {"zone": "in("}  # malformed: equal to no selector
