"""Deterministic synthetic abdominal CT phantom: the project's embedded sample (real CT is not shipped).

`make_phantom(seed)` returns an int16 HU image and a uint8 BTCV label map (0 background, 1..13 organs, see
`labels.BTCV_LABEL_NAMES`). The anatomy is built in patient (LPS world) millimetres: x to the patient's
Left, y Posterior, z Superior, the body centred on the world origin, and sampled at every voxel's physical
position, so any shape, spacing, origin or (oblique) direction shows the same body. The default grid
(128 x 112 x 96 voxels of 3 mm, direction diag(-1, -1, 1): voxel x runs to the patient's right, y to
anterior, z to superior, i.e. what SimpleITK reports for a NIfTI with a RAS affine) covers
384 x 336 x 288 mm from the lower thorax to the lower lumbar spine.

The seed changes organ positions (a few mm up to ~10 mm), sizes (about +-12 %), smooth shape deformation,
body habitus, enhancement level, bowel pattern, texture and noise; the same seed gives bit-identical output.
All randomness of the anatomy and its texture is defined in world space (independent of the grid); only
the scanner noise is drawn per voxel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.interpolate import CubicSpline

from ..errors import InputError

CONTRASTS = ("portal-venous", "native")
DEFAULT_SHAPE = (128, 112, 96)
DEFAULT_SPACING = (3.0, 3.0, 3.0)
DEFAULT_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)

SPLEEN, R_KIDNEY, L_KIDNEY, GALLBLADDER, ESOPHAGUS, LIVER, STOMACH = 1, 2, 3, 4, 5, 6, 7
AORTA, IVC, PORTAL_SPLENIC, PANCREAS, R_ADRENAL, L_ADRENAL = 8, 9, 10, 11, 12, 13

# Mean HU of each tissue: (portal-venous, native). Seeds jitter the enhancement (pv - native) and add a
# few HU per organ.
_HU = {
    "liver": (110.0, 60.0),
    "liver_vessel": (160.0, 40.0),
    "spleen": (120.0, 45.0),
    "kidney_cortex": (180.0, 35.0),
    "kidney_medulla": (140.0, 32.0),
    "gallbladder": (10.0, 10.0),
    "esophagus": (60.0, 40.0),
    "stomach_wall": (90.0, 40.0),
    "aorta": (170.0, 40.0),
    "ivc": (150.0, 40.0),
    "portal": (155.0, 40.0),
    "pancreas": (100.0, 40.0),
    "adrenal": (75.0, 35.0),
    "muscle": (60.0, 50.0),
    "bowel_wall": (95.0, 35.0),
    "heart_blood": (160.0, 40.0),
    "myocardium": (110.0, 45.0),
}
_FAT, _FLUID, _GAS, _LUNG, _SKIN = -100.0, 12.0, -950.0, -850.0, 20.0
_BONE_CORTEX, _BONE_CANCELLOUS, _BONE_ARCH, _RIB, _DISC, _CSF = 850.0, 250.0, 550.0, 480.0, 90.0, 10.0

# Scanner noise: white noise blurred by a Gaussian of _NOISE_BLUR voxels, whose std (_NOISE_STD) is undone.
_NOISE_BLUR = 0.6
_NOISE_TAPS = np.exp(-(np.arange(-2, 3) ** 2) / (2 * _NOISE_BLUR**2))
_NOISE_STD = float(np.sqrt(np.sum((_NOISE_TAPS / _NOISE_TAPS.sum()) ** 2)) ** 3)

# Half-extent (mm) of the world box on which the smooth texture fields live; outside it they are constant.
_FIELD_BOX = np.array([216.0, 192.0, 176.0])


def _numbers(value, count: int, option: str, what: str) -> tuple[float, ...]:
    """`value` as a tuple of `count` finite numbers, else an InputError naming `option`."""
    message = f"{option} {value!r} must be {what}."
    try:
        numbers = tuple(float(v) for v in np.asarray(value, dtype=float).ravel())
    except (TypeError, ValueError):
        raise InputError(message) from None
    if len(numbers) != count or not all(np.isfinite(numbers)):
        raise InputError(message)
    return numbers


def _validate(seed, shape, spacing, contrast, noise_hu, direction, origin):
    if not isinstance(contrast, str) or contrast not in CONTRASTS:
        raise InputError(f"--contrast {contrast!r} is not one of {', '.join(CONTRASTS)}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"--seed {seed!r} must be an integer >= 0.")
    what = "three positive integers (x y z voxels)"
    sizes = _numbers(shape, 3, "--shape", what)
    if min(sizes) < 1 or any(v != int(v) for v in sizes):
        raise InputError(f"--shape {shape!r} must be {what}.")
    shape = tuple(int(v) for v in sizes)
    spacing = _numbers(spacing, 3, "--spacing", "three positive numbers (x y z, mm)")
    if min(spacing) <= 0:
        raise InputError(f"--spacing {spacing!r} must be three positive numbers (x y z, mm).")
    (noise_hu,) = _numbers(noise_hu, 1, "--noise-hu", "a number >= 0 (HU)")
    if noise_hu < 0:
        raise InputError(f"--noise-hu {noise_hu!r} must be a number >= 0 (HU).")
    what = "9 numbers (row-major 3x3) forming an orthonormal matrix"
    numbers = _numbers(DEFAULT_DIRECTION if direction is None else direction, 9, "--direction", what)
    matrix = np.array(numbers).reshape(3, 3)
    if not np.allclose(matrix @ matrix.T, np.eye(3), atol=1e-5):
        raise InputError(f"--direction {numbers} must be {what}.")
    if origin is None:  # centre the volume on the world origin
        origin = -(matrix @ ((np.array(shape) - 1) * np.array(spacing) / 2))
    origin = _numbers(origin, 3, "--origin", "three numbers (x y z, mm)")
    return shape, spacing, noise_hu, matrix, origin


class _Grid:
    """World (LPS mm) coordinates of every voxel, float32 arrays in numpy (z, y, x) order."""

    def __init__(self, shape, spacing, direction: np.ndarray, origin):
        self.size = np.array(shape)
        self.spacing = np.array(spacing, dtype=float)
        self.direction = direction
        self.origin = np.array(origin, dtype=float)
        step = direction * self.spacing  # world = origin + step @ index
        ix, iy, iz = (np.arange(n, dtype=float) for n in shape)
        coords = []
        for axis in range(3):
            c = (
                self.origin[axis]
                + step[axis, 0] * ix[None, None, :]
                + step[axis, 1] * iy[None, :, None]
                + step[axis, 2] * iz[:, None, None]
            )
            coords.append(np.broadcast_to(c, tuple(shape[::-1])).astype(np.float32))
        self.X, self.Y, self.Z = coords
        self.shape = self.X.shape

    def box(self, lo, hi):
        """Index slices (z, y, x) of the voxels that may lie in the world box [lo, hi] (mm), or None."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        corners = np.array([[(lo, hi)[(k >> a) & 1][a] for a in range(3)] for k in range(8)])
        index = ((corners - self.origin) @ self.direction) / self.spacing
        first = np.clip(np.floor(index.min(0)).astype(int), 0, self.size)
        last = np.clip(np.ceil(index.max(0)).astype(int) + 1, 0, self.size)
        if np.any(last <= first):
            return None
        return tuple(slice(first[a], last[a]) for a in (2, 1, 0))

    def coords(self, sl):
        return self.X[sl], self.Y[sl], self.Z[sl]


_EMPTY = (slice(0, 0),) * 3  # the region of a primitive that misses the grid


class _WorldNoise:
    """Smooth Gaussian random field with unit std on a fixed world lattice, sampled trilinearly."""

    def __init__(self, rng: np.random.Generator, sigma_mm: float, lattice_mm: float):
        self.lattice = lattice_mm
        n = np.ceil(2 * _FIELD_BOX / lattice_mm).astype(int) + 1
        field = rng.standard_normal((n[2], n[1], n[0]), dtype=np.float32)
        field = ndimage.gaussian_filter(field, sigma_mm / lattice_mm, mode="wrap")
        self.field = field / field.std()

    def sample(self, X, Y, Z):
        index = [(c + _FIELD_BOX[a]) / self.lattice for a, c in ((2, Z), (1, Y), (0, X))]
        return ndimage.map_coordinates(self.field, index, order=1, mode="nearest").astype(np.float32)


def _rotation(ax: float = 0.0, ay: float = 0.0, az: float = 0.0) -> np.ndarray:
    """Rotation matrix of angles (degrees) about x, then y, then z."""
    a, b, c = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _shape_terms(a, b, c):
    """Smooth functions of a unit direction (a, b, c) that deform an ellipsoid's radius."""
    return (
        a,
        b,
        c,
        a * b,
        a * c,
        b * c,
        a * a - b * b,
        3 * c * c - 1,
        a * b * c,
        a**3,
        b**3,
        c**3,
        a * c * c,
    )


_N_SHAPE_TERMS = 13


class _Ellipsoid:
    """Star-shaped deformed ellipsoid: inside where |u| < 1 + delta(u/|u|), u the normalised local offset."""

    def __init__(self, centre, semi, rotation=None, deform=None):
        self.centre = np.asarray(centre, float)
        self.semi = np.asarray(semi, float)
        self.rotation = np.eye(3) if rotation is None else np.asarray(rotation, float)
        self.deform = deform

    def field(self, grid: _Grid):
        """(slices, f): f < 1 inside, ~ normalised radius (valid up to f ~ 1.15); empty if off the grid."""
        extent = np.abs(self.rotation) @ (self.semi * 1.5)
        sl = grid.box(self.centre - extent, self.centre + extent)
        if sl is None:
            return _EMPTY, np.zeros((0, 0, 0), np.float32)
        X, Y, Z = grid.coords(sl)
        d = (X - np.float32(self.centre[0]), Y - np.float32(self.centre[1]), Z - np.float32(self.centre[2]))
        u = [sum(np.float32(self.rotation[k, j] / self.semi[j]) * d[k] for k in range(3)) for j in range(3)]
        r = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
        if self.deform is not None:
            inv = 1.0 / np.maximum(r, 1e-6)
            delta = sum(
                np.float32(k) * t
                for k, t in zip(self.deform, _shape_terms(u[0] * inv, u[1] * inv, u[2] * inv), strict=True)
            )
            r = r / (1.0 + np.clip(delta, -0.3, 0.3))
        return sl, r

    def local(self, grid: _Grid, sl):
        """Normalised local coordinates (u0, u1, u2) of the voxels in `sl`, without deformation."""
        X, Y, Z = grid.coords(sl)
        d = (X - np.float32(self.centre[0]), Y - np.float32(self.centre[1]), Z - np.float32(self.centre[2]))
        return [
            sum(np.float32(self.rotation[k, j] / self.semi[j]) * d[k] for k in range(3)) for j in range(3)
        ]


class _Tube:
    """Tube of varying radius (mm) along a cubic spline through control points (mm)."""

    def __init__(self, points, radii):
        self.points = np.asarray(points, float)
        self.radii = np.asarray(radii, float)

    def field(self, grid: _Grid):
        """(slices, signed distance in mm to the tube surface, negative inside); empty if off the grid."""
        pts, radii = self.points, self.radii
        chord = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))]
        step = float(np.clip(radii.min(), 2.0, 5.0))
        s = np.linspace(0.0, chord[-1], max(2, int(np.ceil(chord[-1] / step)) + 1))
        if len(pts) >= 3:
            path = CubicSpline(chord, pts, bc_type="natural")(s)
        else:
            path = np.stack([np.interp(s, chord, pts[:, a]) for a in range(3)], axis=1)
        rad = np.interp(s, chord, radii)
        outer = grid.box(path.min(0) - rad.max() - 1, path.max(0) + rad.max() + 1)
        if outer is None:
            return _EMPTY, np.zeros((0, 0, 0), np.float32)
        sdf = np.full(tuple(o.stop - o.start for o in outer), np.inf, dtype=np.float32)
        for k in range(len(s) - 1):
            p0, p1, r0, r1 = path[k], path[k + 1], rad[k], rad[k + 1]
            reach = max(r0, r1) + 1
            sub = grid.box(np.minimum(p0, p1) - reach, np.maximum(p0, p1) + reach)
            if sub is None:
                continue
            rel = tuple(
                slice(max(0, s_.start - o.start), min(o.stop, s_.stop) - o.start)
                for s_, o in zip(sub, outer, strict=True)
            )
            X, Y, Z = grid.coords(sub)
            d = p1 - p0
            length2 = max(float(d @ d), 1e-9)
            vx, vy, vz = X - np.float32(p0[0]), Y - np.float32(p0[1]), Z - np.float32(p0[2])
            t = np.clip((vx * d[0] + vy * d[1] + vz * d[2]) * np.float32(1 / length2), 0, 1)
            dist = np.sqrt((vx - t * d[0]) ** 2 + (vy - t * d[1]) ** 2 + (vz - t * d[2]) ** 2)
            dist -= r0 + t * np.float32(r1 - r0)
            np.minimum(sdf[rel], dist, out=sdf[rel])
        return outer, sdf


class _Canvas:
    """HU, label and texture-amplitude volumes that primitives are painted onto (later paint wins)."""

    def __init__(self, grid: _Grid):
        self.grid = grid
        self.hu = np.full(grid.shape, -1000.0, dtype=np.float32)
        self.label = np.zeros(grid.shape, dtype=np.uint8)
        self.texture = np.zeros(grid.shape, dtype=np.float32)

    def paint(self, sl, mask, hu, label: int = 0, texture: float = 5.0, within=None):
        """Set HU (scalar or array like `mask`), label and texture amplitude (HU) where `mask` (& `within`)."""
        if within is not None:
            mask = mask & within[sl]
        self.hu[sl][mask] = hu[mask] if isinstance(hu, np.ndarray) else hu
        self.label[sl][mask] = label
        self.texture[sl][mask] = texture


class _Anatomy:
    """One seed's body: random draws in a fixed order that never depends on the grid, and its textures."""

    def __init__(self, seed: int, contrast: str):
        anat_seq, tex_seq, self.noise_seq = np.random.SeedSequence(seed).spawn(3)
        rng = np.random.default_rng(anat_seq)
        self.rng = rng
        self.scale = np.array([rng.uniform(0.93, 1.07), rng.uniform(0.92, 1.08), rng.uniform(0.95, 1.05)])
        self.body_semi = np.array([165.0, 118.0]) * self.scale[:2]
        self.fat = rng.uniform(12.0, 30.0)
        self.muscle = rng.uniform(9.0, 14.0)
        enhancement = rng.uniform(0.88, 1.12)
        self.hu = {}
        for name, (pv, native) in _HU.items():
            jitter = float(np.clip(rng.normal(0, 4.0), -8, 8))
            value = native + enhancement * (pv - native) if contrast == "portal-venous" else native
            self.hu[name] = value + (jitter if contrast == "portal-venous" else jitter / 2)
        self.stomach_air = rng.uniform(0.0, 0.45)
        self.stomach_food = rng.uniform() < 0.35
        self.colon_gas = rng.uniform(0.2, 0.8)
        self.esophagus_air = rng.uniform() < 0.4
        self.bowel_density = rng.uniform(-0.15, 0.15)
        tex_rng = np.random.default_rng(tex_seq)
        self.texture = _WorldNoise(tex_rng, 3.0, 3.0)
        self.bowel = _WorldNoise(tex_rng, 7.0, 4.0)
        self.gas = _WorldNoise(tex_rng, 5.0, 4.0)

    def pos(self, p):
        """Template position (mm) scaled by this body's habitus."""
        return np.asarray(p, float) * self.scale

    def offset(self, sd: float = 4.0, limit: float = 10.0) -> np.ndarray:
        return np.clip(self.rng.normal(0.0, sd, 3), -limit, limit)

    def size(self, spread: float = 0.12) -> np.ndarray:
        """Per-axis size factors: one organ scale (+-spread) times a small anisotropy."""
        return self.rng.uniform(1 - spread, 1 + spread) * self.rng.uniform(0.95, 1.05, 3) * self.scale.mean()

    def turn(self, degrees: float = 7.0) -> np.ndarray:
        return _rotation(*np.clip(self.rng.normal(0.0, degrees / 2, 3), -degrees, degrees))

    def deform(self, amount: float = 0.05) -> np.ndarray:
        return self.rng.normal(0.0, amount, _N_SHAPE_TERMS)

    def ellipsoid(self, centre, semi, rotation=None, shift=None, amount=0.05, spread=0.12) -> _Ellipsoid:
        rotation = (np.eye(3) if rotation is None else rotation) @ self.turn()
        centre = self.pos(centre) + (self.offset() if shift is None else shift)
        return _Ellipsoid(centre, np.asarray(semi) * self.size(spread), rotation, self.deform(amount))

    def tube(self, points, radii, shift_start=None, shift_end=None, wiggle=2.5, spread=0.1) -> _Tube:
        """Jittered tube; the structure's shift blends from `shift_start` to `shift_end` along its length."""
        points = np.array([self.pos(p) for p in points])
        start = self.offset() if shift_start is None else shift_start
        end = start if shift_end is None else shift_end
        w = np.linspace(0, 1, len(points))[:, None]
        points = points + (1 - w) * start + w * end
        points += np.clip(self.rng.normal(0, wiggle, points.shape), -2 * wiggle, 2 * wiggle)
        radii = np.asarray(radii, float) * self.rng.uniform(1 - spread, 1 + spread) * self.scale.mean()
        return _Tube(points, radii)


def _spine_y(z):
    """Vertebral body centre y (mm, posterior) at height z: mild lumbar lordosis."""
    return 48.0 - 8.0 * np.exp(-(((z + 70.0) / 80.0) ** 2))


def _build(grid: _Grid, a: _Anatomy) -> _Canvas:
    canvas = _Canvas(grid)
    X, Y, Z = grid.X, grid.Y, grid.Z
    hu = a.hu
    rng = a.rng
    full = (slice(None),) * 3

    # --- body outline: skin, subcutaneous fat, muscle wall; the cavity inside ------------------------
    semi_x = a.body_semi[0] * (1 + 0.04 * Z / 144.0)
    semi_y = a.body_semi[1] * (1 + 0.03 * Z / 144.0)
    power = np.where(Y > 0, np.float32(2.8), np.float32(2.0))
    rho = ((np.abs(X) / semi_x) ** power + (np.abs(Y) / semi_y) ** power) ** (1.0 / power)
    radius = np.sqrt(X**2 + Y**2)
    depth = radius * (1.0 / np.maximum(rho, 1e-3) - 1.0)  # mm inside the skin along the radial ray
    del semi_x, semi_y, power, radius
    fat_t = np.float32(a.fat) * np.where(Y > 40, np.float32(0.7), np.float32(1.0))
    wall = fat_t + np.float32(a.muscle)
    body = rho < 1
    cavity = body & (depth > wall)
    canvas.paint(full, body, _SKIN, texture=4)
    canvas.paint(full, body & (depth > 2.5), _FAT, texture=8)
    canvas.paint(full, body & (depth > fat_t), hu["muscle"], texture=5)
    canvas.paint(full, cavity, _FAT, texture=10)
    by = float(a.body_semi[1])
    table = (np.abs(X) < 200) & (Y > by + 6) & (Y < by + 22)
    canvas.paint(full, table, np.where(Y < by + 9, np.float32(150), np.float32(-400)), texture=10)

    # --- thorax above the diaphragm: lungs, heart, mediastinal fat ----------------------------------
    back = np.where(Y > -5, np.float32(0.009), np.float32(0.003)) * (Y + 5) ** 2  # deep posterior recesses
    dome_r = 128.0 * a.scale[2] - 0.006 * (X + 65) ** 2 - back
    dome_l = 118.0 * a.scale[2] - 0.006 * (X - 65) ** 2 - back
    dome_c = 108.0 * a.scale[2] - 0.004 * X**2 - 0.004 * (Y + 30) ** 2
    diaphragm = np.maximum(np.maximum(dome_r, dome_l), dome_c) + np.float32(rng.normal(0, 3))
    del dome_r, dome_l, dome_c, back
    thorax = cavity & (Z > diaphragm)
    abdomen = cavity & (Z < diaphragm - 4)
    canvas.paint(full, cavity & (Z >= diaphragm - 4), hu["muscle"], texture=5)
    canvas.paint(full, thorax, _LUNG, texture=25)
    mediastinum = thorax & (np.abs(X - 5) < 28) & (Y > -15) & (Y < _spine_y(Z) + 10)
    canvas.paint(full, mediastinum, -80.0, texture=10)
    heart = a.ellipsoid((15, -45, 166), (72, 58, 58), _rotation(0, 0, 25), amount=0.03)
    sl, f = heart.field(grid)
    canvas.paint(sl, f < 1, np.where(f < 0.72, hu["heart_blood"], hu["myocardium"]), texture=4, within=thorax)
    canvas.paint(sl, (f >= 1) & (f < 1.08), _FAT, texture=6, within=thorax)

    # --- small bowel and mesenteric fat (background), colon and duodenum ------------------------------
    inside = np.nonzero(abdomen)
    bx, byy, bz = X[inside], Y[inside], Z[inside]
    pattern = a.bowel.sample(bx, byy, bz)
    bias = (
        a.bowel_density
        + 0.5 / (1 + np.exp((byy + 10) / 25))  # more bowel anteriorly
        + 0.35 / (1 + np.exp((bz - 10) / 25))  # and lower down
        - 0.7 / (1 + np.exp(-(byy - 25) / 12))  # retroperitoneal fat posteriorly
        - 0.45
    )
    level = pattern + bias
    gas = a.gas.sample(bx, byy, bz)
    bowel_hu = np.where(
        level > 0.45, np.where(gas > 1.8, np.float32(_GAS), np.float32(_FLUID)), hu["bowel_wall"]
    )
    is_bowel = level > 0.25
    canvas.hu[inside] = np.where(is_bowel, bowel_hu, canvas.hu[inside])
    canvas.texture[inside] = np.where(is_bowel, np.float32(6), canvas.texture[inside])
    del pattern, bias, level, bowel_hu, is_bowel, bx, byy, bz

    def hollow(tube: _Tube, wall_hu, content, wall_mm=3.0):
        """Unlabelled bowel segment: enhancing wall `wall_mm` thick around `content` (HU or f(sl, sdf))."""
        sl, sdf = tube.field(grid)
        content = content(sl, sdf) if callable(content) else content
        canvas.paint(sl, sdf < 0, np.where(sdf < -wall_mm, content, np.float32(wall_hu)), 0, 6, abdomen)

    def colon_content(sl, sdf):
        g = a.gas.sample(*grid.coords(sl))
        return np.where(g + 1.2 * a.colon_gas - 0.6 > 0, np.float32(_GAS), np.float32(25.0)).astype(
            np.float32
        )

    colon = a.tube(
        [
            (-105, 0, -150),
            (-108, -5, -60),
            (-105, -20, 5),
            (-80, -55, 18),
            (-35, -85, 8),
            (10, -90, 0),
            (55, -80, 15),
            (100, -25, 45),
            (112, 10, 0),
            (108, 15, -80),
            (100, 10, -150),
        ],
        [24, 24, 23, 22, 22, 21, 21, 20, 19, 18, 18],
    )
    hollow(colon, hu["bowel_wall"], colon_content, wall_mm=2.5)
    duodenum = a.tube(
        [
            (-20, -48, 24),
            (-42, -30, 18),
            (-55, -12, 0),
            (-50, -5, -25),
            (-25, -10, -38),
            (5, -14, -40),
            (28, -14, -28),
            (35, -22, -8),
        ],
        [12, 12, 12, 11, 11, 11, 11, 11],
    )
    hollow(duodenum, hu["bowel_wall"], np.float32(_FLUID))

    # --- muscles: psoas, quadratus lumborum, paraspinal ------------------------------------------------
    ys = _spine_y(Z)
    for side in (-1, 1):
        below = np.maximum(0.0, 60.0 - Z)
        r = np.minimum(4.0 + 0.14 * below, 26.0)
        px = side * (30.0 + 0.09 * below)
        py = ys + 2.0 - 0.08 * below
        psoas = ((X - px) / r) ** 2 + ((Y - py) / (0.85 * r)) ** 2 < 1
        canvas.paint(full, psoas & (Z < 60), hu["muscle"], texture=5, within=cavity)
        ql = ((X - side * 62) / 20.0) ** 2 + ((Y - ys - 40) / 10.0) ** 2 < 1
        canvas.paint(full, ql & (Z < 30) & (Z > -120), hu["muscle"], texture=5, within=cavity)
        erector = ((X - side * 34) / 26.0) ** 2 + ((Y - ys - 46) / 17.0) ** 2 < 1
        canvas.paint(full, erector, hu["muscle"], texture=5, within=body & (depth > fat_t))
    del below, r, px, py, psoas, ql, erector

    # --- organs ---------------------------------------------------------------------------------------
    # Stomach: J-shaped hollow tube, fundus under the left dome to the pylorus right of the midline;
    # air rises anteriorly (supine), then fluid or food.
    stomach = a.tube(
        [(48, 18, 98), (68, -10, 76), (66, -42, 48), (38, -62, 28), (5, -62, 22), (-18, -50, 24)],
        [30, 34, 30, 22, 16, 12],
    )
    sl, sdf = stomach.field(grid)
    _, Ys, _ = grid.coords(sl)
    front, back = np.min(stomach.points[:, 1] - stomach.radii), np.max(stomach.points[:, 1] + stomach.radii)
    y_air = front + a.stomach_air * 0.6 * (back - front)  # air-fluid level (mm), a world plane
    content = np.float32(45.0 if a.stomach_food else 15.0)
    lumen = np.where(Ys < y_air, np.float32(_GAS), content)
    canvas.paint(sl, sdf < 0, np.where(sdf < -4, lumen, np.float32(hu["stomach_wall"])), STOMACH, 8, abdomen)

    # Pancreas: head in the duodenal C-loop, body over the aorta, tail to the splenic hilum.
    spleen_shift, liver_shift = a.offset(), a.offset()
    pancreas = a.tube(
        [(-30, -14, 6), (-8, -20, 20), (22, -14, 28), (50, 2, 33), (76, 22, 40)],
        [16, 11, 10, 9, 8],
        shift_end=spleen_shift,
    )
    sl, sdf = pancreas.field(grid)
    canvas.paint(sl, sdf < 0, hu["pancreas"], PANCREAS, 12, abdomen)

    # Liver: right lobe + left lobe, below the diaphragm, inferior surface slanting up to the left.
    right_lobe = a.ellipsoid((-65, 5, 55), (66, 80, 72), shift=liver_shift, amount=0.04)
    left_lobe = a.ellipsoid((12, -42, 82), (58, 36, 30), _rotation(0, 0, -15), shift=liver_shift, amount=0.06)
    cut = np.float32(51.0 + liver_shift[2])  # inferior surface z = cut + 0.55 x + 0.1 y (mm)
    for lobe in (right_lobe, left_lobe):
        sl, f = lobe.field(grid)
        Xs, Ys, Zs = grid.coords(sl)
        canvas.paint(sl, (f < 1) & (Zs > cut + 0.55 * Xs + 0.1 * Ys), hu["liver"], LIVER, 5, abdomen)
    # hepatic and portal vein branches inside the liver (labelled liver)
    hv_root = a.pos((-22, 0, 104)) + liver_shift
    pv_root = a.pos((-45, -15, 45)) + liver_shift
    branches = [
        (hv_root, (-120, 10, 90), 6.0),
        (hv_root, (-65, -70, 84), 5.0),
        (hv_root, (25, -60, 96), 5.0),
        (pv_root, (-110, 15, 60), 6.0),
        (pv_root, (-105, -40, 35), 4.5),
        (pv_root, (-70, 50, 75), 4.5),
        (pv_root, (25, -55, 75), 4.5),
    ]
    for root, tip, r0 in branches:
        tip = a.pos(tip) + liver_shift
        mid = (root + tip) / 2 + rng.normal(0, 6, 3)
        vessel = _Tube(np.array([root, mid, tip]), np.array([r0, r0 * 0.7, 1.8]) * rng.uniform(0.85, 1.15))
        sl, sdf = vessel.field(grid)
        canvas.paint(sl, (sdf < 0) & (canvas.label[sl] == LIVER), hu["liver_vessel"], LIVER, 3)

    # Gallbladder: pear-shaped fluid sac at the inferior-anterior liver surface.
    gallbladder = a.ellipsoid(
        (-48, -58, 18), (15, 16, 34), _rotation(35, -15, 0), shift=liver_shift + a.offset(2, 5)
    )
    sl, f = gallbladder.field(grid)
    canvas.paint(sl, f < 1, hu["gallbladder"], GALLBLADDER, 3, abdomen)

    # Spleen: crescent (convex lateral-posterior, hilum anteromedial) in the left upper quadrant.
    axes = _rotation(0, 0, 30)
    spleen = a.ellipsoid((80, 36, 52), (24, 56, 48), axes, shift=spleen_shift, amount=0.05)
    hilum = _Ellipsoid(
        spleen.centre - 1.3 * spleen.semi[0] * spleen.rotation[:, 0],
        spleen.semi * (0.85, 0.55, 0.55),
        spleen.rotation,
    )
    sl, f = spleen.field(grid)
    h = hilum.local(grid, sl)
    notch = h[0] ** 2 + h[1] ** 2 + h[2] ** 2 < 1
    canvas.paint(sl, (f < 1) & ~notch, hu["spleen"], SPLEEN, 5, abdomen)

    # Kidneys: bean shape (sinus fat + pelvis at the anteromedial hilum), cortex and medulla, fat halo.
    kidneys = {}
    for label, side, centre in ((R_KIDNEY, -1, (-66, 54, -12)), (L_KIDNEY, 1, (64, 50, 2))):
        frame = np.diag([float(side), 1.0, 1.0]) @ _rotation(-12, -12, 0)  # upper pole medial, posterior
        frame = _rotation(0, 0, side * 25) @ frame  # hilum turned anteromedially
        kidney = a.ellipsoid(centre, (27, 24, 54), frame, amount=0.035, spread=0.1)
        kidneys[label] = kidney
        sl, f = kidney.field(grid)
        canvas.paint(sl, (f < 1.12), _FAT, 0, 10, abdomen)
        u = kidney.local(grid, sl)
        sinus = ((u[0] + 0.85) / 0.62) ** 2 + ((u[1] + 0.1) / 0.4) ** 2 + (u[2] / 0.5) ** 2 < 1
        pelvis = ((u[0] + 0.55) / 0.3) ** 2 + ((u[1] + 0.05) / 0.2) ** 2 + (u[2] / 0.28) ** 2 < 1
        tissue = np.where(f > 0.72, np.float32(hu["kidney_cortex"]), np.float32(hu["kidney_medulla"]))
        canvas.paint(sl, (f < 1) & ~sinus, tissue, label, 6, abdomen)
        canvas.paint(sl, (f < 1) & sinus & ~pelvis, _FAT, 0, 8, abdomen)
        canvas.paint(sl, (f < 1) & pelvis, _FLUID, 0, 3, abdomen)

    # Adrenals: two thin limbs (inverted V) anteromedial to each upper pole, in a fat halo.
    for label, side, kid in ((R_ADRENAL, -1, R_KIDNEY), (L_ADRENAL, 1, L_KIDNEY)):
        pole = kidneys[kid].centre + kidneys[kid].rotation @ (kidneys[kid].semi * (0, 0, 0.8))
        hub = pole + np.array([-side * 14.0, -24.0, 22.0]) + a.offset(2, 5)
        limbs = []
        for angle in (-20, 35):
            turn = _rotation(0, 0, side * angle) @ a.turn(8)
            semi = np.array([3.6, 12.0, 16.0]) * a.size(0.1)
            limbs.append(_Ellipsoid(hub + turn[:, 1] * semi[1] * 0.8, semi, turn))
        for limb in limbs:
            sl, f = _Ellipsoid(limb.centre, limb.semi + 4.0, limb.rotation).field(grid)
            canvas.paint(sl, f < 1, _FAT, 0, 8, abdomen)
        for limb in limbs:
            sl, f = limb.field(grid)
            canvas.paint(sl, f < 1, hu["adrenal"], label, 4, abdomen)

    # --- vessels -------------------------------------------------------------------------------------
    aorta_pts = [(22, 36, 160), (16, 22, 100), (10, 15, 30), (6, 10, -50), (2, 9, -105)]
    aorta_shift = a.offset(2.5, 6)
    ivc_shift = a.offset(2.5, 6)
    unlabelled = [
        # SMA and SMV (between pancreas neck and the third part of the duodenum)
        (
            a.tube([(9, 4, 30), (8, -18, 16), (6, -32, -20), (2, -40, -90)], [4.5, 4.5, 4, 3.5], aorta_shift),
            "aorta",
        ),
        (a.tube([(-10, -18, 18), (-12, -32, -20), (-14, -40, -90)], [6, 5.5, 4.5], ivc_shift), "portal"),
        # renal veins (left one crossing anterior to the aorta) and renal arteries
        (a.tube([(44, 40, 4), (22, 2, 6), (-20, 10, 4)], [5, 5, 5.5], ivc_shift), "ivc"),
        (a.tube([(-42, 42, -8), (-28, 20, -4)], [5.5, 5.5], ivc_shift), "ivc"),
        (a.tube([(8, 18, 12), (-20, 30, 0), (-44, 48, -10)], [3, 3, 2.5], aorta_shift), "aorta"),
        (a.tube([(12, 18, 14), (44, 44, 8)], [3, 2.5], aorta_shift), "aorta"),
        # common iliac arteries and veins below the bifurcation
        (a.tube([(2, 9, -102), (-30, 8, -150)], [7, 6], aorta_shift), "aorta"),
        (a.tube([(2, 9, -102), (34, 8, -150)], [7, 6], aorta_shift), "aorta"),
        (a.tube([(-18, 16, -100), (-40, 18, -150)], [9, 8], ivc_shift), "ivc"),
        (a.tube([(-18, 16, -100), (22, 22, -150)], [8, 8], ivc_shift), "ivc"),
    ]
    for tube, tissue in unlabelled:
        sl, sdf = tube.field(grid)
        canvas.paint(sl, sdf < 0, hu[tissue], 0, 3, abdomen)
    portal = a.tube(
        [(78, 38, 42), (50, 18, 32), (22, 6, 26), (-6, -6, 22), (-28, -12, 34), (-45, -15, 46)],
        [5.5, 5.5, 5.5, 7, 7, 6.5],
        shift_start=spleen_shift,
        shift_end=liver_shift,
    )
    sl, sdf = portal.field(grid)
    canvas.paint(sl, sdf < 0, hu["portal"], PORTAL_SPLENIC, 3, abdomen)
    ivc = a.tube(
        [(-20, 14, -100), (-24, 14, -20), (-26, 10, 50), (-22, 0, 95), (-14, -12, 122)],
        [10, 11, 12, 12, 12],
        ivc_shift,
    )
    sl, sdf = ivc.field(grid)
    canvas.paint(sl, sdf < 0, hu["ivc"], IVC, 3, cavity)
    aorta = a.tube(aorta_pts, [12, 12, 11, 10, 9], aorta_shift)
    sl, sdf = aorta.field(grid)
    canvas.paint(sl, sdf < 0, hu["aorta"], AORTA, 3, cavity)

    # Esophagus: collapsed muscular tube anterior to the aorta, to the cardia of the stomach.
    esophagus = a.tube([(4, 16, 165), (8, 8, 128), (22, -2, 102), (38, 2, 90)], [8, 8, 8.5, 9], spread=0.08)
    sl, sdf = esophagus.field(grid)
    canvas.paint(
        sl,
        sdf < 0,
        np.where(a.esophagus_air & (sdf < -5.5), np.float32(_GAS), hu["esophagus"]),
        ESOPHAGUS,
        5,
        cavity,
    )

    # --- bones last: vertebral column and ribs --------------------------------------------------------
    lo, hi = np.array([-70.0, -20.0, -400.0]), np.array([70.0, 160.0, 400.0])
    sl = grid.box(lo, hi)
    if sl is not None:
        Xs, Ys, Zs = grid.coords(sl)
        dy = Ys - _spine_y(Zs)
        grow = 1.0 + 0.12 * np.clip((60.0 - Zs) / 200.0, 0, 1)
        vb = np.sqrt((Xs / (20.0 * grow)) ** 2 + ((dy) / (17.0 * grow)) ** 2)
        phase = np.mod(Zs + 200.0 + 6.0 * a.scale[2], 34.0 * a.scale[2])
        disc = phase < 7.0
        canal = (Xs / 10.0) ** 2 + ((dy - 30) / 8.0) ** 2 < 1
        arch = ((Xs / 17.0) ** 2 + ((dy - 31) / 14.0) ** 2 < 1) & ~canal & ~disc
        spinous = (np.abs(Xs) < 4.5) & (dy > 38) & (dy < 62) & (phase > 12) & (phase < 30)
        span = np.where(Zs < 20, np.float32(44.0), np.float32(30.0))
        transverse = (
            (np.abs(Xs) < span) & (np.abs(dy - 24 - 0.15 * np.abs(Xs)) < 4) & (phase > 15) & (phase < 24)
        )
        canvas.paint(sl, arch | spinous | transverse, _BONE_ARCH, 0, 40)
        canvas.paint(sl, canal, _CSF, 0, 3)
        vertebra = np.where(vb > 0.86, np.float32(_BONE_CORTEX), np.float32(_BONE_CANCELLOUS))
        canvas.paint(sl, (vb < 1) & ~disc, vertebra, 0, 40)
        canvas.paint(sl, (vb < 1) & disc, _DISC, 0, 6)

    band = np.nonzero(body & (depth > fat_t - 4) & (depth < wall + 8))
    bx, byy, bz, bd = X[band], Y[band], Z[band], depth[band]
    rib_depth = fat_t[band] + np.float32(a.muscle * 0.6)
    phi = np.arctan2(np.abs(bx), byy)  # 0 posterior, pi anterior
    is_rib = np.zeros(bx.shape, bool)
    is_cartilage = np.zeros(bx.shape, bool)
    for k in range(-3, 6):
        z_post = (140.0 - 30.0 * k) * a.scale[2]
        z_rib = z_post - 95.0 * phi / np.pi
        reach = {4: 1.7, 5: 1.35}.get(k, 2.35 if k >= 2 else 2.55)
        near = (np.abs(bd - rib_depth) < 4.0) & (np.abs(bz - z_rib) < 4.5) & (phi > 0.3)
        is_rib |= near & (phi < reach)
        if k < 4:
            is_cartilage |= near & (phi >= reach) & (phi < 2.95)
    canvas.hu[band] = np.where(
        is_rib, np.float32(_RIB), np.where(is_cartilage, np.float32(120.0), canvas.hu[band])
    )
    canvas.label[band] = np.where(is_rib | is_cartilage, np.uint8(0), canvas.label[band])
    canvas.texture[band] = np.where(is_rib, np.float32(40), canvas.texture[band])
    return canvas


def make_phantom(
    seed: int = 0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    contrast: str = "portal-venous",
    noise_hu: float = 12.0,
    direction: tuple[float, ...] | None = None,
    origin: tuple[float, float, float] | None = None,
) -> tuple[sitk.Image, sitk.Image]:
    """Synthetic abdominal CT: (image int16 HU, label uint8 BTCV 0..13).

    `shape` (voxels) and `spacing` (mm) are in SimpleITK (x, y, z) order; `direction` is a row-major
    orthonormal 3x3 (default diag(-1, -1, 1), RAS voxel axes); `origin` (mm) defaults to centring the
    volume on the world origin. `noise_hu` is the std (HU) of the slightly correlated scanner noise.
    """
    shape, spacing, noise_hu, matrix, origin = _validate(
        seed, shape, spacing, contrast, noise_hu, direction, origin
    )
    grid = _Grid(shape, spacing, matrix, origin)
    anatomy = _Anatomy(int(seed), contrast)
    canvas = _build(grid, anatomy)

    hu = canvas.hu
    hu += canvas.texture * anatomy.texture.sample(grid.X, grid.Y, grid.Z)
    blur = 1.0 / np.array(spacing)[::-1]  # ~1 mm point-spread function, in voxels (z, y, x)
    if blur.max() > 0.15:
        hu = ndimage.gaussian_filter(hu, blur, truncate=3.0)
    if noise_hu > 0:
        noise = np.random.default_rng(anatomy.noise_seq).standard_normal(grid.shape, dtype=np.float32)
        noise = ndimage.gaussian_filter(noise, _NOISE_BLUR, truncate=3.0)
        hu += noise * np.float32(noise_hu / _NOISE_STD)
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    image = sitk.GetImageFromArray(hu)
    label = sitk.GetImageFromArray(canvas.label)
    for img in (image, label):
        img.SetSpacing(spacing)
        img.SetOrigin(origin)
        img.SetDirection(tuple(float(v) for v in matrix.ravel()))
    return image, label


def write_phantom(seed: int, out_dir: Path, **kwargs) -> tuple[Path, Path]:
    """Write `phantom_seed{seed}_image.nii.gz` and `..._label.nii.gz` into `out_dir` atomically.

    `kwargs` go to `make_phantom`; returns (image path, label path).
    """
    from .io import write_image

    image, label = make_phantom(seed, **kwargs)
    out_dir = Path(out_dir)
    paths = (out_dir / f"phantom_seed{seed}_image.nii.gz", out_dir / f"phantom_seed{seed}_label.nii.gz")
    for img, path in zip((image, label), paths, strict=True):
        write_image(img, path)
    return paths


__all__ = ["CONTRASTS", "make_phantom", "write_phantom"]
