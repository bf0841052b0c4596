"""Guarded readers of the JSON, CSV and GeoJSON files users give: one UserError line, never a traceback.

Every user-facing text file goes through `read_text` (UTF-8, a UTF-8 byte-order mark
accepted; Latin-1/Windows-1252 or UTF-16 named as such), JSON through `loads_json` /
`read_json` (type of the top level, finite numbers only — `NaN`, `Infinity` and 1e999
are refused —, a nesting deeper than the parser's recursion limit (a 10⁵-deep file) one
line, not a RecursionError), CSV through `read_csv_rows` / `read_csv_frame` (empty file, ragged or
binary garbage, missing columns). Each message names the file and what to do.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from her2core.errors import UserError

#: Largest JSON/CSV text read into memory (a QuPath export of a whole slide's cells is ~100s of MB).
MAX_TEXT_BYTES = 2 << 30

_JSON_KINDS = {dict: "a JSON object {...}", list: "a JSON list [...]"}


def read_text(path: str | Path, what: str) -> str:
    """The text of `path` as UTF-8 (BOM stripped); `what` names the file in messages ("cases CSV")."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise UserError(f"{path}: {size / 2**30:.1f} GiB is too large for a {what}; "
                            "is it the right file?")
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; give the path of the {what}") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder; give the {what} file") from None
    except PermissionError:
        raise UserError(f"{path}: not readable (permission denied); fix its permissions") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    return decode_text(data, str(path), what)


def decode_text(data: bytes, source: str, what: str) -> str:
    """UTF-8 text of `data` (a BOM is fine); other encodings get a line saying which and the fix."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise UserError(f"{source}: the {what} is UTF-16 text; save it as UTF-8 (Excel: CSV UTF-8)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if b"\x00" in data[:4096]:
            raise UserError(f"{source}: binary data, not a {what}; is it the right file?") from None
        guess = "Latin-1/Windows-1252 text" if _latin1_like(data) else "not UTF-8 text"
        raise UserError(f"{source}: the {what} is {guess} (byte {exc.start}); save it as UTF-8 "
                        "(Excel: CSV UTF-8)") from None


def _latin1_like(data: bytes) -> bool:
    """Mostly printable text with high bytes: what an 8-bit Western encoding produces."""
    sample = data[:65536]
    printable = sum(32 <= b < 127 or b in (9, 10, 13) or b >= 0xA0 for b in sample)
    return printable >= 0.95 * len(sample)


def loads_json(text: str, source: str, *, expect: type | tuple = (dict, list), finite: bool = True,
               fix: str = "") -> Any:
    """Parse JSON text from `source`: bounded depth, top level of type `expect`.

    `finite`: refuse NaN/Infinity (user files: coordinates, settings); her2core's own records,
    whose metrics may be NaN, pass False. `fix` ends each message ("export it again from QuPath").
    """
    tail = f"; {fix}" if fix else ""
    checks = {"parse_constant": _no_constant, "parse_float": _finite_float} if finite else {}
    try:
        obj = json.loads(text, **checks)
    except _NonFinite as exc:
        raise UserError(f"{source}: {exc} in the JSON; numbers must be finite{tail}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno}, column "
                        f"{exc.colno}){tail}") from None
    except RecursionError:  # json's C parser counts its depth against the recursion limit
        raise UserError(f"{source}: JSON nested too deeply (thousands of levels); not a file "
                        f"her2 reads{tail}") from None
    kinds = expect if isinstance(expect, tuple) else (expect,)
    if not isinstance(obj, kinds):
        want = " or ".join(_JSON_KINDS.get(k, k.__name__) for k in kinds)
        raise UserError(f"{source}: expected {want}, found {_kind(obj)}{tail}")
    return obj


def read_json(path: str | Path, what: str, *, expect: type | tuple = dict, finite: bool = True,
              fix: str = "") -> Any:
    """`loads_json` of the file `path` (see `read_text`)."""
    return loads_json(read_text(path, what), str(path), expect=expect, finite=finite, fix=fix)


def require_keys(obj: dict, types: dict[str, type | tuple], source: str, fix: str = "") -> dict:
    """`obj` when each key of `types` is present with a value of that type; else one UserError."""
    tail = f"; {fix}" if fix else ""
    for key, kind in types.items():
        if key not in obj:
            raise UserError(f"{source}: missing key '{key}'{tail}")
        if not isinstance(obj[key], kind) or (kind is int and isinstance(obj[key], bool)):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            want = " or ".join(_JSON_KINDS.get(k, k.__name__) for k in kinds)
            raise UserError(f"{source}: '{key}' should be {want}, found {_kind(obj[key])}{tail}")
    return obj


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false",
            int: "a number", float: "a number"}.get(type(v), type(v).__name__)


class _NonFinite(ValueError):
    pass


def _no_constant(name: str):
    raise _NonFinite(name)


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise _NonFinite(text)
    return v


def read_csv_rows(path: str | Path, what: str, *, required: set[str] | frozenset = frozenset(),
                  fix: str = "") -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a CSV with a header row; header cells stripped and lower-cased.

    Refuses an empty file, binary garbage and missing `required` columns, one line each.
    """
    path = Path(path)
    text = read_text(path, what)
    tail = f"; {fix}" if fix else ""
    try:
        lines = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise UserError(f"{path}: not a readable CSV ({exc}){tail}") from None
    if not lines or not any(c.strip() for c in lines[0]):
        raise UserError(f"{path}: the {what} is empty (no header row){tail}")
    header = [c.strip().lower() for c in lines[0]]
    missing = sorted(set(required) - set(header))
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} in the {what} (its header "
                        f"is {','.join(header)[:80]!r}){tail}")
    return header, lines[1:]


def read_csv_frame(path: str | Path, what: str, *, required: tuple | list = (), dtype=None,
                   fix: str = ""):
    """A pandas DataFrame of a CSV (read as `read_text` decodes it), refusing empty or garbage files."""
    import pandas as pd

    path = Path(path)
    text = read_text(path, what)
    tail = f"; {fix}" if fix else ""
    if not text.strip():
        raise UserError(f"{path}: the {what} is empty{tail}")
    try:
        df = pd.read_csv(io.StringIO(text), dtype=dtype, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable {what} ({first}){tail}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} in the {what}{tail}")
    return df
