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


# %% [markdown]
# ## Example data
#
# A small movie of neurons whose fluorescence flickers with calcium transients,
# over a textured background, with shot noise.  It does not move.

# %%
movie = xreg.datasets.mouse(n_frames=100)
print(dict(movie.sizes), movie.dtype, movie.attrs["units"])

# %% [markdown]
# ## Smooth random drift
#
# Every frame is moved by a displacement that wanders smoothly, as a brain does
# on a slow timescale.  `truth` is in the same layout xreg's estimates use.

# %%
moved, truth = xreg.datasets.add_motion(movie, max_drift=4, seed=0)
truth.plot()  # one line per axis over time
plt.title("true drift")
plt.savefig("drift.png", dpi=80, bbox_inches="tight")
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

fig, axes = plt.subplots(2, 1, sharex=True, figsize=(7, 5), layout="constrained")
for ax, name in zip(axes, ["y", "x"], strict=True):
    truth.sel(axis=name).plot(ax=ax, label="true", lw=5, alpha=0.35)
    model.to_dataarray().sel(axis=name).plot(ax=ax, label="true reference", ls="--")
    from_mean.sel(axis=name).plot(ax=ax, label="mean reference", lw=1)
    ax.set_title("")
    ax.set_ylabel(f"{name} displacement (pixel)")
axes[0].set_xlabel("")
axes[1].legend(fontsize=8, loc="lower right")
fig.suptitle("estimates against the true drift, by reference")
fig.savefig("estimates.png", dpi=80)
plt.close(fig)

# %% [markdown]
# ## Apply the model
#
# Moving every frame back restores the first frame and sharpens the mean image.
# `xreg.plot.summary` draws the classic checks in one figure, and `metrics` gives
# NoRMCorre's numbers: the crispness of the mean image (the norm of its gradient) and
# each frame's correlation with the mean, here next to the movie that never moved.

# %%
registered = model.transform(moved)
fig = xreg.plot.summary(moved, registered, model.to_dataarray(), truth=truth, frame=0)
fig.savefig("before_after.png", dpi=70)
plt.close(fig)

scores = moved.reg.metrics({"registered": registered, "unmoved": movie})
for version in scores.version.values:
    report[f"crispness_{version}"] = float(scores.crispness.sel(version=version))
    report[f"correlation_{version}"] = float(scores.correlation.sel(version=version).mean())
print({k: round(v, 3) for k, v in report.items() if k.startswith(("crisp", "corr"))})

# %% [markdown]
# ## The same with the accessor
#
# `movie.reg.estimate` gives subpixel displacements with a quality score per
# frame; `movie.reg.apply` registers, keeping dims, coords, attrs and dtype.  With
# no reference, xreg builds a sharp one from the movie itself, at its median
# position: the estimates then match the truth up to one constant offset.

# %%
shifts = moved.reg.estimate(reference)
shifts.plot()  # one line per axis, bad frames (none here) marked
plt.title("movie.reg.estimate(reference)")
plt.savefig("accessor_shifts.png", dpi=80, bbox_inches="tight")
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
print(dict(blocks.sizes))  # time, block_y, block_x, axis


def match(registered):
    """Mean correlation of each registered frame with its own unmoved frame, inside."""
    inner = {"y": slice(16, -16), "x": slice(16, -16)}
    return float(xr.corr(registered.isel(inner), still.isel(inner), dim=["y", "x"]).mean())


report["nonrigid_correlation_unregistered"] = match(warped)
report["nonrigid_correlation_rigid"] = match(warped.reg.apply(warped.reg.estimate(target)))
report["nonrigid_correlation_piecewise"] = match(warped.reg.apply(blocks))
print({k: round(v, 4) for k, v in report.items() if k.startswith("nonrigid")})

# NoRMCorre's numbers for each version: piecewise is crisper and closer to its mean.
versions = {
    "rigid": warped.reg.apply(warped.reg.estimate(target)),
    "piecewise": warped.reg.apply(blocks),
}
nonrigid_scores = warped.reg.metrics(versions)
print("crispness:", nonrigid_scores.crispness.to_series().round(1).to_dict())
nonrigid_scores.correlation.plot.line(x="time", hue="version")
plt.title("each frame against its version's mean image (NoRMCorre's metric)")
plt.savefig("nonrigid_metrics.png", dpi=80, bbox_inches="tight")
plt.close()

# The field of the first frame, estimated and true: colour is the size of the displacement,
# arrows (at the block centres) its direction, drawn 10 times longer than life.
frame = blocks.isel(time=0)
fields = {"estimated": blocks.reg.field().isel(time=0), "true": true_field.isel(time=0)}
centres = {"y": frame.block_y, "x": frame.block_x}
fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), layout="constrained")
for ax, (title, field) in zip(axes, fields.items(), strict=True):
    size = np.hypot(field.sel(axis="y"), field.sel(axis="x"))
    image = size.plot.imshow(
        ax=ax, cmap="viridis", vmin=0, vmax=4, yincrease=False, add_colorbar=False
    )
    at_centres = field.isel(y=frame.block_y.astype(int), x=frame.block_x.astype(int))
    arrows = ax.quiver(
        centres["x"],
        centres["y"],
        at_centres.sel(axis="x"),  # dims (block_y, block_x), as quiver wants
        at_centres.sel(axis="y"),
        angles="xy",
        scale_units="xy",
        scale=0.1,
        color="white",
        edgecolor="black",
        linewidth=0.5,
    )
    ax.set(title=f"{title} displacement, frame 0", xlabel="x (pixel)", ylabel="y (pixel)")
    ax.set_aspect("equal")
# The arrows' scale (the same in both panels), below the last row of blocks.
ax.quiverkey(arrows, 0.12, 0.06, 2, "2 pixel (arrows drawn x 10)", labelpos="E")
fig.colorbar(image, ax=axes, label="displacement magnitude (pixel)", shrink=0.9)
fig.savefig("nonrigid_field.png", dpi=80)
plt.close(fig)

with open("walkthrough.json", "w") as file:
    json.dump(report, file, indent=2)
