"""Viewpoint warp: the flat-ground homography against renders actually taken from the displaced pose."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from driver.sim.warp import CameraModel, ground_homography, sky_homography, warp_frame, warp_view

H, W = 96, 128
SS = 3  # supersampling of the reference renders (anti-aliasing)


def road_texture(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """RGB of the flat ground at world (x, y): a straight road along +x, edge lines, a dashed centre line,
    smooth grass texture outside. Smooth enough that bilinear resampling is fair."""
    lane = np.abs(y) < 0.4
    rgb = np.empty((*x.shape, 3), np.float32)
    grass = 0.5 + 0.25 * np.sin(3.0 * x + 1.0) * np.cos(2.5 * y) + 0.15 * np.sin(7.0 * y + 0.5 * x)
    rgb[..., 0] = 40 + 60 * grass
    rgb[..., 1] = 90 + 100 * grass
    rgb[..., 2] = 40 + 30 * grass
    road = 110 + 15 * np.sin(5.0 * x) * np.sin(4.0 * y)
    for c in range(3):
        rgb[..., c] = np.where(lane, road, rgb[..., c])
    edge = (np.abs(y) > 0.35) & (np.abs(y) < 0.4)
    dash = (np.abs(y) < 0.025) & (np.mod(x, 0.5) < 0.25)
    rgb[edge | dash] = 235
    return rgb


def render(cam: CameraModel, d: float, psi: float) -> np.ndarray:
    """Ground-truth view of the car at lateral offset d (m, + left), heading psi (rad, + left), pose (0, d)."""
    h, w = H * SS, W * SS
    f = (w / 2) / math.tan(math.radians(cam.hfov_deg) / 2)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    # sub-pixel centres of the supersampled grid in the coordinates of the final image
    b = ((rows + 0.5) / SS - 0.5 - (H - 1) / 2) / (f / SS)
    a = ((cols + 0.5) / SS - 0.5 - (W - 1) / 2) / (f / SS)
    th = math.radians(cam.pitch_deg)
    rx, ry, rz = math.cos(th) - b * math.sin(th), -a, -b * math.cos(th) - math.sin(th)
    c, s = math.cos(psi), math.sin(psi)
    wx, wy = c * rx - s * ry, s * rx + c * ry
    cx, cy, _ = cam.centre(d, psi)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(rz < 0, cam.height_m / -rz, np.inf)
    ground = np.isfinite(t) & (t * np.hypot(rx, ry) < cam.max_range_m)
    gx, gy = np.where(ground, cx + t * wx, 0), np.where(ground, cy + t * wy, 0)
    img = road_texture(gx, gy)
    img[~ground] = (170, 200, 235)
    img = cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def near_ground_mask(cam: CameraModel, max_dist: float = 3.0) -> np.ndarray:
    """Pixels whose ground point is within ``max_dist`` metres ahead (the region a model mostly uses)."""
    f = (W / 2) / math.tan(math.radians(cam.hfov_deg) / 2)
    b = (np.arange(H) - (H - 1) / 2) / f
    th = math.radians(cam.pitch_deg)
    rx, rz = math.cos(th) - b * math.sin(th), -b * math.cos(th) - math.sin(th)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = (rz < 0) & (cam.height_m * rx / -rz < max_dist)
    return np.repeat(ok[:, None], W, axis=1)


@pytest.mark.parametrize("d,psi", [(0.10, 0.0), (-0.15, 0.0), (0.0, math.radians(6)), (0.08, math.radians(-5))])
def test_warp_matches_a_render_from_the_displaced_pose(d, psi):
    cam = CameraModel()
    recorded, truth = render(cam, 0.0, 0.0), render(cam, d, psi)
    res = warp_view(recorded, cam, d, psi)
    m = near_ground_mask(cam) & res.valid
    assert m.mean() > 0.3
    warped_err = np.abs(res.image.astype(np.float64) - truth)[m].mean()
    unwarped_err = np.abs(recorded.astype(np.float64) - truth)[m].mean()
    assert warped_err < 0.25 * unwarped_err, (warped_err, unwarped_err)
    assert warped_err < 6.0


def test_zero_offset_is_identity_and_homographies_are_identity_at_zero():
    cam = CameraModel()
    np.testing.assert_allclose(ground_homography(cam, 0.0, 0.0, (H, W)), np.eye(3), atol=1e-9)
    np.testing.assert_allclose(sky_homography(cam, 0.0, (H, W)), np.eye(3), atol=1e-12)
    img = render(cam, 0.0, 0.0)
    np.testing.assert_array_equal(warp_view(img, cam, 0.0, 0.0).image, img)
    np.testing.assert_array_equal(warp_frame(img, np.eye(3)), img)


def test_sign_conventions_moving_left_shifts_the_road_right():
    """A car moved LEFT (+d) sees the road's centre line further RIGHT in the image."""
    cam = CameraModel()
    hm = ground_homography(cam, 0.2, 0.0, (H, W))
    # the image of a point on the centre line 1.5 m ahead, seen from the recorded car
    f = (W / 2) / math.tan(math.radians(cam.hfov_deg) / 2)
    th = math.radians(cam.pitch_deg)
    p = np.array([1.5 - cam.forward_m, 0.0, -cam.height_m])  # camera-relative, car frame
    rot = cam.rotation(0.0)
    q = rot.T @ p
    u, v = f * q[0] / q[2] + (W - 1) / 2, f * q[1] / q[2] + (H - 1) / 2
    assert abs(u - (W - 1) / 2) < 1e-6 and v > (H - 1) / 2 - f * math.tan(th)
    moved = hm @ np.array([u, v, 1.0])
    assert moved[0] / moved[2] > u + 1  # to the right


def test_large_offsets_report_missing_regions_and_fill_them():
    cam = CameraModel()
    img = render(cam, 0.0, 0.0)
    res = warp_view(img, cam, 0.5, math.radians(20))
    assert 0.2 < res.valid_fraction < 1.0
    assert res.image.shape == img.shape and res.image.dtype == np.uint8
    # filled by edge replication, not left black
    assert res.image[~res.valid].min() > 0


def test_camera_model_validates_with_field_names():
    with pytest.raises(ValueError, match="pitch_deg"):
        CameraModel(pitch_deg=0.0)
    with pytest.raises(ValueError, match="hfov_deg"):
        CameraModel(hfov_deg=200.0)
