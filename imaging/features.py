"""Local features of a picture, and the check that two pictures show the same content.

The verification stage's evidence (detectors/verify.py). A picture is scaled so its longer side
is ``FRAME`` pixels and described by ORB keypoints (OpenCV; rotation- and scale-tolerant binary
descriptors) and a small grey thumbnail. :func:`verify` matches two such descriptions one to one,
fits a geometric model with RANSAC (a similarity, or a homography where that explains clearly
more: perspective), and then checks that the aligned pictures agree cell by cell, which tells a
copy from a picture that merely shares layout (two dialogs of one application share hundreds of
keypoints on their window chrome) or outline (two objects on white).

Everything is packed into one ``bytes`` signal of at most ``MAX_BYTES`` (header, thumbnail,
keypoint positions, descriptors), so the store keeps, ships and snapshots it like any hash.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

FRAME = 512                 # longer side of the picture the keypoints are found on
THUMB = 64                  # longer side of the grey thumbnail the agreement check compares
THUMB_QUALITY = 90          # the thumbnail is kept as a JPEG: ~1-2 KB instead of 4 KB raw
MAX_BYTES = 8192            # a whole signal, header included
MAX_KEYPOINTS = 200         # as many as fit beside the thumbnail, at 36 bytes each
ORB_KEYPOINTS = 500         # found before the strongest, spread over the picture, are kept
FAST = 12                   # FAST corner threshold (0-255 grey): lower finds softer corners
_HEADER = struct.Struct("<4sBBHHHH")    # magic, version, kind, frame w, h, points, thumbnail bytes
_POINT_BYTES = 36           # 2 x uint16 position (1/64 px: FRAME * 64 fits) + 32 descriptor bytes
_MAGIC = b"DWLF"
_VERSION = 1

# Matching and geometry (in FRAME pixels)
RATIO = 0.85                # Lowe's ratio test on the two nearest descriptors
RANSAC_PX = 8.0             # reprojection error of an inlier
MIN_MATCHES = 8             # fewer one-to-one matches cannot support a transform
MIN_INLIERS = 8             # fewer inliers: no geometric evidence either way
HOMOGRAPHY_MATCHES = 12     # fewer matches cannot tell a homography from noise
SIMPLER_BONUS = 1.2         # a homography must explain this many times the inliers to be chosen
MIN_SCALE, MAX_SCALE = 1 / 8, 8.0

# Agreement of the aligned thumbnails, cell by cell over their overlap (in THUMB pixels)
CELL = 8
CELL_COVERED = 0.9          # a cell counts when the copy covers this share of it
TEXTURED_STD = 6.0          # a cell flatter than this (0-255 grey) on both sides is not compared
MIN_CORRELATION = 0.5       # of a textured cell's pixels with the aligned copy's
MIN_CELLS = 4               # fewer informative cells in the overlap: too little to compare


class PictureKind(enum.IntEnum):
    """What the picture is, judged from its pixels: pages, screenshots, UI and drawings share
    layout and flat backgrounds, so their matches need stricter agreement than photos'."""
    PHOTO = 0
    GRAPHIC = 1

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class LocalFeatures:
    """A picture's description for verification (see the module docstring)."""
    kind: PictureKind
    frame: tuple[int, int]          # (width, height) of the picture the keypoints were found on
    points: np.ndarray              # (n, 2) float32, in frame pixels
    descriptors: np.ndarray         # (n, 32) uint8, ORB
    thumbnail: np.ndarray           # (h, w) uint8 grey, longer side THUMB

    def to_bytes(self) -> bytes:
        """Packed, at most MAX_BYTES: the strongest keypoints that fit beside the thumbnail."""
        ok, encoded = cv2.imencode(".jpg", self.thumbnail, [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
        thumbnail = encoded.tobytes()
        n = min(len(self.points), (MAX_BYTES - _HEADER.size - len(thumbnail)) // _POINT_BYTES)
        header = _HEADER.pack(_MAGIC, _VERSION, int(self.kind), *self.frame, n, len(thumbnail))
        points = np.round(self.points[:n] * 64).clip(0, 65535).astype("<u2")
        return header + thumbnail + points.tobytes() + self.descriptors[:n].tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "LocalFeatures":
        """Raises ValueError for bytes that are not a signal of this version."""
        if len(raw) < _HEADER.size or len(raw) > MAX_BYTES:
            raise ValueError(f"a local-features signal is {_HEADER.size}..{MAX_BYTES} bytes, "
                             f"got {len(raw)}")
        magic, version, kind, fw, fh, n, thumbnail_bytes = _HEADER.unpack_from(raw)
        if magic != _MAGIC or version != _VERSION:
            raise ValueError(f"not a local-features signal of version {_VERSION}")
        expected = _HEADER.size + thumbnail_bytes + n * _POINT_BYTES
        if len(raw) != expected:
            raise ValueError(f"local-features signal of {len(raw)} bytes, its header says {expected}")
        at = _HEADER.size + thumbnail_bytes
        thumbnail = cv2.imdecode(np.frombuffer(raw, np.uint8, thumbnail_bytes, _HEADER.size),
                                 cv2.IMREAD_GRAYSCALE)
        if thumbnail is None:
            raise ValueError("local-features signal with an unreadable thumbnail")
        points = np.frombuffer(raw, "<u2", n * 2, at).reshape(n, 2).astype(np.float32) / 64
        descriptors = np.frombuffer(raw, np.uint8, n * 32, at + n * 4).reshape(n, 32)
        return cls(PictureKind(kind), (fw, fh), points, descriptors, thumbnail)


@dataclass(frozen=True)
class Verification:
    """What :func:`verify` found for a query against one reference.

    ``agreement``: share of the informative overlap cells whose content agrees once aligned (0
    when there is no geometric consensus); ``cells``: how many were compared. ``region``: the
    query's outline in the reference, as fractions of the reference's width and height (x0, y0,
    x1, y1, clipped): the part of it that the copy shows. No inliers: no alignment found, or
    too few keypoints in either picture to look for one."""
    inliers: int = 0
    matches: int = 0
    agreement: float = 0.0
    explained: float = 0.0          # share of the query's keypoints in the overlap that are inliers
    cells: int = 0
    model: str = ""                 # "similarity" or "homography"
    region: tuple[float, float, float, float] | None = None

    def as_dict(self) -> dict:
        return {"inliers": self.inliers, "matches": self.matches,
                "agreement": round(self.agreement, 3), "explained": round(self.explained, 3),
                "cells": self.cells, "model": self.model,
                "region": [round(v, 4) for v in self.region] if self.region else None}


def extract(picture: Image.Image) -> LocalFeatures:
    """The picture's local features (see the module docstring)."""
    grey = np.asarray(picture.convert("L"))
    scale = FRAME / max(grey.shape)
    frame = cv2.resize(grey, _scaled(grey.shape, scale),
                       interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    thumbnail = cv2.resize(frame, _scaled(frame.shape, THUMB / max(frame.shape)),
                           interpolation=cv2.INTER_AREA)
    orb = cv2.ORB_create(nfeatures=ORB_KEYPOINTS, fastThreshold=FAST)
    keypoints, descriptors = orb.detectAndCompute(frame, None)
    if descriptors is None:
        points, descriptors = np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    else:
        points = np.array([k.pt for k in keypoints], np.float32)
        keep = _spread(points, np.array([k.response for k in keypoints]),
                       np.array([k.octave for k in keypoints]), frame.shape, MAX_KEYPOINTS)
        points, descriptors = points[keep], descriptors[keep]
    return LocalFeatures(_kind(thumbnail), (frame.shape[1], frame.shape[0]), points,
                         np.ascontiguousarray(descriptors), np.ascontiguousarray(thumbnail))


def _scaled(shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    return max(1, round(shape[1] * scale)), max(1, round(shape[0] * scale))


def _spread(points: np.ndarray, response: np.ndarray, octave: np.ndarray, shape: tuple[int, ...],
            keep: int) -> np.ndarray:
    """The indices of ``keep`` keypoints, strongest first but taken in turns from each part of a
    4x4 grid of the picture and each scale, so a crop of any part, shown larger, still finds
    stored keypoints of its own scale in it."""
    if len(points) <= keep:
        return np.arange(len(points))
    cell = (np.minimum(points[:, 1] * 4 // shape[0], 3) * 4
            + np.minimum(points[:, 0] * 4 // shape[1], 3)).astype(int)
    bucket = cell * 8 + np.minimum(octave, 7)
    order = np.lexsort((-response, bucket))
    rank_in_bucket = np.empty(len(points), int)
    for b in np.unique(bucket):
        members = order[bucket[order] == b]
        rank_in_bucket[members] = np.arange(len(members))
    return np.lexsort((-response, rank_in_bucket))[:keep]


def _kind(thumbnail: np.ndarray) -> PictureKind:
    """Graphic when much of the picture is flat (one background colour, flat areas between text
    or widgets) — pages, screenshots, UI, drawings, objects cut out on white; photos have texture
    or noise nearly everywhere."""
    gradient = np.abs(np.diff(thumbnail.astype(np.int16), axis=1))
    flat_share = float((gradient <= 1).mean())
    return PictureKind.GRAPHIC if flat_share >= 0.5 else PictureKind.PHOTO


def verify(query: LocalFeatures, reference: LocalFeatures) -> Verification:
    """Whether the query shows (part of) the reference's content; see :class:`Verification`.
    Of the models that fit (a similarity; a homography, for perspective), the one under which
    the pictures agree best (see ``_explains_better``)."""
    if min(len(query.points), len(reference.points)) < MIN_MATCHES:
        return Verification()
    pairs = _one_to_one_matches(query.descriptors, reference.descriptors)
    if len(pairs) < MIN_MATCHES:
        return Verification(matches=len(pairs))
    src, dst = query.points[pairs[:, 0]], reference.points[pairs[:, 1]]
    found = [_judge(query, reference, transform, int(inliers.sum()), model, len(pairs))
             for transform, inliers, model in _fits(src, dst)]
    return max(found, key=_explains_better,
               default=Verification(matches=len(pairs)))


def _explains_better(found: Verification) -> tuple[float, float]:
    """Ranks fitted models: by agreement, then the simpler model (a similarity is also what a
    homography fits to a plain copy), then inliers."""
    simpler = SIMPLER_BONUS if found.model == "similarity" else 1.0
    return round(found.agreement / 0.05), found.inliers * simpler


def _judge(query: LocalFeatures, reference: LocalFeatures, transform: np.ndarray, inliers: int,
           model: str, matches: int) -> Verification:
    agreement, cells = _agreement(query, reference, transform)
    return Verification(inliers, matches, agreement,
                        _explained(query, reference, transform, inliers), cells, model,
                        _region(query.frame, reference.frame, transform))


def _one_to_one_matches(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(query index, reference index) pairs passing the ratio test, each reference keypoint used
    once (by its closest query keypoint): without this, many query keypoints collapse onto one
    reference keypoint and RANSAC finds a degenerate transform with many "inliers"."""
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    best: dict[int, tuple[int, float]] = {}
    for pair in matcher.knnMatch(query, reference, k=2):
        if len(pair) < 2 or pair[0].distance >= RATIO * pair[1].distance:
            continue
        first = pair[0]
        if first.trainIdx not in best or first.distance < best[first.trainIdx][1]:
            best[first.trainIdx] = (first.queryIdx, first.distance)
    return np.array([(q, r) for r, (q, _) in best.items()], dtype=int).reshape(-1, 2)


def _fits(src: np.ndarray, dst: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """The query->reference transforms (3x3) that RANSAC finds with enough inliers and that are
    not degenerate, each with its inlier mask and its model's name. A homography is fitted only
    where a similarity already found consensus: perspective copies keep enough inliers under a
    similarity, and on unrelated pairs a homography's RANSAC runs all its iterations (it was
    most of a scan's verification time)."""
    similarity, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                                   ransacReprojThreshold=RANSAC_PX, maxIters=2000)
    if similarity is None:
        return []
    fits = [(np.vstack([similarity, [0, 0, 1]]), mask.ravel() > 0, "similarity")]
    if fits[0][1].sum() >= MIN_INLIERS and len(src) >= HOMOGRAPHY_MATCHES:
        homography, mask = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_PX, maxIters=2000)
        if homography is not None:
            fits.append((homography, mask.ravel() > 0, "homography"))
    return [fit for fit in fits if fit[1].sum() >= MIN_INLIERS and _plausible(fit[0])]


def _plausible(transform: np.ndarray) -> bool:
    """Scale within bounds, no mirror, no strong projective warp."""
    linear = transform[:2, :2] / transform[2, 2]
    det = float(np.linalg.det(linear))
    if det <= 0:
        return False
    scale = det ** 0.5
    return MIN_SCALE <= scale <= MAX_SCALE and float(np.abs(transform[2, :2]).max()) < 0.004


def _to_thumbnail(features: LocalFeatures) -> np.ndarray:
    th, tw = features.thumbnail.shape
    return np.diag([tw / features.frame[0], th / features.frame[1], 1.0])


def _agreement(query: LocalFeatures, reference: LocalFeatures, transform: np.ndarray
               ) -> tuple[float, int]:
    """The share of the informative cells of the reference's thumbnail, among those the aligned
    query covers, whose content agrees with the query's (normalised correlation). A cell is
    informative when either picture has texture there: flat background on both sides (white
    around two objects, margins of two pages) says nothing about whether they are one picture."""
    warp = _to_thumbnail(reference) @ transform @ np.linalg.inv(_to_thumbnail(query))
    rh, rw = reference.thumbnail.shape
    warped = cv2.warpPerspective(query.thumbnail, warp, (rw, rh), flags=cv2.INTER_AREA)
    covered = cv2.warpPerspective(np.full(query.thumbnail.shape, 255, np.uint8), warp, (rw, rh),
                                  flags=cv2.INTER_NEAREST)
    a, b, cover = (_cells(image) for image in (reference.thumbnail, warped, covered))
    counted = (cover > 0).mean(axis=1) >= CELL_COVERED
    a, b = a[counted], b[counted]
    sa, sb = a.std(axis=1), b.std(axis=1)
    informative = (sa >= TEXTURED_STD) | (sb >= TEXTURED_STD)
    if informative.sum() < MIN_CELLS:
        return 0.0, int(informative.sum())
    a, b, sa, sb = a[informative], b[informative], sa[informative], sb[informative]
    correlation = ((a - a.mean(axis=1, keepdims=True)) * (b - b.mean(axis=1, keepdims=True))).mean(
        axis=1) / np.maximum(sa * sb, 1e-6)
    return float((correlation >= MIN_CORRELATION).mean()), len(a)


def _cells(image: np.ndarray) -> np.ndarray:
    """The image's whole CELL x CELL cells, one row of pixels each (float32)."""
    rows, columns = image.shape[0] // CELL, image.shape[1] // CELL
    whole = image[: rows * CELL, : columns * CELL].astype(np.float32)
    return whole.reshape(rows, CELL, columns, CELL).swapaxes(1, 2).reshape(rows * columns, CELL * CELL)


def _explained(query: LocalFeatures, reference: LocalFeatures, transform: np.ndarray,
               inliers: int) -> float:
    """Inliers over the query keypoints that land inside the reference once aligned: near 1 for a
    copy, low when only shared chrome or a shared outline matches."""
    moved = cv2.perspectiveTransform(query.points.reshape(-1, 1, 2).astype(np.float64),
                                     transform).reshape(-1, 2)
    w, h = reference.frame
    inside = int(((moved[:, 0] >= 0) & (moved[:, 0] < w) & (moved[:, 1] >= 0) & (moved[:, 1] < h)).sum())
    return min(1.0, inliers / inside) if inside else 0.0


def _region(query_frame: tuple[int, int], reference_frame: tuple[int, int],
            transform: np.ndarray) -> tuple[float, float, float, float]:
    w, h = query_frame
    corners = np.array([[[0, 0]], [[w, 0]], [[w, h]], [[0, h]]], np.float64)
    moved = cv2.perspectiveTransform(corners, transform).reshape(-1, 2)
    rw, rh = reference_frame
    x0, y0 = np.clip(moved.min(axis=0) / (rw, rh), 0, 1)
    x1, y1 = np.clip(moved.max(axis=0) / (rw, rh), 0, 1)
    return float(x0), float(y0), float(x1), float(y1)
