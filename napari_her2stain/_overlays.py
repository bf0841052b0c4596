"""Display helpers: lazy checkerboards of two pyramids, colour-coded residual maps, side by side.

These compose pixels for viewing only; every measurement comes from her2core.
"""

from __future__ import annotations

import numpy as np

from napari_her2stain import _layers as L


def _as_levels(layer) -> list:
    import dask.array as da

    levels = list(layer.data) if layer.multiscale else [layer.data]
    return [lv if isinstance(lv, da.Array) else da.from_array(lv, chunks=(512, 512, lv.shape[-1]))
            for lv in levels]


def checkerboard_levels(a_layer, b_layer, square_px: int) -> list:
    """Lazy multiscale checkerboard of two RGB layers on the same pixel grid (level by level).

    Squares are `square_px` level-0 pixels; each level computes only the blocks
    napari asks for, so this works on whole slides.
    """
    import dask.array as da

    a_lv, b_lv = _as_levels(a_layer), _as_levels(b_layer)
    n = min(len(a_lv), len(b_lv))
    if a_lv[0].shape[:2] != b_lv[0].shape[:2]:
        raise ValueError(f"checkerboard needs both images on one pixel grid, got "
                         f"{a_lv[0].shape[:2]} and {b_lv[0].shape[:2]}")
    out = []
    h0 = a_lv[0].shape[0]
    for i in range(n):
        a, b = a_lv[i][..., :3], b_lv[i][..., :3]
        if a.shape != b.shape:
            break
        sq = max(1.0, square_px * a.shape[0] / h0)
        b = b.rechunk(a.chunks)

        def compose(x, y, block_info=None, sq=sq):
            (r0, _), (c0, _) = block_info[0]["array-location"][:2]
            rr = (np.arange(r0, r0 + x.shape[0]) // sq).astype(np.int64)
            cc = (np.arange(c0, c0 + x.shape[1]) // sq).astype(np.int64)
            mask = ((rr[:, None] + cc[None, :]) % 2 == 0)[..., None]
            return np.where(mask, x, y)

        out.append(da.map_blocks(compose, a, b, dtype=np.uint8))
    return out


def residual_rgba(rows: list[dict], region_px: int, threshold_um: float, shape_rc: tuple[int, int]):
    """(ny, nx, 4) uint8 image of per-region residual shift: green small, red beyond threshold.

    Returns the image and its cell (row, col) index of every region. Unreviewed
    cells are fully transparent.
    """
    from matplotlib import colormaps

    ny = max(1, -(-shape_rc[0] // region_px))
    nx = max(1, -(-shape_rc[1] // region_px))
    img = np.zeros((ny, nx, 4), np.uint8)
    cmap = colormaps["RdYlGn_r"]
    for r in rows:
        i, j = int(r["y"]) // region_px, int(r["x"]) // region_px
        if 0 <= i < ny and 0 <= j < nx:
            v = min(1.0, float(r["shift_um"]) / (2.0 * threshold_um))
            rgba = np.array(cmap(v)) * 255
            rgba[3] = 150
            img[i, j] = rgba.astype(np.uint8)
    return img


def residual_layer(he_layer, review: dict) -> tuple:
    """LayerDataTuple: the review's residual map over the H&E (cells of `region_px` px)."""
    R = int(review["region_px"])
    mpp_he = float(he_layer.scale[-1])
    img = residual_rgba(review["regions"], R, float(review["threshold_um"]), L.layer_shape_rc(he_layer))
    t = np.asarray(he_layer.translate[-2:], float) + mpp_he * (R / 2.0 - 0.5)
    return (img, {"name": "registration residual (µm)", "rgb": True, "scale": (R * mpp_he,) * 2,
                  "translate": tuple(t), "interpolation2d": "nearest", "units": L.UNITS,
                  "metadata": L.meta("residual", None, threshold_um=review["threshold_um"])},
            "image")


def flagged_boxes_layer(he_layer, review: dict) -> tuple:
    """LayerDataTuple: red rectangles round the flagged regions (H&E level-0 frame)."""
    boxes = [np.array([[r["y"], r["x"]], [r["y"] + r["h"], r["x"] + r["w"]]], float)
             for r in review["regions"] if r["flagged"]]
    kw = {"name": "flagged regions", "shape_type": "rectangle", "edge_color": "red",
          "face_color": "transparent", "edge_width": max(2.0, 0.01 * int(review["region_px"])),
          "scale": tuple(he_layer.scale[-2:]), "translate": tuple(he_layer.translate[-2:]),
          "units": L.UNITS, "metadata": L.meta("flagged", None)}
    return (boxes, kw, "shapes")


def checkerboard_array(a: np.ndarray, b: np.ndarray, square: int) -> np.ndarray:
    """In-memory checkerboard of two same-shape RGB arrays."""
    rr, cc = np.indices(a.shape[:2])
    mask = (((rr // square) + (cc // square)) % 2 == 0)[..., None]
    return np.where(mask, a[..., :3], b[..., :3])


def transparent_white(levels: list) -> list:
    """RGB levels -> lazy RGBA levels, transparent where the pixel is pure white.

    Slide translation writes white outside the ROI polygons and on background
    tiles; made transparent, the H&E shows through around the ROI.
    """
    import dask.array as da

    def add_alpha(block):
        alpha = np.where((block[..., :3] == 255).all(axis=-1), 0, 255).astype(np.uint8)
        return np.concatenate([block[..., :3], alpha[..., None]], axis=-1)

    out = []
    for lv in levels:
        lv = lv if isinstance(lv, da.Array) else da.from_array(lv)
        lv = lv.rechunk({2: -1})
        out.append(da.map_blocks(add_alpha, lv, dtype=np.uint8,
                                 chunks=lv.chunks[:2] + ((4,),)))
    return out
