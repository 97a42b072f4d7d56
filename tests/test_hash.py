"""Hash: paths, attributes, order, equality with arrays, conversion, merging and copying."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from karabo_async import Hash


def test_nested_paths_create_intermediate_hashes() -> None:
    h = Hash()
    h["a.b.c"] = 1
    assert isinstance(h["a"], Hash) and isinstance(h["a.b"], Hash)
    assert h["a.b.c"] == 1 and h["a"]["b"]["c"] == 1
    assert "a.b" in h and "a.b.c" in h and "a.x" not in h and "a.b.c.d" not in h
    assert 3 not in h and "" not in h and "a..b" not in h  # type: ignore[comparison-overlap]
    assert list(h) == ["a"]


def test_constructors() -> None:
    frame = np.zeros((2, 2))
    h = Hash(image=frame, frame_id=7)
    assert h["image"] is frame and h["frame_id"] == 7
    assert list(Hash([("x", 1), ("y.z", 2)]).paths()) == ["x", "y.z"]
    assert Hash({"b": 1, "a": 2}, c=3).keys() == {"a": 0, "b": 0, "c": 0}.keys()
    assert list(Hash({"b": 1, "a": 2}, c=3)) == ["b", "a", "c"]
    plain = {"inner": {"x": 1}}
    assert Hash(plain)["inner"] == {"x": 1} and type(Hash(plain)["inner"]) is dict


def test_missing_path_raises_key_error_naming_it() -> None:
    h = Hash(a=Hash(b=1), n=5)
    for path in ["x", "a.x", "a.b.c", "n.x", "x.y.z"]:
        with pytest.raises(KeyError) as info:
            h[path]
        assert info.value.args[0] == path
    assert h.get("a.x", "dflt") == "dflt" and h.get("a.b") == 1
    with pytest.raises(KeyError, match=r"a\.x"):
        del h["a.x"]


@pytest.mark.parametrize("bad", ["", "a..b", ".a", "a."])
def test_invalid_paths_rejected_on_set(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid Hash"):
        Hash()[bad] = 1


def test_non_str_keys_rejected() -> None:
    with pytest.raises(TypeError, match="str"):
        Hash()[1] = 1  # type: ignore[index]
    with pytest.raises(TypeError, match="str"):
        Hash.from_dict({1: 2})  # type: ignore[dict-item]


def test_setting_through_a_leaf_is_an_error() -> None:
    h = Hash(a=1)
    with pytest.raises(TypeError, match="'a' holds a value of type int"):
        h["a.b"] = 2
    assert h["a"] == 1


def test_delete_nested_and_its_attributes() -> None:
    h = Hash()
    h["a.b"] = 1
    h["a.c"] = 2
    h.set_attribute("a.b", "unit", "mm")
    del h["a.b"]
    assert list(h["a"]) == ["c"]
    h["a.b"] = 3
    assert h.get_attributes("a.b") == {}


def test_attributes() -> None:
    h = Hash()
    h["m.pos"] = 1.0
    h.set_attribute("m.pos", "unit", "mm")
    h.set_attribute("m.pos", "min", -5)
    assert h.get_attribute("m.pos", "unit") == "mm"
    assert h.get_attributes("m.pos") == {"unit": "mm", "min": -5}
    assert h.has_attribute("m.pos", "min") and not h.has_attribute("m.pos", "max")
    with pytest.raises(KeyError, match=r"m\.pos@max"):
        h.get_attribute("m.pos", "max")
    with pytest.raises(KeyError, match="nope"):
        h.set_attribute("nope", "unit", "mm")
    h.set_attributes("m.pos", {"unit": "um"})  # replaces all
    assert h.get_attributes("m.pos") == {"unit": "um"}
    h["m.pos"] = 2.0  # a new value keeps its attributes
    assert h.get_attribute("m.pos", "unit") == "um"
    h.get_attributes("m.pos")["unit"] = "changed"  # a copy
    assert h.get_attribute("m.pos", "unit") == "um"
    h.set_attribute("m", "description", "motor")  # Hash nodes have attributes too
    assert h.get_attributes("m") == {"description": "motor"}
    with pytest.raises(TypeError):
        h.set_attribute("m", "", 1)


def test_order_keys_values_items_len() -> None:
    h = Hash()
    for key in ["z", "a", "m"]:
        h[key] = key.upper()
    assert list(h) == list(h.keys()) == ["z", "a", "m"]
    assert list(h.values()) == ["Z", "A", "M"]
    assert list(h.items()) == [("z", "Z"), ("a", "A"), ("m", "M")]
    assert len(h) == 3


def test_paths_depth_first_in_order() -> None:
    h = Hash()
    h["b.y"] = 1
    h["a"] = 2
    h["b.x.deep"] = 3
    h["e"] = Hash()
    h["l"] = [Hash(q=1)]
    assert h.paths() == ["b.y", "b.x.deep", "a", "e", "l"]


def test_equality() -> None:
    def make(order: list[str]) -> Hash:
        h = Hash()
        for key in order:
            h[key] = np.arange(3) if key == "arr" else 1
        h.set_attribute("arr", "unit", "V")
        return h

    assert make(["x", "arr"]) == make(["arr", "x"])  # order-insensitive, like dict
    other = make(["x", "arr"])
    other.set_attribute("arr", "unit", "A")
    assert other != make(["x", "arr"])
    with_float = make(["arr"])
    with_float["arr"] = np.arange(3.0)
    assert with_float != make(["arr"])  # same values, other dtype
    reshaped = make(["arr"])
    reshaped["arr"] = np.arange(3).reshape(3, 1)
    assert reshaped != make(["arr"])
    assert Hash(a=[np.zeros(2), Hash(b={"c": np.ones(1)})]) == Hash(
        a=[np.zeros(2), Hash(b={"c": np.ones(1)})]
    )
    assert Hash(a=[np.zeros(2)]) != Hash(a=[np.ones(2)])
    assert Hash(a=np.zeros(2, "<f8")) != Hash(a=np.zeros(2, ">f8"))
    assert Hash(a=1) != {"a": 1}
    with pytest.raises(TypeError):
        hash(Hash())


def test_to_dict_and_from_dict() -> None:
    h = Hash.from_dict({"a": {"b": 1, "c": [{"d": 2}, 3]}, "e.f": 4})
    assert isinstance(h["a"], Hash) and isinstance(h["a.c"][0], Hash)
    assert h["e.f"] == 4
    h.set_attribute("a.b", "unit", "mm")
    assert h.to_dict() == {"a": {"b": 1, "c": [{"d": 2}, 3]}, "e": {"f": 4}}
    assert type(h.to_dict()["a"]) is dict


def test_update_merges_nested() -> None:
    h = Hash()
    h["a.x"] = 1
    h["a.y"] = 2
    h.set_attribute("a.x", "unit", "mm")
    other = Hash()
    other["a.y"] = 20
    other["a.x"] = 10
    other["a.z"] = 30
    other["b"] = 4
    other.set_attribute("a.x", "min", 0)
    h.update(other)
    assert h.paths() == ["a.x", "a.y", "a.z", "b"]
    assert (h["a.x"], h["a.y"], h["a.z"]) == (10, 20, 30)
    assert h.get_attributes("a.x") == {"unit": "mm", "min": 0}
    other["a.z"] = 99  # merged nodes are copies, not shared
    assert h["a.z"] == 30
    h.update({"c.d": 5}, e=6)
    assert h["c.d"] == 5 and h["e"] == 6
    h.update([("a", Hash(w=1))])
    assert list(h["a"]) == ["x", "y", "z", "w"]


def test_copy_copies_the_tree_and_deepcopy_the_leaves() -> None:
    arr = np.zeros(2)
    h = Hash(arr=arr, lst=[Hash(x=1)])
    h["n.v"] = 1
    h.set_attribute("n.v", "unit", "mm")
    c = h.copy()
    c["n.v"] = 2
    c.set_attribute("n.v", "unit", "um")
    c["lst"][0]["x"] = 5
    assert h["n.v"] == 1 and h.get_attribute("n.v", "unit") == "mm" and h["lst"][0]["x"] == 1
    assert c["arr"] is arr and copy.copy(h)["arr"] is arr
    d = copy.deepcopy(h)
    assert d == h and d["arr"] is not arr


def test_pickle() -> None:
    h = Hash(a=np.arange(3))
    h["b.c"] = "x"
    h.set_attribute("b.c", "unit", "mm")
    back = pickle.loads(pickle.dumps(h))
    assert back == h and back.get_attributes("b.c") == {"unit": "mm"}


def test_repr_is_readable() -> None:
    h = Hash(a=1)
    h["b.c"] = "x"
    h.set_attribute("a", "unit", "mm")
    assert repr(h) == "Hash({'a': 1, 'b': Hash({'c': 'x'})}, attrs={'a': {'unit': 'mm'}})"


def test_mutable_mapping_helpers_follow_paths() -> None:
    h = Hash()
    h["a.b"] = 1
    assert h.pop("a.b") == 1 and "a.b" not in h
    assert h.setdefault("a.c", 5) == 5 and h["a.c"] == 5
    h.clear()
    assert len(h) == 0


keys = st.text(st.characters(blacklist_characters=".", blacklist_categories=["Cs"]), min_size=1, max_size=5)


@given(st.lists(st.tuples(st.lists(keys, min_size=1, max_size=3), st.integers()), max_size=10))
def test_paths_from_random_sets(assignments: list[tuple[list[str], int]]) -> None:
    h = Hash()
    expected: dict[str, Any] = {}
    for parts, value in assignments:
        path = ".".join(parts)
        try:
            h[path] = value
        except TypeError:
            continue  # a prefix already holds a leaf
        expected = {p: v for p, v in expected.items() if not p.startswith(path + ".")}
        expected[path] = value
    assert {p: h[p] for p in h.paths()} == expected
    assert Hash.from_dict(h.to_dict()) == h
