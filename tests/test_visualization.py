"""catseg_hf.visualization: colours, the overlay and its legend, label-map PNGs, 16-bit images."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
from PIL import Image

from catseg_hf.visualization import (
    class_fractions,
    colour_hex,
    display_image,
    draw_legend,
    draw_overlay,
    label_map_image,
    legend_entries,
    overlay_image,
    palette,
    region_outlines,
)


def two_regions(height: int = 40, width: int = 60) -> np.ndarray:
    """Class 0 on the left, class 2 on the right, class 1 in a square in the middle."""
    label_map = np.zeros((height, width), dtype=np.int64)
    label_map[:, width // 2 :] = 2
    label_map[10:20, 20:30] = 1
    return label_map


def test_palette_is_deterministic_distinct_and_does_not_start_with_red():
    colours = palette(1000)
    assert colours.dtype == np.uint8 and colours.shape == (1000, 3)
    np.testing.assert_array_equal(colours, palette(1000))
    np.testing.assert_array_equal(colours[:17], palette(17))  # a class keeps its colour whatever the vocabulary size
    assert len({tuple(c) for c in colours.tolist()}) == 1000
    hue, saturation, _ = colorsys.rgb_to_hsv(*(colours[0] / 255.0))
    assert 0.45 < hue < 0.7 and saturation < 0.6, (hue, saturation)  # a muted blue, not red
    assert colour_hex(colours[0]) == "#{:02x}{:02x}{:02x}".format(*colours[0].tolist())


def test_overlay_tints_regions_and_outlines_them_in_the_exact_palette_colour():
    image = Image.fromarray(np.full((40, 60, 3), 200, dtype=np.uint8))
    label_map = two_regions()
    colours = palette(3)
    overlay = np.asarray(overlay_image(image, label_map, 3, alpha=0.5))
    edges = region_outlines(label_map)
    assert edges.any() and not edges.all()
    np.testing.assert_array_equal(overlay[edges], colours[label_map[edges]])  # outlines: the plain colour
    inside = ~edges
    expected = np.rint(200 * 0.5 + colours[label_map[inside]].astype(np.float64) * 0.5)
    np.testing.assert_allclose(overlay[inside], expected, atol=1)  # inside: the tint
    # alpha=1 paints every pixel in its class colour.
    solid = np.asarray(overlay_image(image, label_map, 3, alpha=1.0))
    np.testing.assert_array_equal(solid, colours[label_map])


def test_legend_swatches_are_exactly_the_painted_colours():
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 60, 3), dtype=np.uint8))
    label_map = two_regions()
    labels = ["wall", "lamp", "floor", "ceiling"]  # "ceiling" is absent: not in the legend
    canvas = np.asarray(draw_overlay(image, label_map, labels))
    assert canvas.shape[1] >= 60 and canvas.shape[0] > 40
    legend = canvas[40:]
    overlay = canvas[:40, :60]
    colours = palette(len(labels))
    edges = region_outlines(label_map)
    for class_id in (0, 1, 2):
        colour = colours[class_id]
        # The swatch: a filled square of exactly the class colour in the legend.
        matches = np.all(legend == colour, axis=-1)
        assert matches.sum() >= 16, labels[class_id]
        # ... and the same colour is what the overlay paints on the class's outline.
        outline = edges & (label_map == class_id)
        assert outline.any() and (overlay[outline] == colour).all(), labels[class_id]
    assert not np.all(legend == colours[3], axis=-1).any()
    assert [name for _, name, _ in legend_entries(label_map, labels)] == ["wall", "lamp", "floor"]


def test_legend_lays_out_many_classes_in_columns():
    entries = [(index, f"class {index}", 1 / 40) for index in range(40)]
    legend = draw_legend(entries, palette(40), width=600)
    assert legend.width == 600 and legend.height < 40 * 20  # several columns, not one long list


def test_sixteen_bit_images_are_shown_as_the_processor_reads_them():
    """A 16-bit PNG is not clipped to white (PIL's convert("RGB") clips 16-bit values at 255)."""
    ramp = np.linspace(0, 65535, 64 * 32).reshape(32, 64).astype(np.uint16)
    image = Image.fromarray(ramp)  # mode I;16
    assert image.mode == "I;16"
    shown = np.asarray(display_image(image))
    assert shown.shape == (32, 64, 3)
    np.testing.assert_allclose(shown[..., 0], np.clip(np.rint(ramp / 257.0), 0, 255), atol=1)
    assert shown.mean() < 160  # a ramp, not white
    # Through PIL's 32-bit mode "I" (what some Pillow versions give for 16-bit PNGs) and as a uint16 array.
    np.testing.assert_array_equal(np.asarray(display_image(image.convert("I"))), shown)
    np.testing.assert_array_equal(np.asarray(display_image(ramp)), shown)
    overlay = np.asarray(draw_overlay(image, np.zeros((32, 64), dtype=np.int64), ["all"], alpha=0.0))
    np.testing.assert_array_equal(overlay[:32, :64], shown)  # alpha 0, one class, no outlines: the image itself


def test_display_image_reads_other_modes_and_arrays():
    rgba = Image.new("RGBA", (4, 3), (10, 20, 30, 0))
    assert display_image(rgba).getpixel((0, 0)) == (10, 20, 30)  # alpha dropped, not composited
    assert display_image(Image.new("L", (4, 3), 77)).getpixel((1, 1)) == (77, 77, 77)
    chw = torch.full((3, 3, 4), 128, dtype=torch.uint8)
    assert display_image(chw).size == (4, 3)


def test_label_map_png_bit_depth_and_fractions():
    label_map = two_regions()
    small = label_map_image(label_map, 3)
    assert small.mode == "L"
    np.testing.assert_array_equal(np.asarray(small), label_map)
    wide = label_map_image(torch.from_numpy(label_map + 297), 300)
    assert np.asarray(wide).dtype == np.uint16 and int(np.asarray(wide).max()) == 299
    fractions = class_fractions(label_map, ["a", "b", "c"])
    assert list(fractions) == ["a", "b", "c"] and sum(fractions.values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: label_map_image(np.zeros((2, 2), dtype=np.int64), 70000), "70000 classes"),
        (lambda: class_fractions(np.full((2, 2), 5), ["a", "b"]), "class id 5"),
        (lambda: class_fractions(np.zeros((2, 2), dtype=np.float32), ["a"]), "float32"),
        (lambda: class_fractions(np.full((2, 2), -1), ["a"]), "-1"),
        (lambda: overlay_image(Image.new("RGB", (5, 4)), np.zeros((3, 3), dtype=np.int64), 1), "3x3"),
        (lambda: overlay_image(Image.new("RGB", (3, 3)), np.zeros((3, 3), dtype=np.int64), 1, alpha=2.0), "2.0"),
    ],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
