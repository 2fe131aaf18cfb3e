"""Disc measurements from the class mask: heights, height index, posterior protrusion, signal ratio."""

import cv2
import numpy as np
import pytest

from plid.measurements import measure_discs


def _spine(herniation: int = 0, wedge: bool = False):
    """Two 40 px vertebral bodies (x 40-119) around a 10 px disc, the canal 5 px behind them; the disc reaches
    ``herniation`` px behind the posterior wall; anterior on the left, head up."""
    mask = np.zeros((200, 200), np.uint8)
    mask[20:60, 40:120] = 1
    mask[70:110, 40:120] = 1
    mask[:, 125:140] = 3
    mask[20:110, 150:170] = 1  # posterior elements behind the canal: not the wall
    if wedge:  # anterior 14 px, posterior 8 px, symmetric about y = 64.5
        mask[58:72, 40:120] = 0
        cv2.fillPoly(mask, [np.array([[40, 58], [119, 61], [119, 68], [40, 71]], np.int32)], 2)
        mask[20:58, 40:120] = 1
        mask[72:110, 40:120] = 1
    else:
        mask[60:70, 40:120] = 2
    if herniation:
        mask[62:68, 120:120 + herniation] = 2
    image = np.zeros((200, 200), np.uint8)
    image[mask == 2] = 100
    image[mask == 3] = 200
    image[mask == 1] = 60
    return mask, image


def test_heights_index_and_ratio_of_a_hand_drawn_disc_in_pixels_and_mm():
    mask, image = _spine()
    box = [38, 58, 122, 72]
    (px,) = measure_discs(mask, [box], image)
    assert px["unit"] == "px"
    assert [px["anterior_height"], px["middle_height"], px["posterior_height"]] == [10, 10, 10]
    assert px["upper_vertebra_height"] == pytest.approx(40, abs=0.5)
    assert px["lower_vertebra_height"] == pytest.approx(40, abs=0.5)
    assert px["height_index"] == pytest.approx(10 / 40, abs=0.01)
    assert px["posterior_protrusion"] == pytest.approx(0, abs=0.5)
    assert px["signal_ratio"] == pytest.approx(0.5)
    (mm,) = measure_discs(mask, [box], image, spacing_mm=0.5)
    assert mm["unit"] == "mm" and mm["middle_height"] == 5 and mm["upper_vertebra_height"] == pytest.approx(20, abs=0.25)
    assert mm["height_index"] == px["height_index"] and mm["signal_ratio"] == px["signal_ratio"]


def test_a_disc_reaching_behind_the_posterior_walls_and_a_wedge():
    mask, image = _spine(herniation=4)
    (m,) = measure_discs(mask, [[38, 58, 122, 72]], image)
    assert m["posterior_protrusion"] == pytest.approx(4, abs=0.5)
    assert m["posterior_height"] == 10  # measured at 90 % of the length, before the herniation
    mask, image = _spine(wedge=True)
    (m,) = measure_discs(mask, [[38, 56, 122, 74]], image)
    # 14 px anteriorly to 8 px posteriorly, linear: 13.4, 11, 8.6 at 10, 50 and 90 % of the length
    assert m["anterior_height"] == pytest.approx(13.4, abs=1)
    assert m["middle_height"] == pytest.approx(11, abs=1)
    assert m["posterior_height"] == pytest.approx(8.6, abs=1)


def test_a_tilted_disc_is_measured_in_its_own_frame_and_a_box_without_disc_gives_none():
    mask, image = _spine()
    centre = (100, 65)
    rotation = cv2.getRotationMatrix2D(centre, 20, 1.0)
    tilted = cv2.warpAffine(mask, rotation, (200, 200), flags=cv2.INTER_NEAREST)
    tilted_image = cv2.warpAffine(image, rotation, (200, 200), flags=cv2.INTER_NEAREST)
    ys, xs = np.nonzero(tilted == 2)
    box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    (m,) = measure_discs(tilted, [box], tilted_image)
    assert m["middle_height"] == pytest.approx(10, abs=1.5)
    assert m["upper_vertebra_height"] == pytest.approx(40, abs=2)
    assert m["height_index"] == pytest.approx(0.25, abs=0.04)
    assert measure_discs(mask, [[0, 0, 10, 10]], image) == [None]
    assert measure_discs(None, [[0, 0, 10, 10]]) == [None]
