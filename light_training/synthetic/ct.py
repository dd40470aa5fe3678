"""A synthetic chest CT (AIIB2023-like): body, lungs, vessels and a recursively bifurcating airway tree.

Everything is built in physical millimetres on the array grid, ``q = index * spacing`` in ``(z, y, x)``
order, with the array axes in LPS orientation (z up towards the head, y towards the back, x towards
the patient's left), and sized in proportion to the in-plane field of view, so a small volume is a
scaled-down version of a realistic one. The airway is a tree of capsules (cylinders with spherical
caps) whose lumen radius tapers from generation to generation; the label is the lumen.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Branch", "smooth_noise", "grow_airway_tree", "render_capsules", "synthesize_ct"]

HU_AIR, HU_LUNG, HU_WALL, HU_FAT, HU_TISSUE, HU_VESSEL, HU_BONE = -1000.0, -850.0, -100.0, -100.0, 40.0, 30.0, 450.0
MIN_GENERATIONS = 5  # bifurcation levels below the trachea that are always grown
MAX_GENERATIONS = 9  # deepest generation (the trachea is generation 0)


@dataclass(frozen=True)
class Branch:
    """One airway segment: a capsule from ``start`` to ``end`` (mm, ``(z, y, x)`` on the array grid).

    The lumen radius goes linearly from ``radius_start`` to ``radius_end`` (mm); ``parent`` is the index
    of the parent branch in the tree list (-1 for the trachea, generation 0).
    """
    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius_start: float
    radius_end: float
    generation: int
    parent: int


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Smooth random field of ``shape`` (float32, about zero mean, std 1) with features ``scale`` voxels wide.

    Drawn on a coarse grid and interpolated, so a field over a realistic volume costs well under a second.
    """
    coarse_shape = tuple(max(2, int(np.ceil(n / scale)) + 2) for n in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 0.7, mode="wrap")
    coarse /= coarse.std() + 1e-12
    zoom = [n / c for n, c in zip(shape, coarse_shape)]
    field = ndimage.zoom(coarse.astype(np.float32), zoom, order=1, grid_mode=True, mode="grid-mirror")
    field = field[tuple(slice(0, n) for n in shape)]
    if scale >= 4:  # round off the kinks of the linear interpolation
        field = ndimage.gaussian_filter(field, min(scale / 4, 4.0), truncate=2.5)
    return field / (field.std() + 1e-12)


def _ellipsoid(q: tuple[np.ndarray, ...], center, semi) -> np.ndarray:
    """Normalised ellipsoid radius ``||(q - center) / semi||`` broadcast from 1-D axis coordinates."""
    return np.sqrt(sum(((a - c) / s) ** 2 for a, c, s in zip(q, center, semi)))


@dataclass(frozen=True)
class _Anatomy:
    """Analytic body, lungs and heart (mm on the array grid), for drawing and for steering the tree."""
    body_center: tuple[float, float]  # (y, x)
    body_semi: tuple[float, float]
    lung_centers: tuple[tuple[float, float, float], tuple[float, float, float]]
    lung_semi: tuple[tuple[float, float, float], tuple[float, float, float]]
    heart_center: tuple[float, float, float]
    heart_semi: tuple[float, float, float]
    extent: tuple[float, float, float]  # of the volume: the tree is kept inside it

    def lung_depth(self, points: np.ndarray) -> np.ndarray:
        """How deep points ``(N, 3)`` lie inside a lung: > 0 inside (1 at a lung centre), < 0 outside."""
        depth = np.full(len(points), -np.inf)
        for center, semi in zip(self.lung_centers, self.lung_semi):
            depth = np.maximum(depth, 1 - np.sqrt((((points - center) / semi) ** 2).sum(axis=1)))
        heart = np.sqrt((((points - self.heart_center) / self.heart_semi) ** 2).sum(axis=1))
        depth = np.where(heart < 1, np.minimum(depth, heart - 1), depth)
        # the lungs go on beyond the field of view; the tree should stay inside it
        relative = points / np.asarray(self.extent)
        return np.minimum(depth, 3 * np.minimum(relative, 1 - relative).min(axis=1))


def _random_anatomy(rng: np.random.Generator, extent: np.ndarray) -> _Anatomy:
    lz, ly, lx = (float(v) for v in extent)
    cy, cx = ly * rng.uniform(0.48, 0.53), lx * rng.uniform(0.48, 0.52)
    body_semi = (ly * rng.uniform(0.34, 0.38), lx * rng.uniform(0.44, 0.47))
    lung_semi_x, lung_semi_y = lx * rng.uniform(0.15, 0.17), body_semi[0] * 0.78
    lung_semi_z = lz * rng.uniform(0.6, 0.7)
    offset = lx * rng.uniform(0.22, 0.24)
    lungs_z, lungs_y = lz * rng.uniform(0.3, 0.38), cy + ly * 0.02
    lung_centers = ((lungs_z, lungs_y, cx - offset), (lungs_z, lungs_y, cx + offset))
    lung_semi = ((lung_semi_z, lung_semi_y, lung_semi_x),
                 (lung_semi_z * rng.uniform(0.92, 1.0), lung_semi_y, lung_semi_x * 0.95))
    heart_center = (lz * rng.uniform(-0.1, 0.1), cy - ly * 0.08, cx + lx * 0.05)
    heart_semi = (lz * 0.5, ly * 0.16, lx * 0.13)
    return _Anatomy((cy, cx), body_semi, lung_centers, lung_semi, heart_center, heart_semi, (lz, ly, lx))


def _perpendicular_basis(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    helper = np.array([1.0, 0.0, 0.0]) if abs(u[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(u, helper)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(u, e1)


def grow_airway_tree(rng: np.random.Generator, anatomy: _Anatomy, extent: np.ndarray,
                     min_radius: float) -> list[Branch]:
    """Grow the airway breadth-first: trachea, then bifurcations with tapering radius and varied angles.

    Each bifurcation splits into a major and a minor child in a plane turned about 90 degrees from the
    parent's; of several candidate planes it keeps the one that puts both children deepest inside the
    lungs and farthest from the branches already grown (so the tree spreads through the lungs). Growth
    stops below ``min_radius`` (mm), but never before generation ``MIN_GENERATIONS``.
    """
    lz, ly, lx = (float(v) for v in extent)
    r0 = lx * rng.uniform(0.042, 0.05)
    carina = np.array([lz * rng.uniform(0.6, 0.68), anatomy.body_center[0] - ly * 0.02, anatomy.body_center[1]])
    top = carina + np.array([lz - carina[0] + 2 * r0, rng.uniform(-0.02, 0.02) * ly, rng.uniform(-0.02, 0.02) * lx])
    tree = [Branch(tuple(top), tuple(carina), r0, r0 * 0.95, 0, -1)]
    # (parent index, direction, length, plane angle) of the branches still to split
    down = (carina - top) / np.linalg.norm(carina - top)
    queue = [(0, down, lx * rng.uniform(0.13, 0.16), rng.uniform(0, np.pi))]
    ends = [carina]
    while queue:
        parent_index, u, length, phi_parent = queue.pop(0)
        parent = tree[parent_index]
        generation = parent.generation + 1
        r = parent.radius_end
        r_major, r_minor = r * rng.uniform(0.84, 0.9), r * rng.uniform(0.72, 0.8)
        if generation > MAX_GENERATIONS or (generation > MIN_GENERATIONS and r_major < min_radius):
            continue
        if generation == 1:  # main bronchi: right steeper and shorter than left (patient's right is -x)
            e1, e2 = np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])
            candidates = [0.0]
            angles = (np.radians(rng.uniform(45, 55)), np.radians(rng.uniform(30, 40)))  # (+x: left, -x: right)
            radii, lengths = (r_minor * 1.05, r_major), (length * 1.3, length)
        else:
            e1, e2 = _perpendicular_basis(u)
            base = phi_parent + np.pi / 2 + rng.uniform(-0.5, 0.5)
            candidates = base + np.linspace(0, np.pi, 6, endpoint=False)
            angles = (np.radians(rng.uniform(20, 38)), np.radians(rng.uniform(35, 60)))
            radii, lengths = (r_major, r_minor), (length * rng.uniform(0.72, 0.9), length * rng.uniform(0.62, 0.8))
        start = np.asarray(parent.end)
        placed = np.array(ends)
        best = None
        for phi in candidates:
            w = np.cos(phi) * e1 + np.sin(phi) * e2
            dirs = [np.cos(angles[0]) * u + np.sin(angles[0]) * w, np.cos(angles[1]) * u - np.sin(angles[1]) * w]
            tips = np.array([start + d * max(l, 2.5 * rr) for d, l, rr in zip(dirs, lengths, radii)])
            crowding = np.array([np.min(np.linalg.norm(placed - t, axis=1)) for t in tips]) / lx
            score = min(anatomy.lung_depth(tips)) + 0.5 * min(crowding.min(), 0.15) + rng.uniform(0, 0.02)
            if best is None or score > best[0]:
                best = (score, phi, dirs)
        _, phi, dirs = best
        for d, l, rr in zip(dirs, lengths, radii):
            d = d / np.linalg.norm(d)
            l = max(l, 2.5 * rr)
            shrink = 1.0
            if anatomy.lung_depth(start[None])[0] > 0:  # pull a tip that leaves the lungs back inside
                for shrink in (1.0, 0.75, 0.55):
                    if anatomy.lung_depth((start + d * l * shrink)[None])[0] > 0.03:
                        break
            end = start + d * l * shrink
            tree.append(Branch(tuple(start), tuple(end), rr, rr * 0.95, generation, parent_index))
            ends.append(end)
            inside = anatomy.lung_depth(end[None])[0] > 0 or generation < MIN_GENERATIONS
            if inside:
                queue.append((len(tree) - 1, d, l * shrink, phi))
    return tree


def render_capsules(shape: tuple[int, int, int], spacing: np.ndarray, branches: list[Branch],
                    radius_scale: float = 1.0, radius_add: float = 0.0,
                    offsets: np.ndarray | None = None) -> np.ndarray:
    """Partial-volume occupancy ``(Z, Y, X)`` float32 in [0, 1] of the union of tapered capsules.

    The radius of a branch at a point is ``radius * radius_scale + radius_add`` (mm), so one tree gives
    the lumen and, wider, its outer wall. ``offsets`` ``(N, 3)`` mm shifts each capsule (the vessels
    beside the bronchi). Each capsule is evaluated only inside its bounding box.
    """
    occupancy = np.zeros(shape, np.float32)
    soft = float(np.min(spacing))  # width of the partial-volume ramp
    for i, b in enumerate(branches):
        shift = 0.0 if offsets is None else offsets[i]
        p0, p1 = np.asarray(b.start) + shift, np.asarray(b.end) + shift
        ra, rb = b.radius_start * radius_scale + radius_add, b.radius_end * radius_scale + radius_add
        reach = max(ra, rb) + soft
        lo = np.maximum(np.floor((np.minimum(p0, p1) - reach) / spacing).astype(int), 0)
        hi = np.minimum(np.ceil((np.maximum(p0, p1) + reach) / spacing).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        q = [np.arange(lo[a], hi[a], dtype=np.float32)[tuple(slice(None) if k == a else None for k in range(3))]
             * spacing[a] - p0[a] for a in range(3)]
        axis = p1 - p0
        t = sum(q[a] * axis[a] for a in range(3)) / max(float(axis @ axis), 1e-9)
        t = np.clip(t, 0.0, 1.0)
        dist = np.sqrt(sum((q[a] - t * axis[a]) ** 2 for a in range(3)))
        occ = np.clip(0.5 + (ra + t * (rb - ra) - dist) / soft, 0.0, 1.0)
        region = tuple(slice(l, h) for l, h in zip(lo, hi))
        np.maximum(occupancy[region], occ, out=occupancy[region])
    return occupancy


def synthesize_ct(rng: np.random.Generator, shape: tuple[int, int, int],
                  spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, list[Branch]]:
    """One chest CT: image ``(Z, Y, X)`` int16 in HU, label ``(Z, Y, X)`` uint8 (1 = airway lumen), the tree.

    ``spacing`` is (z, y, x) mm; the anatomy is in LPS orientation on the array axes.
    """
    spacing = np.asarray(spacing, float)
    extent = np.asarray(shape) * spacing
    anatomy = _random_anatomy(rng, extent)
    q = [(np.arange(n, dtype=np.float32) * s)[tuple(slice(None) if k == a else None for k in range(3))]
         for a, (n, s) in enumerate(zip(shape, spacing))]
    soft = float(np.min(spacing))
    wobble = smooth_noise(rng, shape, 24)  # irregular outlines of body and lungs
    in_plane_scale = float(min(anatomy.body_semi))

    body = _ellipsoid(q[1:], anatomy.body_center, anatomy.body_semi) + 0.015 * wobble
    inside_body = np.clip(0.5 + (1 - body) * in_plane_scale / soft, 0, 1)
    fat = np.clip(0.5 + (body - 0.9) * in_plane_scale / soft, 0, 1)  # subcutaneous fat under the skin
    image = HU_AIR + inside_body * (HU_TISSUE - HU_AIR + fat * (HU_FAT - HU_TISSUE))

    spine_center = (anatomy.body_center[0] + 0.72 * anatomy.body_semi[0], anatomy.body_center[1])
    spine = _ellipsoid(q[1:], spine_center, (0.14 * anatomy.body_semi[0], 0.1 * anatomy.body_semi[1]))
    image += np.clip(0.5 + (1 - spine) * 0.1 * in_plane_scale / soft, 0, 1) * (HU_BONE - HU_TISSUE)

    depth = np.full(shape, -np.inf, np.float32)
    for center, semi in zip(anatomy.lung_centers, anatomy.lung_semi):
        depth = np.maximum(depth, 1 - _ellipsoid(q, center, semi) - 0.04 * wobble)
    heart = _ellipsoid(q, anatomy.heart_center, anatomy.heart_semi)
    depth = np.minimum(depth, heart - 1)
    lung = np.clip(0.5 + depth * in_plane_scale * 0.5 / soft, 0, 1)
    # parenchyma: fine texture, and denser towards the back (gravity-dependent)
    parenchyma = HU_LUNG + 18 * smooth_noise(rng, shape, 3) + 40 * (q[1] / extent[1] - 0.5)
    image += lung * (parenchyma - image)

    tree = grow_airway_tree(rng, anatomy, extent, min_radius=0.75 * float(spacing[1:].min()))
    wall = 0.3  # wall thickness as a fraction of the lumen radius, at least ~ half a voxel
    # pulmonary arteries run beside the bronchi (generation >= 2), about as wide as the lumen
    vessel_branches = [b for b in tree if b.generation >= 2]
    offsets = []
    for b in vessel_branches:
        axis = np.subtract(b.end, b.start)
        e1, e2 = _perpendicular_basis(axis / (np.linalg.norm(axis) + 1e-9))
        angle = rng.uniform(0, 2 * np.pi)
        offsets.append((np.cos(angle) * e1 + np.sin(angle) * e2) * (b.radius_start * (2.2 + wall) + 0.5 * soft))
    vessels = render_capsules(shape, spacing, vessel_branches, radius_scale=1.0,
                              offsets=np.array(offsets).reshape(-1, 3))
    image += vessels * (HU_VESSEL - image)
    outer = render_capsules(shape, spacing, tree, radius_scale=1 + wall, radius_add=0.5 * soft)
    image += outer * (HU_WALL - image)
    lumen = render_capsules(shape, spacing, tree)
    image += lumen * (HU_AIR - image)
    label = (lumen > 0.5).astype(np.uint8)

    image = ndimage.gaussian_filter(image, sigma=0.6, truncate=3.0)  # scanner point-spread (partial volume)
    image += rng.standard_normal(shape, dtype=np.float32) * np.float32(rng.uniform(12, 25))
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16), label, tree
