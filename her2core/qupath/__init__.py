"""QuPath bridge: QuPath-dialect GeoJSON, project files written without QuPath, and an
optional paquo backend (imported lazily; it starts a JVM and needs a real QuPath).

See `geojson` (ROIs and measurements), `project` (project.qpproj, classes, sidecars,
Groovy import script), `server` (the reader, server metadata and placement QuPath needs for
an entry) and `paquo_backend`.
"""

from her2core.qupath.geojson import (  # noqa: F401
    Feature,
    PolygonRC,
    features_to_polygons_rc,
    polygons_rc_to_features,
    read_features,
    transform_features,
    write_features,
)
