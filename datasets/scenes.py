"""Procedural indoor scenes for the ``scenes`` benchmark (an NYUv2 in miniature): ray-cast
rooms with spheres, boxes and cylinders standing on a textured floor, rendered with
per-pixel semantic labels, depth and surface normals. Vectorised numpy; deterministic from
a seed.

Geometry (metres; world frame x right, y up, z forward): floor y = 0, ceiling y = H, back
wall z = D, side walls x = ±W; a pinhole camera (60° field of view) at height h, pitched
down by φ. Per image: up to two spheres, two boxes (rotated about the vertical axis) and
two vertical cylinders, each present with probability 0.6, resting on the floor.

Labels (6 classes): 0 floor, 1 wall, 2 ceiling, 3 sphere, 4 box, 5 cylinder; −1 (ignore)
inside an "unannotated" rectangle that half of the images have.
Depth: z-depth in the camera frame (as a Kinect measures it); 0 (invalid) beyond
``max_depth``, at grazing angles (|cos| < 0.08) and inside a "sensor hole" rectangle that
30% of the images have.
Normals: unit vectors in the camera frame (x right, y up, z forward), facing the camera; the
zero vector wherever depth is invalid (NYUv2's normals are computed from depth).
Image: Lambertian shading under a directional light with cast shadows from the objects,
a checkered floor, striped walls, a random colour per object, pixel noise; RGB in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("floor", "wall", "ceiling", "sphere", "box", "cylinder")
FLOOR, WALL, CEILING, SPHERE, BOX, CYLINDER = range(6)
SLOTS = 2  # objects of each kind per image, at most
FOV_DEG = 60.0
GRAZING = 0.08
CHUNK = 64  # images rendered at once (bounds memory; fixed so that noise is reproducible)


@dataclass(frozen=True)
class SceneArrays:
    image: np.ndarray   # [N, 3, S, S] float32 in [0, 1]
    label: np.ndarray   # [N, S, S] int64, −1 = ignore
    depth: np.ndarray   # [N, 1, S, S] float32, 0 = invalid
    normal: np.ndarray  # [N, 3, S, S] float32, unit or 0 = invalid


def _u(rng: np.random.Generator, lo: float, hi: float, n: int, *extra: int) -> np.ndarray:
    return rng.uniform(lo, hi, size=(n, *extra)).astype(np.float32)


def sample_params(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every random choice of ``n`` scenes, drawn before rendering."""
    p = {
        "cam_h": _u(rng, 1.2, 1.8, n), "pitch": np.radians(_u(rng, 10, 25, n)),
        "room_h": _u(rng, 2.6, 3.2, n), "back": _u(rng, 6.0, 9.5, n), "side": _u(rng, 2.5, 4.0, n),
        "light": np.stack([_u(rng, -0.6, 0.6, n), np.ones(n, np.float32), _u(rng, -0.7, -0.1, n)], 1),
        "floor_cols": _u(rng, 0.15, 0.8, n, 2, 3), "checker": _u(rng, 0.35, 0.8, n),
        "wall_col": _u(rng, 0.35, 0.95, n, 3), "stripe": _u(rng, 0.3, 0.9, n),
    }
    p["light"] /= np.linalg.norm(p["light"], axis=1, keepdims=True)
    for kind in ("sphere", "box", "cyl"):
        p[f"{kind}_on"] = rng.random((n, SLOTS)) < 0.6
        p[f"{kind}_col"] = _u(rng, 0.05, 1.0, n, SLOTS, 3)
        # Positions relative to the room: x in (-1, 1) of the usable width, z in metres.
        p[f"{kind}_x"] = _u(rng, -1.0, 1.0, n, SLOTS)
        p[f"{kind}_z"] = _u(rng, 2.5, 6.5, n, SLOTS)
    p["sphere_r"] = _u(rng, 0.3, 0.8, n, SLOTS)
    p["box_half"] = _u(rng, 0.25, 0.7, n, SLOTS, 3)
    p["box_yaw"] = _u(rng, 0.0, np.pi / 2, n, SLOTS)
    p["cyl_r"] = _u(rng, 0.2, 0.5, n, SLOTS)
    p["cyl_h"] = _u(rng, 0.5, 1.8, n, SLOTS)
    p["ignore_on"] = rng.random(n) < 0.5
    p["ignore_box"] = _u(rng, 0.0, 1.0, n, 4)
    p["hole_on"] = rng.random(n) < 0.3
    p["hole_box"] = _u(rng, 0.0, 1.0, n, 4)
    return p


# --------------------------------------------------------------------------- intersections
# Rays: origins o and unit directions d, [n, P, 3]. Each function returns the hit distance
# t [n, P] (inf where missed) and the world-frame normal [n, P, 3] where hit.

def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def hit_sphere(o, d, center, radius):
    oc = o - center[:, None]
    b = _dot(d, oc)
    disc = b * b - (_dot(oc, oc) - radius[:, None] ** 2)
    root = np.sqrt(np.maximum(disc, 0))
    t = np.where(-b - root > 1e-4, -b - root, -b + root)
    t = np.where((disc > 0) & (t > 1e-4), t, np.inf)
    normal = (o + t[..., None] * d - center[:, None]) / radius[:, None, None]
    return t, normal


def _rotate_y(v: np.ndarray, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    return np.stack([c * x + s * z, y, -s * x + c * z], axis=-1)


def hit_box(o, d, center, half, yaw):
    """A box with half-extents ``half``, rotated by ``yaw`` about the vertical axis."""
    lo_ = _rotate_y(o - center[:, None], -yaw)
    ld = _rotate_y(d, -yaw)
    safe = np.where(np.abs(ld) < 1e-9, 1e-9, ld)
    t1 = (-half[:, None] - lo_) / safe
    t2 = (half[:, None] - lo_) / safe
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    # Explicit over the 3 axes: numpy's reductions over a trailing axis of 3 are slow.
    t_near = np.maximum(np.maximum(near[..., 0], near[..., 1]), near[..., 2])
    t_far = np.minimum(np.minimum(far[..., 0], far[..., 1]), far[..., 2])
    inside = t_near < 1e-4
    t = np.where(inside, t_far, t_near)
    t = np.where((t_far >= t_near) & (t > 1e-4), t, np.inf)
    axis = np.where(inside[..., None], far == t_far[..., None], near == t_near[..., None])
    local_n = axis * -np.sign(safe) * np.where(inside[..., None], -1.0, 1.0)
    return t, _rotate_y(local_n.astype(np.float32), yaw)


def hit_cylinder(o, d, base, radius, height):
    """A vertical cylinder standing on ``base`` (its bottom centre), with a top cap."""
    rel = o - base[:, None]
    dx, dz, ox, oz = d[..., 0], d[..., 2], rel[..., 0], rel[..., 2]
    a = np.maximum(dx * dx + dz * dz, 1e-12)
    b = ox * dx + oz * dz
    c = ox * ox + oz * oz - radius[:, None] ** 2
    disc = b * b - a * c
    t_side = (-b - np.sqrt(np.maximum(disc, 0))) / a
    y_side = rel[..., 1] + t_side * d[..., 1]
    ok_side = (disc > 0) & (t_side > 1e-4) & (y_side >= 0) & (y_side <= height[:, None])
    t_side = np.where(ok_side, t_side, np.inf)
    dy = np.where(np.abs(d[..., 1]) < 1e-9, 1e-9, d[..., 1])
    t_cap = (height[:, None] - rel[..., 1]) / dy
    cx, cz = ox + t_cap * dx, oz + t_cap * dz
    ok_cap = (t_cap > 1e-4) & (cx * cx + cz * cz <= radius[:, None] ** 2)
    t_cap = np.where(ok_cap, t_cap, np.inf)
    t = np.minimum(t_side, t_cap)
    p = rel + t[..., None] * d
    side_n = np.stack([p[..., 0], np.zeros_like(t), p[..., 2]], -1) / radius[:, None, None]
    normal = np.where((t_cap < t_side)[..., None], np.array([0, 1, 0], np.float32), side_n)
    return t, normal


def hit_plane(o, d, axis: int, value, sign: float):
    """The plane coordinate[axis] = value, whose normal points along ``sign`` on that axis."""
    da = np.where(np.abs(d[..., axis]) < 1e-9, 1e-9, d[..., axis])
    t = (value[:, None] - o[..., axis]) / da
    t = np.where(t > 1e-4, t, np.inf)
    normal = np.zeros_like(d)
    normal[..., axis] = sign
    return t, normal


def _objects(p: dict, sl: slice):
    """(kind, label, slot, intersect(o, d)) for every object slot of a chunk of scenes."""
    usable = p["side"][sl] - 0.8
    for k in range(SLOTS):
        r = p["sphere_r"][sl, k]
        c = np.stack([p["sphere_x"][sl, k] * usable, r, p["sphere_z"][sl, k]], 1)
        yield "sphere", SPHERE, k, (lambda o, d, c=c, r=r: hit_sphere(o, d, c, r))
        half = p["box_half"][sl, k]
        c = np.stack([p["box_x"][sl, k] * usable, half[:, 1], p["box_z"][sl, k]], 1)
        yaw = p["box_yaw"][sl, k]
        yield "box", BOX, k, (lambda o, d, c=c, h=half, y=yaw: hit_box(o, d, c, h, y))
        base = np.stack([p["cyl_x"][sl, k] * usable, np.zeros_like(usable), p["cyl_z"][sl, k]], 1)
        rad, hgt = p["cyl_r"][sl, k], p["cyl_h"][sl, k]
        yield "cyl", CYLINDER, k, (lambda o, d, b=base, r=rad, h=hgt: hit_cylinder(o, d, b, r, h))


def _rect_mask(box: np.ndarray, on: np.ndarray, size: int, scale: float) -> np.ndarray:
    """[n, S, S] masks of one axis-aligned rectangle per image (where ``on``), with sides up
    to ``scale`` · S."""
    y0 = (box[:, 0] * size).astype(int)
    x0 = (box[:, 1] * size).astype(int)
    h = 2 + (box[:, 2] * scale * size).astype(int)
    w = 2 + (box[:, 3] * scale * size).astype(int)
    rows = np.arange(size)[None, :, None]
    cols = np.arange(size)[None, None, :]
    inside = ((rows >= y0[:, None, None]) & (rows < (y0 + h)[:, None, None])
              & (cols >= x0[:, None, None]) & (cols < (x0 + w)[:, None, None]))
    return inside & on[:, None, None]


def render_chunk(p: dict, sl: slice, size: int, max_depth: float,
                 rng: np.random.Generator) -> SceneArrays:
    n = sl.stop - sl.start
    focal = 1.0 / np.tan(np.radians(FOV_DEG) / 2)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    u, v = np.meshgrid(coords, -coords, indexing="xy")  # v: +1 at the top row
    d_cam = np.stack([u, v, np.full_like(u, focal)], -1).reshape(1, -1, 3)
    d_cam = np.repeat(d_cam / np.linalg.norm(d_cam, axis=-1, keepdims=True), n, axis=0)
    cos, sin = np.cos(p["pitch"][sl])[:, None], np.sin(p["pitch"][sl])[:, None]

    def to_world(v_):
        return np.stack([v_[..., 0], v_[..., 1] * cos - v_[..., 2] * sin,
                         v_[..., 1] * sin + v_[..., 2] * cos], -1)

    def to_camera(v_):
        return np.stack([v_[..., 0], v_[..., 1] * cos + v_[..., 2] * sin,
                         -v_[..., 1] * sin + v_[..., 2] * cos], -1)

    d = to_world(d_cam).astype(np.float32)
    o = np.zeros_like(d)
    o[..., 1] = p["cam_h"][sl][:, None]

    best = np.full(d.shape[:2], np.inf, np.float32)
    label = np.full(d.shape[:2], -1, np.int64)
    normal = np.zeros_like(d)
    albedo = np.zeros_like(d)

    def keep(t, nrm, cls, colour):
        closer = t < best
        best[closer] = t[closer]
        label[closer] = cls
        normal[closer] = nrm[closer]
        albedo[closer] = np.broadcast_to(colour, albedo.shape)[closer]

    zeros = np.zeros(n, np.float32)
    t, nrm = hit_plane(o, d, 1, zeros, 1.0)
    hit = o + np.where(np.isfinite(t), t, 0)[..., None] * d
    checker = p["checker"][sl][:, None]
    parity = (np.floor(hit[..., 0] / checker) + np.floor(hit[..., 2] / checker)) % 2
    keep(t, nrm, FLOOR, np.where(parity[..., None] > 0, p["floor_cols"][sl, None, 0],
                                 p["floor_cols"][sl, None, 1]))
    t, nrm = hit_plane(o, d, 1, p["room_h"][sl], -1.0)
    keep(t, nrm, CEILING, np.full(3, 0.85, np.float32))
    stripe = p["stripe"][sl][:, None]
    for axis, value, sign in ((2, p["back"][sl], -1.0), (0, -p["side"][sl], 1.0),
                              (0, p["side"][sl], -1.0)):
        t, nrm = hit_plane(o, d, axis, value, sign)
        hit = o + np.where(np.isfinite(t), t, 0)[..., None] * d
        shade = 0.85 + 0.15 * np.cos(2 * np.pi * (hit[..., 0] + hit[..., 2]) / stripe)
        keep(t, nrm, WALL, p["wall_col"][sl, None] * shade[..., None])
    shapes = list(_objects(p, sl))
    for kind, cls, k, intersect in shapes:
        t, nrm = intersect(o, d)
        t = np.where(p[f"{kind}_on"][sl, k][:, None], t, np.inf)
        keep(t, nrm, cls, p[f"{kind}_col"][sl, k][:, None])

    # Unit length even where a box edge ties two faces; facing the camera (a ray that
    # starts inside an object sees a back face).
    normal = normal / np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
    normal = np.where((_dot(normal, d) > 0)[..., None], -normal, normal)
    cos_view = -_dot(normal, d)
    point = o + best[..., None] * d
    light = np.repeat(p["light"][sl][:, None], d.shape[1], axis=1)
    shadow_o = point + 1e-3 * normal
    lit = np.ones(best.shape, bool)
    for kind, _, k, intersect in shapes:
        t, _ = intersect(shadow_o, light)
        lit &= ~(np.isfinite(t) & p[f"{kind}_on"][sl, k][:, None])
    diffuse = np.maximum(_dot(normal, light), 0) * np.where(lit, 1.0, 0.35)
    image = albedo * (0.3 + 0.7 * diffuse)[..., None]
    image = image + rng.normal(0, 0.02, size=image.shape)

    depth = best * d_cam[..., 2]
    invalid = (depth > max_depth) | (cos_view < GRAZING) | ~np.isfinite(depth)
    invalid |= _rect_mask(p["hole_box"][sl], p["hole_on"][sl], size, 0.25).reshape(n, -1)
    depth = np.where(invalid, 0.0, depth)
    normal_cam = np.where(invalid[..., None], 0.0, to_camera(normal))
    label = np.where(_rect_mask(p["ignore_box"][sl], p["ignore_on"][sl], size, 0.3).reshape(n, -1),
                     -1, label)

    def grid(a):  # [n, P, c] -> [n, c, S, S]
        return np.ascontiguousarray(a.reshape(n, size, size, -1).transpose(0, 3, 1, 2))

    return SceneArrays(
        image=np.clip(grid(image), 0, 1).astype(np.float32),
        label=label.reshape(n, size, size),
        depth=grid(depth[..., None]).astype(np.float32),
        normal=grid(normal_cam).astype(np.float32),
    )


def generate_scenes(count: int, size: int, seed: int | list[int], max_depth: float = 9.0) -> SceneArrays:
    """``count`` scenes of ``size``×``size`` pixels, deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    params = sample_params(count, rng)
    # Missed rays carry t = inf through the hit-point arithmetic before being masked out.
    with np.errstate(invalid="ignore", over="ignore"):
        chunks = [render_chunk(params, slice(s, min(s + CHUNK, count)), size, max_depth, rng)
                  for s in range(0, count, CHUNK)]
    return SceneArrays(*(np.concatenate([getattr(c, f) for c in chunks])
                         for f in ("image", "label", "depth", "normal")))
