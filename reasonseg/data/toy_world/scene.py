"""Scene sampling and rendering: backgrounds, filled shapes, occlusion and per-object visible masks.

Objects are drawn in order (later ones on top). Each object's mask is its *visible* pixels, an object keeps at least
``MIN_VISIBLE_FRACTION`` of its pixels, and every visible mask is one piece without holes (so its outer contour is
an exact polygon of it). Rendering is exact and aliasing-free: an image pixel has an object's colour iff it is in
that object's mask (before the optional sensor noise of ``noisy`` backgrounds).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from ...modeling.point_prompts import innermost_point
from .vocab import (
    BACKGROUNDS,
    COLOUR_JITTER,
    COLOURS,
    MAX_SIDE,
    MIN_BACKGROUND_DISTANCE,
    MIN_EXTENT_PX,
    MIN_SIDE,
    MIN_VISIBLE_FRACTION,
    SHAPES,
    SIZE_NAMES,
    SIZES,
)

_SUBPIXEL_BITS = 4  # cv2.fillPoly fixed-point precision
_EDGE_MARGIN = 2  # pixels kept free between an object and the image border


# ----------------------------------------------------------------------------------------------------------- shapes
@lru_cache(maxsize=None)
def unit_outline(shape: str) -> np.ndarray:
    """The shape's outline as an (N, 2) float array, unrotated, 1 wide, centred on (0, 0); y points down."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        pts = np.stack([0.5 * np.cos(t), 0.5 * np.sin(t)], 1)
    elif shape == "square":
        pts = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    elif shape == "triangle":  # equilateral, pointing up, centroid at the origin
        r = 1 / math.sqrt(3)
        pts = np.array([[0.0, -r], [0.5, r / 2], [-0.5, r / 2]])
    elif shape == "hexagon":  # corners left and right
        t = np.deg2rad(np.arange(0, 360, 60))
        pts = np.stack([0.5 * np.cos(t), 0.5 * np.sin(t)], 1)
    elif shape == "star":  # five points, the first one up; inner radius 0.45 of the outer keeps small stars solid
        t = np.deg2rad(-90 + 36 * np.arange(10))
        radius = np.where(np.arange(10) % 2 == 0, 0.5, 0.5 * 0.45)
        pts = np.stack([radius * np.cos(t), radius * np.sin(t)], 1)
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y], 1)
        pts -= (pts.max(0) + pts.min(0)) / 2
        pts /= pts[:, 0].max() - pts[:, 0].min()
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    pts.setflags(write=False)
    return pts


def shape_outline(shape: str, extent: float, angle: float, center: tuple[float, float]) -> np.ndarray:
    """Outline in image coordinates: ``extent`` pixels wide, rotated by ``angle`` degrees, moved to ``center``."""
    a = math.radians(angle)
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    return unit_outline(shape) @ rot * extent + np.asarray(center, dtype=np.float64)


# ------------------------------------------------------------------------------------------------------ descriptions
@dataclass(frozen=True)
class ObjectSpec:
    """What to draw: the vocabulary words plus the exact geometry and colour."""

    shape: str
    colour: str
    size: str
    extent: float  # width of the unrotated shape, in pixels
    center: tuple[float, float]  # (x, y) of the shape's origin (centroid of the unrotated outline's frame)
    angle: float = 0.0  # degrees, counter-clockwise
    rgb: tuple[int, int, int] | None = None  # None: the colour's nominal RGB


@dataclass(frozen=True)
class BackgroundSpec:
    kind: str  # plain | gradient | noisy
    colour: tuple[int, int, int]
    colour2: tuple[int, int, int] | None = None  # gradient end colour
    direction: float = 0.0  # gradient direction, degrees
    noise_sigma: float = 0.0  # per-pixel luminance noise (noisy)
    noise_seed: int = 0


@dataclass(eq=False)
class SceneObject:
    """One drawn object. Coordinates are pixels, x right, y down."""

    index: int  # draw order (0 is at the bottom)
    shape: str
    colour: str
    size: str
    rgb: tuple[int, int, int]
    extent: float
    angle: float
    center: tuple[float, float]
    full_area: int  # pixels before occlusion
    area: int  # visible pixels
    bbox: tuple[int, int, int, int]  # visible mask box (x0, y0, x1, y1), x1/y1 exclusive (pixel-edge coordinates)
    centroid: tuple[float, float]  # of the visible mask
    point: tuple[int, int]  # (x, y) visible pixel farthest from the mask's edge: a point prompt
    outline: np.ndarray = field(repr=False)  # (N, 2) int32 outer contour of the visible mask (cv2 chain, simple)
    crop: np.ndarray = field(repr=False)  # bool visible mask inside bbox
    image_size: tuple[int, int] = (0, 0)  # (height, width)

    @property
    def visible_fraction(self) -> float:
        return self.area / self.full_area

    @property
    def box(self) -> list[float]:
        """Box prompt (x0, y0, x1, y1) in pixel-edge coordinates."""
        return [float(v) for v in self.bbox]

    @property
    def mask(self) -> np.ndarray:
        """Full-image bool mask of the visible pixels."""
        full = np.zeros(self.image_size, dtype=bool)
        x0, y0, x1, y1 = self.bbox
        full[y0:y1, x0:x1] = self.crop
        return full

    def describe(self, with_size: bool = False) -> str:
        """'red circle' or 'large red circle'."""
        return f"{self.size} {self.colour} {self.shape}" if with_size else f"{self.colour} {self.shape}"

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "rgb": list(self.rgb),
            "bbox": list(self.bbox),
            "centroid": [round(self.centroid[0], 2), round(self.centroid[1], 2)],
            "point": list(self.point),
            "area": self.area,
            "visible_fraction": round(self.visible_fraction, 4),
        }


@dataclass(eq=False)
class Scene:
    image: np.ndarray  # HxWx3 uint8 RGB
    labels: np.ndarray  # HxW int8: index of the object visible at each pixel, -1 for background
    objects: list[SceneObject]
    background: BackgroundSpec

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


NEIGHBOUR_REACH = 0.08  # same_colour_neighbours: this fraction of the shorter side around an object's visible pixels


def same_colour_neighbours(scene: Scene, index: int, reach: float = NEIGHBOUR_REACH) -> list[int]:
    """The other objects of object ``index``'s colour whose visible pixels come within ``reach`` (a fraction of the
    image's shorter side) of its own: the scenes where a mask most easily spills onto a look-alike."""
    radius = max(1, round(reach * min(scene.height, scene.width)))
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    grown = cv2.dilate((scene.labels == index).astype(np.uint8), kernel) > 0
    colour = scene.objects[index].colour
    return [int(near) for near in np.unique(scene.labels[grown])
            if near >= 0 and near != index and scene.objects[near].colour == colour]


def beside_look_alikes(scene: Scene, indices=None, reach: float = NEIGHBOUR_REACH) -> list[int]:
    """Those of ``indices`` (default: every object) that have a same-coloured neighbour within ``reach``
    (``same_colour_neighbours``; a reach of 0 asks for shapes that touch one)."""
    candidates = range(len(scene.objects)) if indices is None else indices
    return [index for index in candidates if same_colour_neighbours(scene, index, reach)]


# --------------------------------------------------------------------------------------------------------- drawing
def _single_piece(visible: np.ndarray) -> bool:
    """One 8-connected component, and no holes (the background around it is one 4-connected component)."""
    fg = visible.astype(np.uint8)
    if cv2.connectedComponents(fg, connectivity=8)[0] != 2:
        return False
    bg = np.pad(1 - fg, 1, constant_values=1)
    return cv2.connectedComponents(bg, connectivity=4)[0] == 2


class _Canvas:
    """Places objects one at a time, keeping the label map and each object's visible pixel count."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.labels = np.full((height, width), -1, dtype=np.int8)
        self.specs: list[ObjectSpec] = []
        self.boxes: list[tuple[int, int, int, int]] = []  # full (unoccluded) box of each object
        self.full_areas: list[int] = []
        self.visible: list[int] = []

    def rasterise(self, spec: ObjectSpec, pad: int = 0):
        """(x0, y0, crop uint8 mask) of the unoccluded shape, or None when it leaves the image's safe area."""
        pts = shape_outline(spec.shape, spec.extent, spec.angle, spec.center)
        lo, hi = pts.min(0), pts.max(0)
        m = _EDGE_MARGIN
        if lo[0] < m or lo[1] < m or hi[0] > self.width - 1 - m or hi[1] > self.height - 1 - m:
            return None
        x0, y0 = max(int(lo[0]) - 1 - pad, 0), max(int(lo[1]) - 1 - pad, 0)
        x1, y1 = min(int(hi[0]) + 2 + pad, self.width), min(int(hi[1]) + 2 + pad, self.height)
        crop = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        fixed = np.round((pts - (x0, y0)) * (1 << _SUBPIXEL_BITS)).astype(np.int32)
        cv2.fillPoly(crop, [fixed], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
        return x0, y0, crop

    def add(self, spec: ObjectSpec, allow_overlap: bool = True, gap: int = 0) -> bool:
        """Draw ``spec`` on top if the scene's rules allow it; return whether it was drawn."""
        pad = 0 if allow_overlap else gap
        raster = self.rasterise(spec, pad)
        if raster is None:
            return False
        x0, y0, crop = raster
        area = int(crop.sum())
        region = self.labels[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]]
        if not allow_overlap:
            if gap:
                grown = cv2.dilate(crop, np.ones((2 * gap + 1, 2 * gap + 1), np.uint8))
                if (region[grown > 0] >= 0).any():
                    return False
            elif (region[crop > 0] >= 0).any():
                return False
        inside = crop > 0
        covered = region[inside]
        covered = covered[covered >= 0]
        counts = np.bincount(covered.astype(np.int64), minlength=len(self.specs)) if covered.size else None
        if counts is not None:
            for i in np.flatnonzero(counts):
                if self.visible[i] - counts[i] < MIN_VISIBLE_FRACTION * self.full_areas[i]:
                    return False
        saved = region.copy()
        index = len(self.specs)
        region[inside] = index
        if counts is not None:
            for i in np.flatnonzero(counts):
                bx0, by0, bx1, by1 = self.boxes[i]
                if not _single_piece(self.labels[by0:by1, bx0:bx1] == i):
                    region[...] = saved
                    return False
            for i in np.flatnonzero(counts):
                self.visible[i] -= int(counts[i])
        self.specs.append(spec)
        self.boxes.append((x0, y0, x0 + crop.shape[1], y0 + crop.shape[0]))
        self.full_areas.append(area)
        self.visible.append(area)
        return True


def render_background(spec: BackgroundSpec, width: int, height: int) -> np.ndarray:
    """The background (with its noise, if any), HxWx3 uint8."""
    c0 = np.asarray(spec.colour, dtype=np.float32)
    if spec.colour2 is None:
        image = np.tile(c0.astype(np.uint8), (height, width, 1))
    else:
        c1 = np.asarray(spec.colour2, dtype=np.float32)
        a = math.radians(spec.direction)
        dx, dy = math.cos(a), math.sin(a)
        corners = [0.0, dx * (width - 1), dy * (height - 1), dx * (width - 1) + dy * (height - 1)]
        lo, span = min(corners), max(max(corners) - min(corners), 1e-6)
        # position along the gradient, 0..255, computed on a 4x coarser grid and upsampled (it is linear anyway)
        step = 4
        xs = np.arange(0, width + step, step, dtype=np.float32)
        ys = np.arange(0, height + step, step, dtype=np.float32)
        coarse = np.clip(np.add.outer(ys * dy, xs * dx - lo) * (255.0 / span), 0, 255)
        t = cv2.resize(coarse, (xs.size * step, ys.size * step), interpolation=cv2.INTER_LINEAR)
        t = np.rint(t[:height, :width]).astype(np.uint8)
        levels = np.round(c0 + np.linspace(0, 1, 256, dtype=np.float32)[:, None] * (c1 - c0)).astype(np.uint8)
        image = cv2.LUT(cv2.merge([t, t, t]), levels.reshape(256, 1, 3))
    return image


_NOISE_BANK_SIDE = MAX_SIDE + 64


@lru_cache(maxsize=None)
def _noise_bank(sigma: int) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative parts (uint8) of a fixed field of Gaussian noise with standard deviation ``sigma``."""
    z = np.random.Generator(np.random.PCG64(12345)).standard_normal((_NOISE_BANK_SIDE, _NOISE_BANK_SIDE))
    noise = np.clip(np.rint(z * sigma), -255, 255)
    return np.maximum(noise, 0).astype(np.uint8), np.maximum(-noise, 0).astype(np.uint8)


def _add_noise(image: np.ndarray, spec: BackgroundSpec) -> np.ndarray:
    """Luminance noise: a window of the fixed noise field chosen by ``noise_seed`` (deterministic, cheap)."""
    height, width = image.shape[:2]
    pos, neg = _noise_bank(int(round(spec.noise_sigma)))
    ox = spec.noise_seed % (_NOISE_BANK_SIDE - width + 1)
    oy = (spec.noise_seed // 7919) % (_NOISE_BANK_SIDE - height + 1)
    p, n = pos[oy : oy + height, ox : ox + width], neg[oy : oy + height, ox : ox + width]
    return cv2.subtract(cv2.add(image, cv2.merge([p, p, p])), cv2.merge([n, n, n]))


def render_scene(width: int, height: int, objects: list[ObjectSpec], background: BackgroundSpec,
                 allow_overlap: bool = True) -> Scene:
    """Draw a given layout. Raises ValueError when an object leaves the image or is hidden beyond the rules."""
    canvas = _Canvas(width, height)
    for i, spec in enumerate(objects):
        if not canvas.add(spec, allow_overlap=allow_overlap):
            raise ValueError(f"object {i} ({spec.colour} {spec.shape}) does not fit: outside the image or too hidden")
    return _finish(canvas, background)


def _finish(canvas: _Canvas, background: BackgroundSpec) -> Scene:
    width, height = canvas.width, canvas.height
    labels = canvas.labels
    objects = []
    palette = np.zeros((256, 1, 3), dtype=np.uint8)  # label + 1 -> colour
    for i, spec in enumerate(canvas.specs):
        bx0, by0, bx1, by1 = canvas.boxes[i]
        visible = labels[by0:by1, bx0:bx1] == i
        rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
        x0, y0, x1, y1 = bx0 + int(cols[0]), by0 + int(rows[0]), bx0 + int(cols[-1]) + 1, by0 + int(rows[-1]) + 1
        crop = visible[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
        u8 = crop.astype(np.uint8)
        m = cv2.moments(u8, binaryImage=True)
        centroid = (x0 + m["m10"] / m["m00"], y0 + m["m01"] / m["m00"])
        px, py = innermost_point(u8)
        contours, _ = cv2.findContours(u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outline = max(contours, key=cv2.contourArea).reshape(-1, 2) + np.array([x0, y0], dtype=np.int32)
        rgb = tuple(int(v) for v in (spec.rgb if spec.rgb is not None else COLOURS[spec.colour]))
        palette[i + 1, 0] = rgb
        objects.append(SceneObject(
            index=i, shape=spec.shape, colour=spec.colour, size=spec.size, rgb=rgb,
            extent=float(spec.extent), angle=float(spec.angle), center=tuple(float(v) for v in spec.center),
            full_area=canvas.full_areas[i], area=int(m["m00"]), bbox=(x0, y0, x1, y1), centroid=centroid,
            point=(x0 + int(px), y0 + int(py)), outline=outline.astype(np.int32), crop=crop, image_size=(height, width),
        ))
    image = render_background(background, width, height)
    if objects:
        index = (labels + 1).view(np.uint8)  # -1 -> 0 (background), i -> i + 1
        painted = cv2.LUT(cv2.merge([index, index, index]), palette)
        image = cv2.copyTo(painted, (labels >= 0).view(np.uint8), image)
    if background.noise_sigma > 0:
        image = _add_noise(image, background)
    return Scene(image=image, labels=labels, objects=objects, background=background)


# -------------------------------------------------------------------------------------------------------- sampling
_NOMINAL = np.asarray(list(COLOURS.values()), dtype=np.float64)


def _far_from_objects(colour) -> bool:
    distances = np.sqrt(((_NOMINAL - np.asarray(colour, dtype=np.float64)) ** 2).sum(1))
    return bool(distances.min() >= MIN_BACKGROUND_DISTANCE)


def _background_colour(rng: random.Random) -> tuple[int, int, int]:
    """A desaturated mid-tone far (in RGB) from every nominal object colour."""
    while True:
        base = rng.uniform(110, 200)
        colour = tuple(int(round(min(255.0, max(0.0, base + rng.uniform(-16, 16))))) for _ in range(3))
        if _far_from_objects(colour):
            return colour


def sample_background(rng: random.Random) -> BackgroundSpec:
    kind = rng.choice(BACKGROUNDS)
    colour = _background_colour(rng)
    colour2, direction = None, 0.0
    if kind == "gradient" or (kind == "noisy" and rng.random() < 0.5):
        while True:  # visibly a gradient, and its middle is as far from object colours as its ends
            colour2 = _background_colour(rng)
            middle = [(a + b) / 2 for a, b in zip(colour, colour2)]
            if sum((a - b) ** 2 for a, b in zip(colour, colour2)) >= 30**2 and _far_from_objects(middle):
                break
        direction = rng.uniform(0, 360)
    sigma = rng.uniform(4.0, 10.0) if kind == "noisy" else 0.0
    return BackgroundSpec(kind, colour, colour2, direction, sigma, rng.getrandbits(63) if sigma else 0)


MAX_OBJECTS = 6
_COUNT_WEIGHTS = (0.08, 0.17, 0.22, 0.22, 0.17, 0.14)  # 1..MAX_OBJECTS objects
_PALETTE_SIZES = (1, 2, 2, 3, 3, 4, 5, 8)  # colours (and shapes, capped at 6) a scene draws from: repeats happen


def _size_weights(n: int) -> tuple[float, float, float]:
    return (0.3, 0.4, 0.3) if n <= 2 else (0.4, 0.4, 0.2) if n <= 4 else (0.55, 0.35, 0.1)


def _random_spec(rng: random.Random, shape: str, colour: str, size: str, width: int, height: int) -> ObjectSpec:
    short = min(width, height)
    lo, hi = SIZES[size]
    extent = max(rng.uniform(lo, hi) * short, MIN_EXTENT_PX)
    angle = rng.uniform(0, 60) if shape == "hexagon" else 0.0 if shape == "circle" else rng.uniform(-15, 15)
    nominal = COLOURS[colour]
    rgb = tuple(min(255, max(0, c + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for c in nominal)
    pts = shape_outline(shape, extent, angle, (0.0, 0.0))
    lo, hi = pts.min(0), pts.max(0)
    m = _EDGE_MARGIN + 0.5
    center = (rng.uniform(m - lo[0], width - 1 - m - hi[0]), rng.uniform(m - lo[1], height - 1 - m - hi[1]))
    return ObjectSpec(shape, colour, size, extent, center, angle, rgb)


def sample_scene(rng: random.Random) -> Scene:
    """A random scene from ``rng`` (a ``random.Random``); the same state gives the same scene."""
    while True:
        width, height = rng.randint(MIN_SIDE, MAX_SIDE), rng.randint(MIN_SIDE, MAX_SIDE)
        if max(width, height) <= 2.5 * min(width, height):
            break
    n = rng.choices(range(1, MAX_OBJECTS + 1), weights=_COUNT_WEIGHTS)[0]
    colours = rng.sample(list(COLOURS), min(rng.choice(_PALETTE_SIZES), len(COLOURS)))
    shapes = rng.sample(SHAPES, min(rng.choice(_PALETTE_SIZES), len(SHAPES)))
    allow_overlap = rng.random() < 0.35
    gap = rng.randint(2, 6)
    canvas = _Canvas(width, height)
    for _ in range(n):
        shape, colour = rng.choice(shapes), rng.choice(colours)
        size = rng.choices(SIZE_NAMES, weights=_size_weights(n))[0]
        placed = False
        for size_try in SIZE_NAMES[: SIZE_NAMES.index(size) + 1][::-1]:  # shrink when it does not fit
            for _ in range(25):
                spec = _random_spec(rng, shape, colour, size_try, width, height)
                if canvas.add(spec, allow_overlap=allow_overlap, gap=gap):
                    placed = True
                    break
            if placed:
                break
    background = sample_background(rng)
    return _finish(canvas, background)
