"""The layout of ``pixelseg.models``: paper files never import each other (checked on the import graph).

Every module directly inside ``pixelseg/models/`` is a paper model, except the support modules. A paper
model may import from ``pixelseg.models`` only the registry, the base class and the shared ``encoders``
and ``modules`` packages; those packages never import a paper model; the registry reads and writes no
files (``models.pretrained`` does).
"""

from __future__ import annotations

import pkgutil

import grimp
import pytest

import pixelseg.models

SUPPORT = {"registry", "base", "pretrained", "config", "_all"}
SHARED_PACKAGES = ("pixelseg.models.encoders", "pixelseg.models.modules")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("pixelseg")


def paper_modules() -> list[str]:
    return sorted(f"pixelseg.models.{info.name}" for info in pkgutil.iter_modules(pixelseg.models.__path__)
                  if not info.ispkg and info.name not in SUPPORT)


def allowed_within_models(imported: str) -> bool:
    return (imported in ("pixelseg.models", "pixelseg.models.registry", "pixelseg.models.base")
            or any(imported == package or imported.startswith(package + ".") for package in SHARED_PACKAGES))


def test_there_are_paper_modules_to_check() -> None:
    assert {"pixelseg.models.fcn", "pixelseg.models.mask_rcnn", "pixelseg.models.hmsa"} <= set(paper_modules())


@pytest.mark.parametrize("module", paper_modules())
def test_paper_module_imports_only_registry_base_encoders_and_modules(graph, module: str) -> None:
    within_models = {m for m in graph.find_modules_directly_imported_by(module)
                     if m == "pixelseg.models" or m.startswith("pixelseg.models.")}
    assert not {m for m in within_models if not allowed_within_models(m)}, f"{module} imports another paper file"


def test_shared_packages_import_no_paper_module(graph) -> None:
    shared = {m for package in SHARED_PACKAGES for m in graph.find_descendants(package) | {package}}
    for module in sorted(shared):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith("pixelseg.models."):
                assert allowed_within_models(imported) and imported != "pixelseg.models.registry", \
                    f"{module} imports {imported}"


def test_models_never_import_higher_layers_or_data(graph) -> None:
    models = graph.find_descendants("pixelseg.models") | {"pixelseg.models"}
    forbidden = ("pixelseg.data", "pixelseg.engine", "pixelseg.tasks", "pixelseg.inference", "pixelseg.cli",
                 "pixelseg.instance", "pixelseg.losses", "pixelseg.metrics", "pixelseg.classical")
    for module in sorted(models):
        for imported in graph.find_modules_directly_imported_by(module):
            assert not imported.startswith(forbidden), f"{module} imports {imported}"


def test_registry_does_not_import_io(graph) -> None:
    imported = graph.find_modules_directly_imported_by("pixelseg.models.registry")
    assert not {m for m in imported if m == "pixelseg.io" or m.startswith("pixelseg.io.")}
