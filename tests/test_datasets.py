"""Example data and the walkthrough that teaches the library."""

import json
import os
import runpy
from pathlib import Path

import numpy as np
import pytest

import xreg

WALKTHROUGH = Path(__file__).resolve().parents[1] / "examples" / "walkthrough.py"


def test_mouse_is_deterministic_calcium_like_and_still():
    movie = xreg.datasets.mouse()
    assert movie.dims == ("time", "y", "x") and movie.shape == (20, 64, 64)
    assert movie.dtype == np.int16
    np.testing.assert_array_equal(movie, xreg.datasets.mouse())
    assert not np.array_equal(movie, xreg.datasets.mouse(seed=1))
    # Fluorescence fluctuates over time (transients, shot noise), the scene does not move.
    assert float(movie.std("time").mean()) > 1
    shifts = movie.reg.estimate(movie.mean("time"), upsample_factor=1)
    assert float(abs(shifts).max()) == 0
    assert xreg.datasets.mouse(n_frames=500).sizes["time"] == 500


def test_lazy_movie_equals_eager_one():
    eager = xreg.datasets.mouse(n_frames=30, seed=3)
    lazy = xreg.datasets.mouse(n_frames=30, seed=3, chunks=7)
    assert lazy.chunks is not None
    np.testing.assert_array_equal(eager.values, lazy.values)


@pytest.mark.parametrize("subpixel", [False, True])
def test_add_motion_returns_the_truth(subpixel):
    movie = xreg.datasets.mouse(n_frames=40)
    moved, truth = xreg.datasets.add_motion(movie, max_drift=3, jumps=2, subpixel=subpixel)
    assert truth.dims == ("time", "axis") and truth.name == "displacement"
    assert moved.dims == movie.dims and moved.dtype == movie.dtype
    assert (truth.values == np.round(truth.values)).all() != subpixel
    frame = int(np.argmax(np.abs(truth.values).sum(axis=1)))
    if not subpixel:  # integer motion is exact, so undoing it restores the interior
        back = moved.reg.apply(truth).isel(time=frame)[8:-8, 8:-8]
        np.testing.assert_array_equal(back, movie.isel(time=frame)[8:-8, 8:-8])
    estimate = moved.reg.estimate(movie.mean("time"), upsample_factor=20)
    assert float(abs(estimate - truth).max()) < 0.5


def test_large_preset_is_lazy():
    movie = xreg.datasets.large(n_frames=3000)
    assert movie.shape == (3000, 512, 512) and movie.chunks is not None
    assert movie.isel(time=1234).values.shape == (512, 512)


def test_walkthrough_runs_and_tells_the_truth(tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        runpy.run_path(str(WALKTHROUGH), run_name="__main__")
    finally:
        os.chdir(cwd)
    report = json.loads((tmp_path / "walkthrough.json").read_text())
    assert report["error_vs_true_reference_px"] == 0  # exact with the true reference
    assert report["error_vs_mean_reference_px"] > 0  # biased with the blurred mean
    # Registration makes the mean as crisp as the unmoved movie's (NoRMCorre's metrics).
    assert report["crispness_registered"] > 1.3 * report["crispness_raw"]
    assert report["crispness_registered"] > 0.95 * report["crispness_unmoved"]
    assert report["correlation_registered"] > report["correlation_raw"] + 0.1
    # Without a reference: exact in whole pixels, and subpixel close to the true reference.
    assert report["self_reference_rms_px"] < 0.1
    assert (
        report["self_reference_subpixel_rms_px"] < 1.25 * report["true_reference_subpixel_rms_px"]
    )
    # Non-rigid motion: piecewise registration beats rigid, which beats doing nothing.
    assert (
        report["nonrigid_correlation_piecewise"]
        > report["nonrigid_correlation_rigid"] + 0.05
        > report["nonrigid_correlation_unregistered"] + 0.05
    )
    pictures = ["drift.png", "estimates.png", "before_after.png", "accessor_shifts.png"]
    for name in pictures + ["nonrigid_field.png", "nonrigid_metrics.png"]:
        assert (tmp_path / name).stat().st_size > 5000
