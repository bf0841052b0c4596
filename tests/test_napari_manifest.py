"""The npe2 manifest is valid, every command imports, and napari finds the contributions."""

import pytest

npe2 = pytest.importorskip("npe2")


def test_manifest_validates_and_imports():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-her2stain")
    manifest.validate_imports()  # every python_name resolves to a callable
    assert manifest.name == "napari-her2stain"
    contrib = manifest.contributions
    assert {w.display_name for w in contrib.widgets} == {
        "Registration review", "ROIs and model", "Compare virtual and real HER2"}
    assert {s.key for s in contrib.sample_data} == {"synthetic", "real"}
    assert [w.layer_types for w in contrib.writers] == [["shapes"]]
    patterns = {p for r in contrib.readers for p in r.filename_patterns}
    assert {"*.svs", "*.ome.tif", "*.geojson"} <= patterns


def test_cli_validate_passes():
    from npe2.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["validate", "napari-her2stain", "--imports"])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output.lower()
