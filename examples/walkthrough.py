# %% [markdown]
# # Registering a calcium-imaging movie with xreg
#
# The classic thunder-registration story, told with xarray: make a movie, move it
# by a known drift, and get the drift back.  Runs as a script (`python
# walkthrough.py`, figures saved as PNG next to it) or cell by cell in a notebook.

# %%
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

import xreg  # noqa: E402  (importing xreg registers the .reg accessor)
from xreg import CrossCorr  # noqa: E402

report = {}


def sharpness(image):
    """Gradient energy of an image relative to its brightness: higher is sharper."""
    gy, gx = np.gradient(np.asarray(image, dtype=float))
    return float(np.mean(gy**2 + gx**2) / np.mean(image) ** 2)


# %% [markdown]
# ## Example data
#
# A small movie of neurons whose fluorescence flickers with calcium transients,
# over a textured background, with shot noise.  It does not move.

# %%
movie = xreg.datasets.mouse(n_frames=100)
print(movie)

# %% [markdown]
# ## Smooth random drift
#
# Every frame is moved by a displacement that wanders smoothly, as a brain does
# on a slow timescale.  `truth` is in the same layout xreg's estimates use.

# %%
moved, truth = xreg.datasets.add_motion(movie, max_drift=4, seed=0)
truth.plot.line(x="time")
plt.title("true drift")
plt.savefig("drift.png", dpi=80)
plt.close()

# %% [markdown]
# ## Register against the mean of the moved movie
#
# Without the unmoved data, the obvious reference is the mean of the moving movie.
# The estimates follow the truth, but the mean is blurred and sits at the average
# position, so they are biased.

# %%
model = CrossCorr().fit(moved, reference=moved.mean("time"))
print(model)
from_mean = model.to_dataarray()
report["error_vs_mean_reference_px"] = float(abs(from_mean - truth).max())
print("largest error, mean reference:", report["error_vs_mean_reference_px"], "px")

# %% [markdown]
# ## Register against the true reference
#
# With the unmoved mean as the reference the estimates match the truth exactly.

# %%
reference = movie.mean("time")
model = CrossCorr().fit(moved, reference=reference)
print(model.transformations[(0,)], "true:", truth.values[0].tolist())
report["error_vs_true_reference_px"] = float(abs(model.to_dataarray() - truth).max())
print("largest error, true reference:", report["error_vs_true_reference_px"], "px")

fig, axes = plt.subplots(2, 1, sharex=True, figsize=(6, 4))
for ax, name in zip(axes, ["y", "x"], strict=True):
    truth.sel(axis=name).plot(ax=ax, label="true", lw=3, alpha=0.4)
    model.to_dataarray().sel(axis=name).plot(ax=ax, label="true reference", ls="--")
    from_mean.sel(axis=name).plot(ax=ax, label="mean reference", lw=1)
    ax.set_title("")
    ax.set_ylabel(f"{name} (px)")
axes[0].legend(fontsize=7)
fig.savefig("estimates.png", dpi=80)
plt.close(fig)

# %% [markdown]
# ## Apply the model
#
# Moving every frame back restores the first frame and sharpens the mean image.

# %%
registered = model.transform(moved)
report["sharpness_mean_before"] = sharpness(moved.mean("time"))
report["sharpness_mean_after"] = sharpness(registered.mean("time"))
report["sharpness_mean_unmoved"] = sharpness(movie.mean("time"))
print({k: round(v, 5) for k, v in report.items() if k.startswith("sharpness")})

fig, axes = plt.subplots(2, 2, figsize=(6, 6))
panels = [
    (moved.isel(time=0), "first frame, moved"),
    (registered.isel(time=0), "first frame, registered"),
    (moved.mean("time"), "mean, moved"),
    (registered.mean("time"), "mean, registered"),
]
for ax, (image, title) in zip(axes.flat, panels, strict=True):
    image.plot.imshow(ax=ax, add_colorbar=False, cmap="gray")
    ax.set_title(title)
    ax.set_axis_off()
fig.tight_layout()
fig.savefig("before_after.png", dpi=80)
plt.close(fig)

# %% [markdown]
# ## The same with the accessor
#
# `movie.reg.estimate` gives subpixel displacements with a quality score per
# frame; `movie.reg.apply` registers, keeping dims, coords, attrs and dtype.  With
# no reference, xreg builds a sharp one from the movie itself, at its median
# position: the estimates then match the truth up to one constant offset.

# %%
shifts = moved.reg.estimate(reference)
shifts.plot.line(x="time")
plt.savefig("accessor_shifts.png", dpi=80)
plt.close()
fixed = moved.reg.apply(shifts)
assert fixed.dims == moved.dims and fixed.dtype == moved.dtype


def rms_up_to_offset(estimate):
    residual = estimate - truth
    return float(np.sqrt(((residual - residual.median("time")) ** 2).mean()))


# The drift here is in whole pixels, so whole-pixel estimates can be exact; subpixel ones
# scatter a little on these small, noisy frames, even against the true reference.
own = moved.reg.estimate(upsample_factor=1)  # reference=None: built from the movie
report["self_reference_rms_px"] = rms_up_to_offset(own)
report["self_reference_subpixel_rms_px"] = rms_up_to_offset(moved.reg.estimate())
report["true_reference_subpixel_rms_px"] = rms_up_to_offset(moved.reg.estimate(reference))
print(
    f"no reference given: RMS error {report['self_reference_rms_px']:.3f} px in whole pixels, "
    f"{report['self_reference_subpixel_rms_px']:.3f} px subpixel "
    f"({report['true_reference_subpixel_rms_px']:.3f} px with the true reference)"
)

# %% [markdown]
# ## Non-rigid motion
#
# Brain tissue does not move as one sheet: here every frame of a larger movie is warped
# by its own smooth displacement field (up to 4 px, different across the frame).  One
# shift per frame cannot undo that; `method="piecewise"` estimates one per overlapping
# block and warps each frame by the field interpolated between block centres.

# %%
still = xreg.datasets.mouse(n_frames=40, shape=(192, 192), seed=2)
warped, true_field = xreg.datasets.add_nonrigid_motion(still, max_shift=4, seed=2)
target = still.mean("time")
blocks = warped.reg.estimate(target, method="piecewise", block_size=64)
print(blocks.sizes)  # time, block_y, block_x, axis


def match(registered):
    """Mean correlation of each registered frame with its own unmoved frame, inside."""
    inner = {"y": slice(16, -16), "x": slice(16, -16)}
    return float(xr.corr(registered.isel(inner), still.isel(inner), dim=["y", "x"]).mean())


report["nonrigid_correlation_unregistered"] = match(warped)
report["nonrigid_correlation_rigid"] = match(warped.reg.apply(warped.reg.estimate(target)))
report["nonrigid_correlation_piecewise"] = match(warped.reg.apply(blocks))
print({k: round(v, 4) for k, v in report.items() if k.startswith("nonrigid")})

# The field of the first frame, estimated (arrows at the block centres) and true.
frame = blocks.isel(time=0)
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
for ax, (title, field) in zip(
    axes,
    [("estimated", blocks.reg.field().isel(time=0)), ("true", true_field.isel(time=0))],
    strict=True,
):
    field.sel(axis="x").plot.imshow(ax=ax, cmap="RdBu_r", vmin=-4, vmax=4, add_colorbar=False)
    ax.set_title(f"{title} x displacement, frame 0")
yy, xx = np.meshgrid(frame.block_y, frame.block_x, indexing="ij")
axes[0].quiver(xx, yy, frame.sel(axis="x"), frame.sel(axis="y"), angles="xy")
fig.tight_layout()
fig.savefig("nonrigid_field.png", dpi=80)
plt.close(fig)

with open("walkthrough.json", "w") as file:
    json.dump(report, file, indent=2)
