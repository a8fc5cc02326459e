"""open_session's `left_pad` meta: checked before any cache is reserved, with typed errors; only
families whose steps honour per-row pads accept a padded batch (the others say so)."""
import pytest

from zswarm.errors import BadInputError
from zswarm.models.families import FAMILIES
from zswarm.server.validation import meta_left_pad

FAMILY = {family.name: family for family in FAMILIES}


def test_pads_are_optional_and_all_zeros_mean_none():
    assert meta_left_pad({}, 2, 8, FAMILY["llama"]) is None
    assert meta_left_pad({"left_pad": [0, 0]}, 2, 8, FAMILY["bloom"]) is None
    assert meta_left_pad({"left_pad": [3, 0]}, 2, 8, FAMILY["llama"]) == [3, 0]
    assert meta_left_pad({"left_pad": [0, 7]}, 2, 8, FAMILY["mixtral"]) == [0, 7]


@pytest.mark.parametrize("value, fragment", [([1], "list of 2 integers"), ("12", "list of 2 integers"),
                                             ([1, True], "list of 2 integers"), ([1.0, 0], "list of 2 integers"),
                                             ([-1, 0], "must lie in"), ([0, 8], "must lie in")])
def test_bad_pads_get_bad_input(value, fragment):
    with pytest.raises(BadInputError, match=fragment):
        meta_left_pad({"left_pad": value}, 2, 8, FAMILY["llama"])


@pytest.mark.parametrize("name", ["bloom", "falcon"])
def test_families_without_left_padding_refuse_it_by_name(name):
    with pytest.raises(BadInputError, match=f"left padding is not supported for family {name}"):
        meta_left_pad({"left_pad": [2, 0]}, 2, 8, FAMILY[name])
