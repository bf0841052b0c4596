"""`her2 qupath`: QuPath projects without QuPath — create/extend, export ROIs, import results.

    her2 qupath project --out PROJ --image HE.svs [--rois ROIS.geojson]
                        [--registered reg/transform.json [--her2 HER2.svs]] [--virtual V.ome.tif]
    her2 qupath export  --project PROJ --out DIR [--from QUPATH_EXPORT_DIR]
    her2 qupath import  --project PROJ --image NAME|ID --geojson RESULTS.geojson
                        [--measurements M.csv|M.json] [--as measurements|annotations]
    her2 qupath check   --project PROJ --step export|tiles|translate|import|measurements
    her2 qupath builder --slide V.ome.tif --frame HE.svs --out builder.json
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

from her2core.errors import UserError

STEPS = ("export", "tiles", "translate", "import", "measurements")
# Steps that run only on H&E-like entries (the scripts skip the others with ok=true).
_HE_ONLY = {"tiles", "translate"}
_NOT_HE_ROLES = {"her2_registered", "virtual_her2", "her2", "confidence"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="qupath_command", metavar="ACTION", required=True)

    p = sub.add_parser("project", help="create or extend a QuPath 0.6 project (no QuPath needed)",
                       description="Create or extend a QuPath 0.6 project: H&E images, the registered "
                       "HER2 as an affine entry in H&E space, virtual HER2 slides, ROIs as sidecar "
                       "GeoJSON and a project script importing them. The old project.qpproj is "
                       "backed up; no entry is removed.")
    p.add_argument("--out", required=True, type=Path, help="project folder (created if new)")
    p.add_argument("--image", action="append", required=True, type=Path, metavar="SLIDE",
                   help="an H&E slide (repeatable); the first one is the registration target")
    p.add_argument("--image-type", default="BRIGHTFIELD_H_E",
                   help="QuPath image type of --image slides (default BRIGHTFIELD_H_E)")
    p.add_argument("--rois", action="append", type=Path, default=[], metavar="ROIS.geojson",
                   help="QuPath GeoJSON ROIs of the n-th --image (repeatable, in --image order); "
                   "ROIs of the first image are also put on its registered/virtual HER2 entries")
    p.add_argument("--registered", type=Path, metavar="TRANSFORM.json",
                   help="transform.json of `her2 register` (HER2 level-0 (x,y) -> H&E level-0 (x,y)); "
                   "adds the HER2 slide as an affine entry aligned with the first --image")
    p.add_argument("--her2", type=Path, metavar="SLIDE",
                   help="the HER2 slide of --registered (default: the path recorded in transform.json)")
    p.add_argument("--her2-resampled", type=Path, metavar="SLIDE",
                   help="the HER2 slide already resampled into the first image's grid "
                   "(her2_registered.ome.tif of `her2 register`), added as a plain entry")
    p.add_argument("--virtual", action="append", type=Path, default=[], metavar="SLIDE",
                   help="a virtual HER2 slide of the first image (`her2 translate --slide`, whole "
                   "slide or --roi/--region), shown in its pixel grid (repeatable)")
    p.add_argument("--confidence", action="append", type=Path, default=[], metavar="SLIDE",
                   help="a confidence map (`her2 translate --confidence`: V.confidence.ome.tif), "
                   "placed like its virtual slide; its meaning and scale go into the entry's "
                   "metadata (repeatable)")

    e = sub.add_parser("export", help="annotations of every image as GeoJSON, named per image",
                       description="Write the annotations of every project image to OUT/<image>.geojson "
                       "(+ OUT/index.json), from GeoJSON exported by qupath_scripts/export_annotations.groovy "
                       "(PROJECT/her2/exported), from a folder of QuPath GUI exports (--from), or from "
                       "her2's sidecars — in that order.")
    e.add_argument("--project", required=True, type=Path, help="QuPath project folder or project.qpproj")
    e.add_argument("--out", required=True, type=Path, help="output folder")
    e.add_argument("--from", dest="from_dir", type=Path,
                   help="folder of GeoJSON exported from QuPath, named <image name>.geojson")

    i = sub.add_parser("import", help="her2 results (ROIs with measurements) into a project image",
                       description="Put her2 features into a project image: as measurements matched onto "
                       "existing annotations (PROJECT/her2/measurements, imported by "
                       "qupath_scripts/import_measurements.groovy) or as new annotations (the image's "
                       "sidecar, imported by PROJECT/scripts/her2_import_annotations.groovy).")
    i.add_argument("--project", required=True, type=Path)
    i.add_argument("--image", required=True, help="entry ID, image name or slide file name")
    i.add_argument("--geojson", required=True, type=Path, help="QuPath GeoJSON of the features")
    i.add_argument("--measurements", type=Path,
                   help="extra measurements per feature: CSV or JSON keyed by feature id or name")
    i.add_argument("--as", dest="mode", choices=("measurements", "annotations"), default="measurements")

    b = sub.add_parser("builder", help="the QuPath serverBuilder JSON of one slide (for Groovy scripts)",
                       description="Write the serverBuilder of a project entry for SLIDE: plain, or, with "
                       "--frame, shown in the frame slide's level-0 grid (a her2 region slide such as a "
                       "virtual HER2 of an ROI is scaled and shifted by its recorded origin; --transform "
                       "applies a registration). run_translate.groovy reads it with QuPath's GsonTools.")
    b.add_argument("--slide", required=True, type=Path)
    b.add_argument("--frame", type=Path, help="the H&E slide whose level-0 grid the entry uses")
    b.add_argument("--transform", type=Path, metavar="TRANSFORM.json",
                   help="registration of SLIDE onto --frame (`her2 register`)")
    b.add_argument("--out", required=True, type=Path)

    c = sub.add_parser("check", help="check the per-image status files of a QuPath batch run",
                       description="QuPath's multi-image run exits 0 even when images fail; this exits 1 "
                       "unless every image has an ok status for STEP.")
    c.add_argument("--project", required=True, type=Path)
    c.add_argument("--step", required=True, choices=STEPS)


def run(args: argparse.Namespace) -> int:
    return {"project": _project, "export": _export, "import": _import, "builder": _builder,
            "check": _check}[args.qupath_command](args)


def _builder(args) -> int:
    from her2core.qupath.project import entry_builder, load_registration
    from her2core.util.atomic import write_json

    matrix = None
    if args.transform is not None:
        if args.frame is None:
            raise UserError("--transform needs --frame HE (the slide it registers onto)")
        matrix = load_registration(args.transform).matrix_xy
    builder = entry_builder(args.slide, transform_xy=matrix, frame=args.frame)
    write_json(args.out, builder)
    t = builder.get("transform")
    where = "" if t is None else (f" (x' = {t['m00']:g}·x + {t['m01']:g}·y + {t['m02']:g}, "
                                  f"y' = {t['m10']:g}·x + {t['m11']:g}·y + {t['m12']:g})")
    print(f"{args.out}: {builder['builderType']} serverBuilder for {args.slide.name}{where}")
    return 0


# ----------------------------------------------------------------------------- project


def _confidence_request(path: Path, rois, frame: Path):
    """A confidence slide as an entry in the H&E's grid, its scale recorded with it."""
    from her2core.qupath.project import ImageRequest
    from her2core.slide import open_slide

    with open_slide(path) as s:
        props = s.properties
    if props.get("kind") != "confidence":
        raise UserError(f"{path}: not a her2 confidence map; give the .confidence.ome.tif "
                        "`her2 translate --confidence` wrote")
    return ImageRequest(path=path, image_type="OTHER", role="confidence", rois=rois, frame=frame,
                        name=f"{Path(path).name} (confidence)",
                        metadata={"her2.confidence.meaning": str(props.get("meaning", "")),
                                  "her2.confidence.scale": "confidence = value / 255",
                                  "her2.confidence.method": json.dumps(
                                      props.get("confidence", {}), sort_keys=True)})


def _project(args) -> int:
    from her2core.qupath.geojson import read_features
    from her2core.qupath.project import ImageRequest, add_images, load_registration

    if len(args.rois) > len(args.image):
        raise UserError(f"{len(args.rois)} --rois for {len(args.image)} --image; give at most one "
                        "--rois per --image, in the same order")
    rois = [read_features(r) for r in args.rois] + [None] * (len(args.image) - len(args.rois))
    reqs = [ImageRequest(path=p, image_type=args.image_type, role="he", rois=r)
            for p, r in zip(args.image, rois)]
    first_rois = rois[0]
    if args.registered is not None:
        reg = load_registration(args.registered)
        her2 = args.her2 or reg.her2_slide
        if her2 is None:
            raise UserError(f"{args.registered}: names no HER2 slide; give it with --her2 SLIDE")
        reqs.append(ImageRequest(path=her2, image_type="BRIGHTFIELD_H_DAB", role="her2_registered",
                                 transform_xy=reg.matrix_xy, rois=first_rois, pair_with=0,
                                 frame=args.image[0],
                                 metadata={"her2.transform": str(Path(args.registered).resolve())}))
        if reg.has_field:
            print(f"note: {args.registered} refines the affine with a local displacement field; QuPath's "
                  "affine entry shows the affine part only. For pixel-exact overlays add the resampled "
                  "her2_registered.ome.tif with --her2-resampled.")
    elif args.her2 is not None:
        raise UserError("--her2 needs --registered TRANSFORM.json (the HER2 slide is shown in H&E space)")
    if args.her2_resampled is not None:
        reqs.append(ImageRequest(path=args.her2_resampled, image_type="BRIGHTFIELD_H_DAB",
                                 role="her2_registered", rois=first_rois, frame=args.image[0],
                                 pair_with=None if args.registered is not None else 0,
                                 name=f"{Path(args.her2_resampled).name} (HER2 resampled)"))
    for v in args.virtual:
        reqs.append(ImageRequest(path=v, image_type="BRIGHTFIELD_H_DAB", role="virtual_her2",
                                 rois=first_rois, frame=args.image[0],
                                 name=f"{Path(v).name} (virtual HER2)"))
    reqs += [_confidence_request(c, first_rois, args.image[0]) for c in args.confidence]
    res = add_images(args.out, reqs)
    print(f"project: {res.project_dir / 'project.qpproj'}"
          + (f" (previous copy: {res.backup.name})" if res.backup else " (new)"))
    from her2core.qupath.project import entry_path
    from her2core.qupath.server import reader_description

    for e in res.entries:
        b = e["serverBuilder"]
        md = b.get("metadata") or {}
        size = f", {md['width']}x{md['height']} px" if md else ""
        print(f"  entry {e['entryID']}: {e['imageName']} [{b['builderType']}{size}; reader: "
              f"{reader_description(entry_path(e))}]")
    if res.sidecars:
        print(f"annotations: {len(res.sidecars)} sidecar GeoJSON in {res.project_dir / 'her2' / 'annotations'}")
        print("import them in QuPath: Automate > Project scripts > her2_import_annotations, Run for project;")
        print(f"  or: QuPath script -p {res.project_dir / 'project.qpproj'} -s {res.import_script}")
        for eid, line in res.groovy_lines.items():
            print(f"  entry {eid}: {line}")
    return 0


# ----------------------------------------------------------------------------- export


def _safe_name(name: str) -> str:
    s = re.sub(r"[^\w.\- ()+]+", "_", name).strip(" .")
    return s or "image"


def _export(args) -> int:
    from her2core.qupath.geojson import read_features, write_features
    from her2core.qupath.project import (
        builder_matrix,
        entry_id,
        entry_path,
        load_project,
        project_file,
        sidecar_path,
    )
    from her2core.util.atomic import write_json

    proj_dir = project_file(args.project).parent
    data = load_project(args.project)
    if args.from_dir is not None and not args.from_dir.is_dir():
        raise UserError(f"{args.from_dir}: not a folder of QuPath GeoJSON exports")
    index, used = [], set()
    for e in data["images"]:
        eid, name = entry_id(e), str(e.get("imageName") or e["entryID"])
        candidates = [proj_dir / "her2" / "exported" / f"{eid}.geojson"]
        if args.from_dir is not None:
            stem = Path(name).stem
            candidates += [args.from_dir / f"{n}.geojson" for n in (name, stem, str(eid))]
            candidates += [args.from_dir / f"{n}.json" for n in (name, stem)]
        candidates.append(sidecar_path(proj_dir, e))
        src = next((c for c in candidates if c.is_file()), None)
        row = {"entryID": eid, "imageName": name, "slide": str(entry_path(e) or ""),
               "builderType": e.get("serverBuilder", {}).get("builderType"),
               "source": str(src) if src else None, "features": 0, "file": None}
        if e.get("serverBuilder", {}).get("builderType") == "affine":
            row["transform_xy"] = builder_matrix(e["serverBuilder"]).tolist()
        if src is not None:
            feats = read_features(src)
            out_name = _safe_name(name)
            if out_name in used:
                out_name = f"{out_name}-{eid}"
            used.add(out_name)
            out = write_features(args.out / f"{out_name}.geojson", feats)
            row.update(features=len(feats), file=out.name)
            print(f"entry {eid}: {len(feats)} objects from {src.name} -> {out}")
        else:
            print(f"entry {eid}: {name}: no annotations found (run qupath_scripts/export_annotations.groovy)")
        index.append(row)
    write_json(args.out / "index.json", {"project": str(project_file(args.project).resolve()),
                                         "images": index})
    print(f"index: {args.out / 'index.json'}")
    return 0


# ----------------------------------------------------------------------------- import


def _import(args) -> int:
    from her2core.qupath.geojson import read_features, write_features
    from her2core.qupath.project import (
        entry_id,
        find_entry,
        groovy_import_line,
        load_project,
        project_file,
        write_sidecar,
    )

    proj_dir = project_file(args.project).parent
    data = load_project(args.project)
    entry = find_entry(data, args.image)
    eid = entry_id(entry)
    feats = read_features(args.geojson)
    if args.measurements is not None:
        _merge_measurements(feats, _read_measurements(args.measurements), args.measurements)
    if args.mode == "annotations":
        out = write_sidecar(proj_dir, entry, feats)
        print(f"{len(feats)} annotations for entry {eid} ({entry.get('imageName')}) -> {out}")
        print("import in QuPath (that image open): " + groovy_import_line(proj_dir, entry))
        print(f"  or for all images: QuPath script -p {proj_dir / 'project.qpproj'} -s "
              f"{proj_dir / 'scripts' / 'her2_import_annotations.groovy'}")
    else:
        out = write_features(proj_dir / "her2" / "measurements" / f"{eid}.geojson", feats)
        n = sum(bool(f.measurements) for f in feats)
        print(f"{n} of {len(feats)} features carry measurements for entry {eid} "
              f"({entry.get('imageName')}) -> {out}")
        print(f"put them on the annotations: QuPath script -p {proj_dir / 'project.qpproj'} -s "
              "qupath_scripts/import_measurements.groovy")
    return 0


def _read_measurements(path: Path) -> dict[str, dict[str, float]]:
    """{feature id or name: {measurement: value}} from CSV (column id or name) or JSON."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UserError(f"{path}: cannot read measurements ({exc})") from None
    rows: list[dict]
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    else:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc.msg}); give CSV or JSON measurements") from None
        if isinstance(obj, dict):
            return {str(k): _numbers(v, path, k) for k, v in obj.items()}
        if not isinstance(obj, list):
            raise UserError(f"{path}: expected a JSON object or list of rows")
        rows = obj
    out: dict[str, dict[str, float]] = {}
    for n, row in enumerate(rows):
        key = row.get("id") or row.get("name") or row.get("roi")
        if not key:
            raise UserError(f"{path}: row {n + 1} has no 'id', 'name' or 'roi' to match a feature")
        vals = {k: v for k, v in row.items() if k not in ("id", "name", "roi") and v not in (None, "")}
        out[str(key)] = _numbers(vals, path, key)
    return out


def _numbers(vals, path, key) -> dict[str, float]:
    if not isinstance(vals, dict):
        raise UserError(f"{path}: measurements of {key!r} must be an object of numbers")
    try:
        return {str(k): float(v) for k, v in vals.items()}
    except (TypeError, ValueError):
        raise UserError(f"{path}: a measurement of {key!r} is not a number: {vals}") from None


def _merge_measurements(feats, table: dict[str, dict[str, float]], path: Path) -> None:
    matched = set()
    for f in feats:
        for key in (f.id, f.name):
            if key is not None and key in table:
                f.measurements.update(table[key])
                matched.add(key)
                break
    missing = sorted(set(table) - matched)
    if missing:
        raise UserError(f"{path}: no feature with id or name {', '.join(map(repr, missing[:5]))}"
                        f"{' …' if len(missing) > 5 else ''}; keys must match the GeoJSON's ids or names")


# ----------------------------------------------------------------------------- check


def _check(args) -> int:
    from her2core.qupath.project import META_ROLE, entry_id, load_project, project_file, read_status

    proj_dir = project_file(args.project).parent
    data = load_project(args.project)
    status = read_status(proj_dir, args.step)
    bad = 0
    for e in data["images"]:
        eid = entry_id(e)
        role = (e.get("metadata") or {}).get(META_ROLE)
        s = status.get(eid)
        if s is None:
            if args.step in _HE_ONLY and role in _NOT_HE_ROLES:
                continue  # e.g. the virtual slides a translate run added itself
            print(f"MISSING entry {eid} ({e.get('imageName')}): no {args.step} status")
            bad += 1
        elif not s.get("ok"):
            print(f"FAILED  entry {eid} ({e.get('imageName')}): {s.get('message')}")
            bad += 1
        else:
            print(f"ok      entry {eid} ({e.get('imageName')}): {s.get('message', '')}")
    if bad:
        print(f"{bad} image(s) failed or did not run for step {args.step}")
        return 1
    return 0
