"""Piecewise-rigid (non-rigid) registration: one shift per overlapping block.

As suite2p and NoRMCorre: a rigid shift first, then a subpixel shift per block of
the frame, a fallback to the rigid shift where a block's correlation is too weak,
and a smooth per-pixel displacement field interpolated between block centres to
warp each frame.  Two choices of our own: blocks are cut from each frame at its
whole-pixel rigid position by slicing (no interpolation before estimating), and
each block is estimated with the same border-safe windowed correlation as whole
frames, so the blocks' own edges do not bias them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from .correlation import (
    ReferencePlan,
    _conditioned,
    estimate_shifts,
    map_threads,
    prepare_reference,
    stack_plans,
)
from .shift import _working_dtype, round_to_dtype, spline_resample

# Frames whose blocks are cut and estimated together: enough blocks to amortise the
# per-call overhead, few enough that a step's arrays stay small (4 x 49 x 128^2: 13 MB).
_FRAMES_PER_PASS = 4

__all__ = [
    "BlockGrid",
    "PiecewisePlan",
    "block_counts",
    "block_grid",
    "displacement_field",
    "estimate_piecewise",
    "prepare_piecewise",
    "warp_frames",
]


@dataclass(frozen=True)
class BlockGrid:
    """Overlapping blocks covering a frame: their size, start offsets and centres."""

    shape: tuple[int, ...]
    block_size: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]  # per axis

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.starts)

    @property
    def centres(self) -> tuple[np.ndarray, ...]:
        """Block centres per axis, in pixels (as pixel coordinates 0..n-1)."""
        return tuple(
            np.asarray(s) + (b - 1) / 2 for s, b in zip(self.starts, self.block_size, strict=True)
        )


def block_counts(shape, block_size, overlap: float) -> tuple[int, ...]:
    """Blocks per axis of :func:`block_grid`, without building it (checked up front)."""
    return tuple(
        1 + max(0, math.ceil((n - b) / (b * (1 - overlap)) - 1e-9))
        for n, b in zip(shape, block_size, strict=True)
    )


def block_grid(shape, block_size, overlap: float = 0.5) -> BlockGrid:
    """Blocks of ``block_size`` overlapping by ``overlap`` (a fraction), spanning ``shape``.

    Parameters
    ----------
    shape : tuple of int
        Frame shape.
    block_size : int or tuple of int
        Block size per axis (capped at the frame size), checked by
        :func:`xreg.validate.block_layout`.
    overlap : float, default 0.5
        Fraction of a block shared with its neighbour, 0 <= overlap < 1.

    Returns
    -------
    BlockGrid
    """
    block_size = np.broadcast_to(np.asarray(block_size, dtype=int), (len(shape),))
    block_size = tuple(min(int(b), n) for b, n in zip(block_size, shape, strict=True))
    starts = [
        tuple(np.linspace(0, n - b, count).round().astype(int).tolist())
        for n, b, count in zip(
            shape, block_size, block_counts(shape, block_size, overlap), strict=True
        )
    ]
    return BlockGrid(tuple(shape), block_size, tuple(starts))


@dataclass(frozen=True)
class PiecewisePlan:
    """The rigid plan, the block grid and the stacked plans of the blocks with contrast."""

    rigid: ReferencePlan
    grid: BlockGrid
    blocks: ReferencePlan | None  # stacked (see stack_plans); None if no block has contrast
    block_ids: tuple[int, ...]  # flat grid index of each stacked block

    @property
    def block_origins(self) -> list[np.ndarray]:
        """Per axis, the first pixel of each stacked block (in ``block_ids`` order)."""
        index = np.unravel_index(np.asarray(self.block_ids, dtype=int), self.grid.grid_shape)
        return [np.asarray(s)[i] for s, i in zip(self.grid.starts, index, strict=True)]


def _block_slices(grid: BlockGrid, index: tuple[int, ...], offset=None):
    offset = (0,) * len(index) if offset is None else offset
    return tuple(
        slice(grid.starts[a][i] + o, grid.starts[a][i] + o + grid.block_size[a])
        for a, (i, o) in enumerate(zip(index, offset, strict=True))
    )


def prepare_piecewise(
    reference: np.ndarray,
    *,
    block_size=128,
    overlap: float = 0.5,
    max_shift=None,
    block_max_shift=None,
    clip=None,
    block_clip=None,
    offset=None,
    noise=None,
    weights: bool = False,
) -> PiecewisePlan:
    """Plans for the rigid step and for every block of the reference.

    Parameters
    ----------
    reference : numpy.ndarray
        2-D or 3-D reference frame.
    block_size, overlap
        As in :func:`block_grid`.
    max_shift : optional
        Search range of the rigid step (see :func:`prepare_reference`).
    block_max_shift : int, optional
        Search range of each block around the rigid shift; default: a tenth of
        the block, at least 3 px.
    clip : (float, float), optional
        Intensity bounds for the rigid step and, without ``block_clip``, every block
        (see :func:`prepare_reference`).
    block_clip : (float, float), optional
        Other bounds for the blocks (default: ``clip``): the rigid step may weigh
        pixels by their noise, and spare it, where blocks do not.
    weights : bool, default False
        Whether the rigid step weighs pixels by their noise (see
        :func:`prepare_reference`); blocks do not.
    offset, noise : optional
        The stabilising transform and the frames' noise, for the rigid step and every
        block (see :func:`prepare_reference`).

    Returns
    -------
    PiecewisePlan
    """
    reference = np.asarray(reference, dtype=np.float64)
    rigid = prepare_reference(
        reference, max_shift=max_shift, clip=clip, offset=offset, noise=noise, weights=weights
    )
    grid = block_grid(reference.shape, block_size, overlap)
    # How blocks are conditioned before they are compared: as the rigid step, with
    # their own bounds.
    conditioning = (
        rigid if block_clip is None else replace(rigid, clip=tuple(map(float, block_clip)))
    )
    if block_max_shift is None:
        block_max_shift = tuple(max(3, b // 10) for b in grid.block_size)
    plans, ids = [], []
    for flat_id, index in enumerate(np.ndindex(*grid.grid_shape)):
        block = reference[_block_slices(grid, index)]
        # A block with no contrast (flat background) cannot be matched: rigid fallback.
        if _conditioned(block, conditioning, np.empty(block.shape)).std() > 0:
            plans.append(
                prepare_reference(
                    block,
                    max_shift=block_max_shift,
                    clip=conditioning.clip,
                    overlap=False,
                    offset=offset,
                    noise=noise,
                )
            )
            ids.append(flat_id)
    return PiecewisePlan(rigid, grid, stack_plans(plans) if plans else None, tuple(ids))


def estimate_piecewise(
    frames: np.ndarray,
    plan: PiecewisePlan,
    *,
    upsample_factor: int = 10,
    min_quality: float = 0.3,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rigid and per-block displacements of each frame.

    Parameters
    ----------
    frames : numpy.ndarray
        ``(n, *frame_shape)``.
    plan : PiecewisePlan
    upsample_factor : int, default 10
    min_quality : float, default 0.3
        A block whose normalised correlation peak is below this takes the rigid
        displacement instead (low signal, nothing to match).
    workers : int, optional
        Threads; default all cores.

    Returns
    -------
    rigid : numpy.ndarray
        ``(n, ndim + 1)``: rigid displacement and quality.
    blocks : numpy.ndarray
        ``(n, *grid_shape, ndim + 1)``: each block's displacement (rigid included)
        and quality (0 where the rigid fallback was taken).
    """
    frames = np.asarray(frames)
    ndim = plan.rigid.ndim
    rigid = np.zeros((len(frames), ndim + 1))
    out = np.zeros((len(frames), int(np.prod(plan.grid.grid_shape)), ndim + 1))
    starts = plan.block_origins

    def run(chunk):
        rigid[chunk] = estimate_shifts(
            frames[chunk], plan.rigid, upsample_factor=upsample_factor, workers=1
        )
        if plan.blocks is None:
            return
        # Each block cut at its frame's whole-pixel rigid position, all blocks of the
        # chunk's frames estimated together, each against its own block of the reference.
        whole = np.rint(rigid[chunk, :ndim]).astype(int)
        crops = np.empty((len(whole), len(plan.block_ids)) + plan.grid.block_size, np.float32)
        for frame, offset, blocks in zip(frames[chunk], whole, crops, strict=True):
            _cut_blocks(frame, starts, offset, blocks)
        result = estimate_shifts(crops, plan.blocks, upsample_factor=upsample_factor, workers=1)
        result[..., :ndim] += whole[:, None, :]
        out[chunk, plan.block_ids] = result

    step = _FRAMES_PER_PASS
    map_threads(run, [slice(i, i + step) for i in range(0, len(frames), step)], workers)
    out = out.reshape((len(frames),) + plan.grid.grid_shape + (ndim + 1,))
    weak = out[..., ndim] < min_quality
    rigid_expanded = np.broadcast_to(
        rigid[:, None, :ndim].reshape((len(frames),) + (1,) * ndim + (ndim,)), out[..., :ndim].shape
    )
    out[..., :ndim] = np.where(weak[..., None], rigid_expanded, out[..., :ndim])
    out[..., ndim] = np.where(weak, 0.0, out[..., ndim])
    return rigid, out


def _cut_blocks(frame, starts, offset, out):
    """Copy into ``out`` (blocks, *block_size) the blocks at ``starts`` (block origins
    per axis) of ``frame`` moved by ``offset`` pixels, NaN where they cross its border
    (left out of the estimate: padded content would pull it)."""
    block_size = out.shape[1:]
    positions = [s + o for s, o in zip(starts, offset, strict=True)]
    pad = max(
        0,
        *(-p.min() for p in positions),
        *(p.max() + b - n for p, b, n in zip(positions, block_size, frame.shape, strict=True)),
    )
    if pad:
        frame = np.pad(frame.astype(np.float32, copy=False), pad, constant_values=np.nan)
        positions = [p + pad for p in positions]
    # Slice by slice: plain copies, cheaper than one fancy-indexed gather.
    for block, origin in zip(out, zip(*positions, strict=True), strict=True):
        block[...] = frame[tuple(slice(o, o + b) for o, b in zip(origin, block_size, strict=True))]


def _interpolation_matrix(positions: np.ndarray, size: int) -> np.ndarray:
    """(size, len(positions)) weights: linear interpolation from block centres to pixels,
    constant beyond the outermost centres."""
    pixels = np.arange(size)
    matrix = np.zeros((size, len(positions)))
    if len(positions) == 1:
        matrix[:, 0] = 1
        return matrix
    clipped = np.clip(pixels, positions[0], positions[-1])
    upper = np.clip(np.searchsorted(positions, clipped, side="right"), 1, len(positions) - 1)
    lower = upper - 1
    fraction = (clipped - positions[lower]) / (positions[upper] - positions[lower])
    matrix[pixels, lower] = 1 - fraction
    matrix[pixels, upper] += fraction
    return matrix


def _interpolation_matrices(grid: BlockGrid, dtype) -> list[np.ndarray]:
    """One :func:`_interpolation_matrix` per axis of the grid, as ``dtype``."""
    return [
        _interpolation_matrix(centres, size).astype(dtype)
        for centres, size in zip(grid.centres, grid.shape, strict=True)
    ]


def _interpolate(values: np.ndarray, matrices) -> np.ndarray:
    """The trailing axes of ``values`` taken from the block grid to pixels, one matrix
    (pixels, blocks) per axis."""
    lead = values.ndim - len(matrices)
    for axis, matrix in enumerate(matrices):
        values = np.tensordot(values, matrix, axes=([lead + axis], [1]))
        values = np.moveaxis(values, -1, lead + axis)
    return values


def displacement_field(block_shifts: np.ndarray, grid: BlockGrid) -> np.ndarray:
    """Per-pixel displacement from per-block displacements (multilinear between centres).

    Parameters
    ----------
    block_shifts : numpy.ndarray
        ``(n, *grid_shape, ndim)``.
    grid : BlockGrid

    Returns
    -------
    numpy.ndarray
        float32 ``(n, ndim, *frame_shape)``.
    """
    values = np.moveaxis(np.asarray(block_shifts, dtype=np.float32), -1, 1)  # (n, ndim, *grid)
    return np.ascontiguousarray(_interpolate(values, _interpolation_matrices(grid, np.float32)))


# np.pad's names for xreg's boundary modes (see xreg.core.shift.MODES).
_PAD_MODES = {
    "nearest": "edge",
    "constant": "constant",
    "reflect": "symmetric",
    "mirror": "reflect",
    "wrap": "wrap",
}
# Output pixels warped per step: small enough that a step's temporaries stay in cache.
_WARP_STEP_PIXELS = 64 * 1024


def _multilinear(flat, index, fractions, strides):
    """Multilinear interpolation in a flattened array: ``index`` is each point's
    lower corner, ``fractions`` its offsets from it along each axis."""
    if not strides:
        return flat.take(index)
    low = _multilinear(flat, index, fractions[1:], strides[1:])
    high = _multilinear(flat, index + strides[0], fractions[1:], strides[1:])
    high -= low
    high *= fractions[0]
    low += high
    return low


def _warp_frame(frame, values, matrices, order, mode, cval):
    """One frame sampled at ``x + field(x)``, order 0 or 1, a few rows at a time.

    The frame is padded by more than the largest displacement (by the boundary
    mode), so every sample lies inside the padded array: then the sampling is a
    plain gather, with no per-pixel bounds checks, and each step computes its own
    rows of the field from the block values (no frame-sized field is stored).
    """
    shape = frame.shape
    # Multilinear interpolation never exceeds the largest block displacement.
    pad = int(np.ceil(np.abs(values).max())) + 1
    extra = {"constant_values": cval} if mode == "constant" else {}
    padded = np.pad(frame, pad, mode=_PAD_MODES[mode], **extra)
    flat = padded.ravel()
    strides = [s // padded.itemsize for s in padded.strides]
    rows = max(1, _WARP_STEP_PIXELS // int(np.prod(shape[1:])))
    # The field along every axis but the first, once; each step then needs one matmul.
    partial = _interpolate(values, matrices[1:]).reshape(len(shape), values.shape[1], -1)
    # The flat index is summed in floating point, where the whole parts of the positions
    # already are (one conversion to integers at the end): float32 is exact below 2**24.
    index_dtype = np.float32 if flat.size < 2**24 and frame.dtype == np.float32 else np.float64
    out = np.empty(shape, frame.dtype)
    for start in range(0, shape[0], rows):
        stop = min(start + rows, shape[0])
        positions = matrices[0][start:stop] @ partial
        positions = positions.reshape((len(shape), stop - start) + shape[1:])
        index = np.zeros(positions.shape[1:], index_dtype)
        for axis, stride in enumerate(strides):
            grid = np.arange(pad, pad + shape[axis], dtype=frame.dtype)
            if axis == 0:
                grid = grid[start:stop]
            positions[axis] += grid.reshape((-1,) + (1,) * (len(shape) - axis - 1))
            if order == 0:
                positions[axis] += 0.5
            lower = np.floor(positions[axis], dtype=index_dtype)
            positions[axis] -= lower
            lower *= stride
            index += lower
        index = index.astype(np.intp)
        if order == 0:
            out[start:stop] = flat.take(index)
        else:
            out[start:stop] = _multilinear(flat, index, list(positions), strides)
    return out


def warp_frames(
    frames: np.ndarray,
    block_shifts: np.ndarray,
    grid: BlockGrid,
    *,
    order: int = 1,
    mode: str = "nearest",
    cval: float = 0.0,
) -> np.ndarray:
    """Undo non-rigid motion: ``out[i](x) = frames[i](x + field[i](x))``.

    The field is :func:`displacement_field` of the block shifts.

    Parameters
    ----------
    frames : numpy.ndarray
        ``(n, *frame_shape)``.
    block_shifts : numpy.ndarray
        ``(n, *grid_shape, ndim)`` from :func:`estimate_piecewise`.  A frame with a
        non-finite block shift is left unchanged, as :func:`shift_frames` does.
    grid : BlockGrid
    order : int, default 1
        Interpolation order: 0 (nearest sample), 1 (multilinear), up to 5
        (B-spline, ``scipy.ndimage.map_coordinates``).
    mode, cval
        Boundary handling, as in :func:`xreg.core.shift_frames`.

    Returns
    -------
    numpy.ndarray
        Same shape and dtype as ``frames`` (integers rounded and clipped).
    """
    frames = np.asarray(frames)
    block_shifts = np.asarray(block_shifts)
    work = _working_dtype(frames.dtype)
    values = np.moveaxis(block_shifts, -1, 1).astype(work)  # (n, ndim, *grid)
    matrices = _interpolation_matrices(grid, work)
    out = np.empty(frames.shape, frames.dtype)
    for i, frame in enumerate(frames):
        frame = frame.astype(work, copy=False)
        if not np.all(np.isfinite(values[i])):
            moved = frame
        elif order <= 1:
            moved = _warp_frame(frame, values[i], matrices, order, mode, cval)
        else:
            coords = np.indices(grid.shape, dtype=work) + _interpolate(values[i], matrices)
            resample = functools.partial(ndimage.map_coordinates, coordinates=coords)
            moved = spline_resample(frame, resample, order, mode, cval)
        out[i] = round_to_dtype(moved, frames.dtype)
    return out
