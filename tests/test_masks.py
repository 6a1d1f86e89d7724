"""masks.py: Sentinel-2 SCL classes and Landsat C2 QA_PIXEL bits, written out from the product guides."""

from __future__ import annotations

import numpy as np
import pytest

from gridded.errors import ConfigError
from gridded.masks import MASK_RULES, MaskRule, infer_mask, parse_mask

# Sentinel-2 L2A scene classification, 0..11, and whether DESIGN.md's default keeps it
SCL_CLEAR = {
    0: False,  # no data
    1: False,  # saturated or defective
    2: True,  # dark area pixels
    3: False,  # cloud shadows
    4: True,  # vegetation
    5: True,  # bare soils
    6: True,  # water
    7: True,  # unclassified
    8: False,  # cloud medium probability
    9: False,  # cloud high probability
    10: False,  # thin cirrus
    11: True,  # snow / ice
}

# Landsat Collection 2 QA_PIXEL values from the USGS product guide, and whether they are clear
QA_PIXEL_EXAMPLES = {
    1: False,  # fill
    21824: True,  # clear land, low confidences (bits 6, 8, 10, 12, 14)
    21952: True,  # clear water (bit 7 set too)
    30048: True,  # snow (bit 5), clear
    21826: False,  # dilated cloud (bit 1)
    22280: False,  # cloud, high confidence (bit 3)
    23888: False,  # cloud shadow (bit 4)
    54596: False,  # cirrus (bit 2) with high cirrus confidence
}


def test_s2_rule_excludes_exactly_the_default_classes():
    rule = parse_mask("s2")
    assert rule.asset == "scl"
    scl = np.arange(12, dtype=np.uint8).reshape(3, 4)
    expected = np.array([SCL_CLEAR[c] for c in range(12)]).reshape(3, 4)
    np.testing.assert_array_equal(rule.clear(scl), expected)


@pytest.mark.parametrize("scl_class", range(12))
def test_s2_rule_per_class(scl_class):
    rule = MASK_RULES["s2"]
    pixels = np.full((2, 3), scl_class, dtype=np.uint8)
    assert rule.clear(pixels).tolist() == [[SCL_CLEAR[scl_class]] * 3] * 2


@pytest.mark.parametrize("bit", range(16))
def test_landsat_rule_per_bit(bit):
    rule = parse_mask("landsat")
    assert rule.asset == "qa_pixel"
    qa = np.array([[1 << bit]], dtype=np.uint16)
    assert bool(rule.clear(qa)[0, 0]) is (bit >= 5)  # fill, dilated cloud, cirrus, cloud, shadow are bits 0..4


def test_landsat_rule_on_product_guide_values():
    rule = MASK_RULES["landsat"]
    values = np.array(list(QA_PIXEL_EXAMPLES), dtype=np.uint16)
    np.testing.assert_array_equal(rule.clear(values), np.array(list(QA_PIXEL_EXAMPLES.values())))


def test_landsat_rule_on_every_uint16_value():
    values = np.arange(2**16, dtype=np.uint16).reshape(256, 256)
    expected = np.array([v % 32 == 0 for v in range(2**16)]).reshape(256, 256)  # bits 0..4 all zero
    np.testing.assert_array_equal(MASK_RULES["landsat"].clear(values), expected)


@pytest.mark.parametrize("name", ["s2", "landsat"])
def test_fill_value_reads_as_not_clear(name):
    rule = MASK_RULES[name]
    dtype = np.uint8 if rule.kind == "classes" else np.uint16
    assert not rule.clear(np.array([rule.fill_value], dtype=dtype))[0]


# --- parse_mask ------------------------------------------------------------------------------


def test_parse_mask_named_rules():
    assert parse_mask("s2") == MaskRule(asset="scl", kind="classes", values=(0, 1, 3, 8, 9, 10))
    assert parse_mask(" landsat ") == MaskRule(asset="qa_pixel", kind="bits", values=(0, 1, 2, 3, 4))
    assert parse_mask("none") is None


def test_parse_mask_classes():
    rule = parse_mask("scl:0,1")
    assert (rule.asset, rule.kind, rule.values) == ("scl", "classes", (0, 1))
    np.testing.assert_array_equal(rule.clear(np.arange(5, dtype=np.uint8)), [False, False, True, True, True])
    assert rule.spec() == "scl:0,1"


def test_parse_mask_bits():
    rule = parse_mask("qa_pixel:bits:3,4")
    assert (rule.asset, rule.kind, rule.values) == ("qa_pixel", "bits", (3, 4))
    qa = np.array([0, 1, 2, 4, 8, 16, 24, 32, 1 << 15, (1 << 15) | 8], dtype=np.uint16)
    np.testing.assert_array_equal(rule.clear(qa), [True, True, True, True, False, False, False, True, True, False])
    assert rule.spec() == "qa_pixel:bits:3,4"
    assert parse_mask(rule.spec()) == rule


def test_parse_mask_bits_of_a_32_bit_mask():
    rule = parse_mask("QA:bits:31")
    qa = np.array([0, 1 << 30, 1 << 31, (1 << 31) | 1], dtype=np.uint32)
    np.testing.assert_array_equal(rule.clear(qa), [True, True, False, False])


@pytest.mark.parametrize(
    "spec",
    ["", "S2", "s3", "scl", "scl:", "scl:a", "scl:1,,2", "scl:1;2", "scl:-1", "scl: 1", "sc l:1",
     "qa_pixel:bits:", "qa_pixel:bits:x", "qa_pixel:bits:32", "qa_pixel:bits:0,99", "qa_pixel:bytes:1"],
)
def test_bad_mask_spec_is_config_error(spec):
    with pytest.raises(ConfigError, match="mask") as err:
        parse_mask(spec)
    assert "\n" not in str(err.value)


def test_class_outside_the_mask_dtype_is_refused_or_never_matches():
    try:
        rule = parse_mask("scl:3,300")
    except ConfigError:
        return
    np.testing.assert_array_equal(rule.clear(np.array([2, 3, 4, 44], dtype=np.uint8)), [True, False, True, True])


# --- infer_mask ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys, expected",
    [
        ({"B04", "B08", "SCL"}, MaskRule(asset="SCL", kind="classes", values=(0, 1, 3, 8, 9, 10))),
        ({"red", "nir", "scl"}, MaskRule(asset="scl", kind="classes", values=(0, 1, 3, 8, 9, 10))),
        ({"red", "nir08", "qa_pixel"}, MaskRule(asset="qa_pixel", kind="bits", values=(0, 1, 2, 3, 4))),
        ({"SR_B4", "QA_PIXEL"}, MaskRule(asset="QA_PIXEL", kind="bits", values=(0, 1, 2, 3, 4))),
        ({"red", "nir", "qa_radsat"}, None),
        (set(), None),
    ],
)
def test_infer_mask(keys, expected):
    assert infer_mask(keys) == expected
