"""Imports flow one way: the shared contracts in `components.core`, the sources beside them, one
package per stage over them, and the pipeline and the CLI on top (DESIGN.md, "where each contract
lives"). Every import counts, the ones inside functions too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("render", "train", "export", "infer", "extract")
# What every stage may use besides itself: the core, the sources, the project version and the bundled model.
SHARED = ("components", "components.core", "components.sources", "components.pretrained")
# The one exception: export turns train's generator network (and its file) into ONNX.
EXCEPTIONS = {"export": ("components.train.networks", "components.train.generator_file")}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_imports(path: Path) -> set[str]:
    """The project modules `path` imports (components, pipeline, locgen), anywhere in the file."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module)
            # `from components.core import geo` imports the module components.core.geo
            imported.update(f"{node.module}.{alias.name}" for alias in node.names
                            if (ROOT / node.module.replace(".", "/") / f"{alias.name}.py").is_file())
    return {name for name in imported if name.split(".")[0] in ("components", "pipeline", "locgen")}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _allowed(importer: str, imported: str) -> bool:
    """The import rule, by where the importing module lives."""
    if importer.startswith("locgen"):
        return True
    if importer.startswith("pipeline"):
        return not _within(imported, "locgen")
    if _within(imported, "pipeline") or _within(imported, "locgen"):
        return False
    if importer == "components" or _within(importer, "components.pretrained"):
        return imported == "components"
    if _within(importer, "components.core"):
        return imported == "components" or _within(imported, "components.core")
    if _within(importer, "components.sources"):
        return imported == "components" or any(_within(imported, p) for p in ("components.core", "components.sources"))
    stage = importer.split(".")[1]
    assert stage in STAGES, f"{importer}: a module outside the known layers; add its layer to this test"
    own = f"components.{stage}"
    if imported in SHARED or any(_within(imported, p) for p in SHARED[1:]) or _within(imported, own):
        return True
    return any(_within(imported, allowed) for allowed in EXCEPTIONS.get(stage, ()))


def _violations() -> list[str]:
    found = []
    for package in ("components", "pipeline", "locgen"):
        for path in _modules(package):
            importer = _module_name(path)
            found += [f"{importer} imports {imported}" for imported in sorted(_project_imports(path))
                      if not _allowed(importer, imported)]
    return found


def test_imports_flow_one_way_from_the_cli_and_pipeline_down_through_the_stages_to_the_core():
    assert _violations() == []


@pytest.mark.parametrize(("importer", "imported"), [
    ("components.train.train", "components.extract.job"),
    ("components.export.exporter", "components.infer.onnxmodel"),
    ("components.export.exporter", "components.train.train"),
    ("components.core.tileset", "components.render.plan"),
    ("components.sources.osm", "components.render.raster"),
    ("components.infer.job", "pipeline.steps"),
    ("components.extract.job", "locgen.cli"),
    ("pipeline.local", "locgen.cli"),
])
def test_the_rule_refuses_the_imports_that_ran_backwards(importer, imported):
    assert not _allowed(importer, imported)


@pytest.mark.parametrize(("importer", "imported"), [
    ("components.export.exporter", "components.train.networks"),
    ("components.export.exporter", "components.core.onnx_io"),
    ("components.train.train", "components.core.detect"),
    ("components.extract.evaluate", "components.sources.osm"),
    ("components.infer.job", "components.pretrained"),
    ("pipeline.steps", "components.render.job"),
    ("locgen.cli", "pipeline.local"),
])
def test_the_rule_admits_imports_down_the_layers(importer, imported):
    assert _allowed(importer, imported)
