"""The registration result as data: an affine plus a smooth displacement field, and its file format.

Direction (docs/architecture.md: the HER2 slide is moved onto the H&E slide):

* `matrix` (3x3) maps HER2 level-0 (x, y) -> H&E level-0 (x, y) (the affine part).
* `field` refines it locally. It is sampled on a regular grid laid over the H&E slide
  (node (i, j) sits at H&E level-0 x = origin_x + j * spacing, y = origin_y + i * spacing),
  stored as float32 array (2, ny, nx) = (dx, dy) in H&E level-0 pixels, interpolated
  bilinearly (clamped at the border), and used as

      her2_xy = inverse(matrix) @ (he_xy + field(he_xy))

  i.e. a pull-back field: for every H&E pixel it says where to look in the HER2 slide,
  which is what resampling needs. The forward map HER2 -> H&E solves that equation by
  fixed-point iteration (the field is smooth and small, so it converges in a few steps).

Pixel convention: integer level-0 coordinates are pixel centres (as in numpy / skimage).
`transform.json` holds the matrix, the field's file name (a `.npy`, read with
allow_pickle=False), its grid, and both slides' microns per pixel and sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

import numpy as np

from her2core.coords import apply_affine_xy
from her2core.errors import UserError
from her2core.util.atomic import atomic_path, write_json
from her2core.util.safe_io import read_json, require_keys

SCHEMA = "her2core.transform/1"


@dataclass
class Transform:
    """HER2 -> H&E mapping: `matrix` (HER2 xy -> H&E xy) and an optional pull-back `field`."""

    matrix: np.ndarray
    he_mpp: float
    her2_mpp: float
    he_size: tuple[int, int] = (0, 0)      # level-0 (w, h)
    her2_size: tuple[int, int] = (0, 0)
    field: np.ndarray | None = None        # (2, ny, nx) float32: dx, dy in H&E level-0 px
    field_origin_xy: tuple[float, float] = (0.0, 0.0)
    field_spacing: float = 1.0             # H&E level-0 px between field nodes
    info: dict = dc_field(default_factory=dict)

    def __post_init__(self):
        self.matrix = np.asarray(self.matrix, dtype=float).reshape(3, 3)

    # -- the mapping --------------------------------------------------------
    @property
    def inverse_matrix(self) -> np.ndarray:
        return np.linalg.inv(self.matrix)

    def displacement(self, he_xy) -> np.ndarray:
        """Field value (dx, dy) at H&E level-0 points (..., 2); zeros when there is no field."""
        pts = np.asarray(he_xy, dtype=float)
        if self.field is None:
            return np.zeros_like(pts)
        from scipy.ndimage import map_coordinates

        flat = pts.reshape(-1, 2)
        gc = (flat[:, 0] - self.field_origin_xy[0]) / self.field_spacing
        gr = (flat[:, 1] - self.field_origin_xy[1]) / self.field_spacing
        out = np.empty_like(flat)
        for k in range(2):
            out[:, k] = map_coordinates(self.field[k], [gr, gc], order=1, mode="nearest",
                                        output=np.float64)
        return out.reshape(pts.shape)

    def he_to_her2(self, he_xy) -> np.ndarray:
        """H&E level-0 (x, y) -> HER2 level-0 (x, y), points (..., 2)."""
        pts = np.asarray(he_xy, dtype=float)
        return apply_affine_xy(self.inverse_matrix, pts + self.displacement(pts))

    def her2_to_he(self, her2_xy, iterations: int = 12) -> np.ndarray:
        """HER2 level-0 (x, y) -> H&E level-0 (x, y) (inverts the pull-back field)."""
        pts = np.asarray(her2_xy, dtype=float)
        target = apply_affine_xy(self.matrix, pts)
        if self.field is None:
            return target
        p = target.copy()
        for _ in range(iterations):
            p = target - self.displacement(p)
        return p

    # -- file format ----------------------------------------------------------
    def to_json(self, field_name: str | None = None) -> dict:
        d = {
            "schema": SCHEMA,
            "matrix": self.matrix.tolist(),
            "matrix_maps": "HER2 level-0 (x, y) -> H&E level-0 (x, y), homogeneous, acting on (x, y, 1)",
            "he": {"mpp": self.he_mpp, "size_wh": list(self.he_size)},
            "her2": {"mpp": self.her2_mpp, "size_wh": list(self.her2_size)},
            "field": None,
            "info": self.info,
        }
        if self.field is not None:
            d["field"] = {
                "path": field_name,
                "format": "npy float32 (2, ny, nx): dx, dy in H&E level-0 pixels",
                "origin_xy": [float(v) for v in self.field_origin_xy],
                "spacing_px": float(self.field_spacing),
                "shape": list(self.field.shape),
                "interpolation": "bilinear, clamped at the border",
                "direction": "pull-back: her2_xy = inverse(matrix) @ (he_xy + field(he_xy))",
            }
        return d

    def save(self, path: str | Path) -> Path:
        """Write `path` (transform.json) and, if there is a field, `<stem>_field.npy` beside it."""
        path = Path(path)
        field_name = None
        if self.field is not None:
            if not np.isfinite(self.field).all():
                raise UserError(f"{path}: the registration's displacement field holds NaN/inf; "
                                "register again with --no-field (affine only)")
            field_name = path.name.replace(".json", "") + "_field.npy"
            with atomic_path(path.parent / field_name) as tmp, open(tmp, "wb") as fh:
                np.save(fh, self.field.astype(np.float32), allow_pickle=False)
        write_json(path, self.to_json(field_name))
        return path

    # -- plausibility -----------------------------------------------------------
    def affine_decomposition(self) -> dict:
        """Rotation (deg), scales and shear of the affine, with the slides' mpp ratio removed."""
        a = self.matrix[:2, :2] * (self.he_mpp / self.her2_mpp)
        sx = float(np.hypot(a[0, 0], a[1, 0]))
        rot = float(np.degrees(np.arctan2(a[1, 0], a[0, 0])))
        det = float(np.linalg.det(a))
        sy = det / sx if sx else 0.0
        shear = float((a[0, 0] * a[0, 1] + a[1, 0] * a[1, 1]) / (sx * sx)) if sx else 0.0
        return {"rotation_deg": rot, "scale_x": sx, "scale_y": sy, "shear": shear,
                "determinant": det, "translation_px": [float(self.matrix[0, 2]), float(self.matrix[1, 2])]}

    def field_jacobian_min(self) -> float | None:
        """Smallest Jacobian determinant of he_xy -> he_xy + field (<= 0 means folding)."""
        if self.field is None or min(self.field.shape[1:]) < 2:
            return None
        dx, dy = self.field.astype(float) / self.field_spacing
        ddx_dr, ddx_dc = np.gradient(dx)
        ddy_dr, ddy_dc = np.gradient(dy)
        det = (1 + ddx_dc) * (1 + ddy_dr) - ddx_dr * ddy_dc
        return float(det.min())

    def plausibility_warnings(self, *, max_shear: float = 0.1, max_scale_dev: float = 0.15) -> list[str]:
        """Reasons this transform looks implausible for a restained/consecutive slide pair."""
        w = []
        dec = self.affine_decomposition()
        if dec["determinant"] <= 0:
            w.append("affine flips the slide (negative determinant)")
        for k in ("scale_x", "scale_y"):
            if abs(dec[k] - 1.0) > max_scale_dev:
                w.append(f"{k} {dec[k]:.3f} is far from 1 after correcting for mpp")
        if abs(dec["shear"]) > max_shear:
            w.append(f"large shear {dec['shear']:.3f}")
        jac = self.field_jacobian_min()
        if jac is not None and jac <= 0:
            w.append(f"displacement field folds (min Jacobian determinant {jac:.3f})")
        return w


def load_transform(path: str | Path) -> Transform:
    """Read a transform.json written by `Transform.save` (and its field .npy)."""
    path = Path(path)
    if path.is_dir():
        path = path / "transform.json"
    if not path.exists():
        raise UserError(f"{path}: transform file not found; run `her2 register` first")
    fix = "run `her2 register` again"
    d = read_json(path, "transform file", finite=False, fix=fix)  # info may hold NaN metrics
    if d.get("schema") != SCHEMA or "matrix" not in d:
        raise UserError(f"{path}: not a her2core transform (schema {d.get('schema')!r})")
    require_keys(d, {"matrix": list, "he": dict, "her2": dict}, str(path), fix=fix)
    try:
        return _transform_from(d, path)
    except (KeyError, TypeError, ValueError) as exc:  # a value of the wrong type or shape
        raise UserError(f"{path}: malformed transform ({type(exc).__name__}: {exc}); "
                        f"{fix}") from None


def _transform_from(d: dict, path: Path) -> Transform:
    fld = None
    origin, spacing = (0.0, 0.0), 1.0
    if d.get("field"):
        f = d["field"]
        if not isinstance(f.get("path"), str) or Path(f["path"]).name != f["path"]:
            raise UserError(f"{path}: field path {f.get('path')!r} is not a file beside it; "
                            "run `her2 register` again")
        fpath = path.parent / f["path"]
        try:
            fld = np.load(fpath, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise UserError(f"{fpath}: cannot read displacement field ({exc})") from None
        if fld.ndim != 3 or fld.shape[0] != 2:
            raise UserError(f"{fpath}: displacement field must have shape (2, ny, nx), got {fld.shape}")
        if not np.isfinite(fld).all():  # NaN would map tiles off the slide: white HER2 that QC keeps
            raise UserError(f"{fpath}: displacement field holds {int((~np.isfinite(fld)).sum())} NaN/inf "
                            "values; run `her2 register` again (or with --no-field)")
        origin = tuple(float(v) for v in f["origin_xy"])
        spacing = float(f["spacing_px"])
    matrix = np.asarray(d["matrix"], dtype=float)
    if matrix.shape != (3, 3) or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix)) < 1e-12:
        raise UserError(f"{path}: matrix must be an invertible 3x3 matrix")
    return Transform(matrix=matrix, he_mpp=float(d["he"]["mpp"]), her2_mpp=float(d["her2"]["mpp"]),
                     he_size=tuple(d["he"].get("size_wh", (0, 0))),
                     her2_size=tuple(d["her2"].get("size_wh", (0, 0))),
                     field=fld, field_origin_xy=origin, field_spacing=spacing,
                     info=d.get("info", {}))
