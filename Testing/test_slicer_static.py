"""Static checks of the Slicer extension files: what Slicer and the Extensions Index would reject.

Nothing here imports Slicer: the module file is read with `ast`, the .ui with an XML parser, the CMake and
catalogue files as text.
"""

from __future__ import annotations

import ast
import json
import re
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_NAME = "AdvSegAttack"
MODULE_DIR = REPO / MODULE_NAME
MODULE_FILE = MODULE_DIR / f"{MODULE_NAME}.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / f"{MODULE_NAME}.ui"
ICON_FILE = MODULE_DIR / "Resources" / "Icons" / f"{MODULE_NAME}.png"
SCENE_LIB = MODULE_DIR / f"{MODULE_NAME}SceneLib"
RAW_PREFIX = "https://raw.githubusercontent.com/AdvSegAttack/SlicerAdvSegAttack/main/"

# Properties of slicer-extension-catalog-entry-schema-v1.0.2.json ("additionalProperties": false).
CATALOG_SCHEMA_PROPERTIES = {
    "$schema",
    "category",
    "scm_url",
    "scm_revision",
    "scm_type",
    "build_dependencies",
    "dicom_support_rule",
    "build_subdirectory",
    "enabled",
    "tier",
}
CATALOG_SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}
# A subset of ACCEPTED_EXTENSION_CATEGORIES in ExtensionsIndex/scripts/check_description_files.py.
ACCEPTED_CATEGORIES = {"Segmentation", "Quantification", "Informatics", "Utilities", "Examples", "Analysis"}


# ------------------------------------------------------------------------------------------------
# Parsing helpers


def moduleTree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def classes(tree) -> dict[str, ast.ClassDef]:
    """Classes at module level, including those defined only in a supported Slicer (``if UNSUPPORTED_REASON
    is None:``)."""
    statements = list(tree.body)
    for node in tree.body:
        if isinstance(node, ast.If):
            statements += node.body
    return {node.name: node for node in statements if isinstance(node, ast.ClassDef)}


def baseNames(classDef: ast.ClassDef) -> list[str]:
    return [ast.unparse(base).split(".")[-1] for base in classDef.bases]


def moduleConstant(tree, name):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            value = node.value
            if isinstance(value, ast.Call) and ast.unparse(value.func) == "frozenset":
                value = value.args[0]
            return ast.literal_eval(value)
    raise AssertionError(f"{name} is not defined at module level in {MODULE_FILE.name}")


def wrapperClass(tree) -> ast.ClassDef:
    wrappers = [
        c
        for c in classes(tree).values()
        if any(ast.unparse(d).split(".")[-1] == "parameterNodeWrapper" for d in c.decorator_list)
    ]
    assert len(wrappers) == 1, "exactly one @parameterNodeWrapper class"
    return wrappers[0]


def wrapperFields(tree) -> dict[str, str]:
    """Field name -> annotation source of the parameter node wrapper."""
    return {
        node.target.id: ast.unparse(node.annotation)
        for node in wrapperClass(tree).body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }


def enumNames(tree) -> set[str]:
    return {c.name for c in classes(tree).values() if "Enum" in baseNames(c)}


def uiRoot() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def uiWidgets() -> dict[str, str]:
    """Widget objectName -> class in the .ui."""
    return {w.get("name"): w.get("class") for w in uiRoot().iter("widget")}


def uiParameterBindings() -> dict[str, tuple[str, str]]:
    """SlicerParameterName -> (widget name, widget class)."""
    bindings = {}
    for widget in uiRoot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                name = prop.findtext("string")
                assert name not in bindings, f"{name} is bound to two widgets"
                bindings[name] = (widget.get("name"), widget.get("class"))
    return bindings


def cmakeText(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    return "\n".join(
        line.split("#", 1)[0] if not line.lstrip().startswith("set(EXTENSION") else line
        for line in text.splitlines()
    )


def cmakeSetValues(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\(\s*{variable}\b(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return match.group(1).split()


def extensionVariables() -> dict[str, str]:
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    return dict(re.findall(r'set\(\s*(EXTENSION_[A-Z_]+)\s+"([^"]*)"\s*\)', text))


def s4ext() -> dict[str, str]:
    values = {}
    for line in (REPO / f"{MODULE_NAME}.s4ext").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        values[key] = value.strip()
    return values


def catalog() -> dict:
    return json.loads((REPO / f"{MODULE_NAME}.json").read_text(encoding="utf-8"))


def topLevelStatements(tree):
    """Statements that run at import (module body and class bodies), not function bodies."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.ClassDef):
            stack.extend(node.body)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                stack.extend(getattr(node, field, []) or [])


def importedModules(statements) -> set[str]:
    names = set()
    for node in statements:
        for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []:
            if isinstance(sub, ast.Import):
                names.update(alias.name for alias in sub.names)
            elif isinstance(sub, ast.ImportFrom) and sub.module:
                names.add(sub.module)
    return names


def callsAtImport(statements) -> set[str]:
    names = set()
    for node in statements:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call):
                names.add(ast.unparse(sub.func).split(".")[-1])
    return names


# ------------------------------------------------------------------------------------------------
# Module file


def test_module_has_the_four_classes_on_the_right_bases():
    found = classes(moduleTree())
    expected = {
        MODULE_NAME: ["ScriptedLoadableModule"],
        f"{MODULE_NAME}Widget": ["ScriptedLoadableModuleWidget", "VTKObservationMixin"],
        f"{MODULE_NAME}Logic": ["ScriptedLoadableModuleLogic"],
        f"{MODULE_NAME}Test": ["ScriptedLoadableModuleTest"],
    }
    for name, bases in expected.items():
        assert name in found, f"class {name} is missing"
        assert baseNames(found[name]) == bases, name


def test_widget_has_the_lifecycle_methods():
    widget = classes(moduleTree())[f"{MODULE_NAME}Widget"]
    methods = {node.name: node for node in widget.body if isinstance(node, ast.FunctionDef)}
    for name in (
        "setup",
        "cleanup",
        "enter",
        "exit",
        "onSceneStartClose",
        "onSceneEndClose",
        "setParameterNode",
    ):
        assert name in methods, name
    cleanup = ast.unparse(methods["cleanup"])
    assert "removeObservers()" in cleanup and "cancel()" in cleanup and "disconnectGui" in cleanup
    setup = ast.unparse(methods["setup"])
    assert "loadUI" in setup and "childWidgetVariables" in setup and "setMRMLScene" in setup
    assert "connectGui(self.ui)" in ast.unparse(methods["setParameterNode"])


def test_every_ui_name_used_by_the_widget_exists():
    source = MODULE_FILE.read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.([A-Za-z_]\w*)", source))
    missing = used - set(uiWidgets())
    assert not missing, f"used by the module but not in the .ui: {sorted(missing)}"


def test_parameter_names_in_the_ui_are_wrapper_fields_and_vice_versa():
    tree = moduleTree()
    fields = set(wrapperFields(tree))
    bound = set(uiParameterBindings())
    setInCode = set(moduleConstant(tree, "PARAMETERS_SET_IN_CODE"))
    assert bound <= fields, f"SlicerParameterName without a wrapper field: {sorted(bound - fields)}"
    assert setInCode <= fields, f"PARAMETERS_SET_IN_CODE names unknown fields: {sorted(setInCode - fields)}"
    assert not (bound & setInCode), f"both bound and set in code: {sorted(bound & setInCode)}"
    assert fields - setInCode == bound, f"fields without a widget: {sorted(fields - setInCode - bound)}"


def test_bound_widgets_have_a_connector_for_their_field_type():
    """The pairs slicer.parameterNodeWrapper.guiConnectors accepts (widget class is compared exactly)."""
    tree = moduleTree()
    fields = wrapperFields(tree)
    enums = enumNames(tree)
    for parameter, (widgetName, widgetClass) in uiParameterBindings().items():
        annotation = fields[parameter]
        base = re.sub(r"^Annotated\[([^,\]]+).*", r"\1", annotation)
        if widgetClass == "QComboBox":
            ok = base in enums or "Choice(" in annotation
        elif widgetClass == "QSpinBox":
            ok = base == "int"
        elif widgetClass in ("QDoubleSpinBox", "ctkSliderWidget"):
            ok = base == "float" and ("WithinRange" in annotation or widgetClass == "QDoubleSpinBox")
        elif widgetClass == "QCheckBox":
            ok = base == "bool"
        elif widgetClass == "QLineEdit":
            ok = base == "str"
        elif widgetClass == "ctkPathLineEdit":
            ok = base in ("pathlib.Path", "Path")
        elif widgetClass == "qMRMLNodeComboBox":
            ok = all(
                t.strip() in ("None",) or t.strip().startswith("vtkMRML")
                for t in re.sub(r"^Union\[(.*)\]$", r"\1", base).split(",")
            )
        else:
            ok = False
        assert ok, f"{widgetName} ({widgetClass}) cannot be bound to {parameter}: {annotation}"


def test_ui_file_follows_slicer_conventions():
    root = uiRoot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == MODULE_NAME
    widgets = uiWidgets()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    qtClasses = {w for w in widgets.values() if w.startswith("Q")}
    assert set(widgets.values()) - qtClasses <= declared, "custom widget classes must be declared"
    connections = {
        (c.findtext("sender"), c.findtext("signal"), c.findtext("receiver"), c.findtext("slot"))
        for c in root.iter("connection")
    }
    for name, widgetClass in widgets.items():
        if widgetClass.startswith("qMRML") and widgetClass != "qMRMLWidget":
            assert (MODULE_NAME, "mrmlSceneChanged(vtkMRMLScene*)", name, "setMRMLScene(vtkMRMLScene*)") in (
                connections
            ), f"{name} does not get the scene"
    advanced = root.find(".//widget[@name='advancedCollapsibleButton']")
    assert advanced is not None and advanced.get("class") == "ctkCollapsibleButton"
    collapsed = {p.get("name"): p.findtext("bool") for p in advanced.findall("property")}
    assert collapsed.get("collapsed") == "true", "Advanced starts collapsed"


def test_attack_panels_are_made_from_the_engine_catalogue():
    """Attacks, parameters and presets come from the engine's catalogue at run time: the .ui has only the two
    containers the panels go into (one in the Attack section, one under Advanced), and neither the module
    outside its self-test nor its Qt-free library names an attack, parameter, flag or preset."""
    root = uiRoot()
    for section, container in (
        ("attackCollapsibleButton", "attackParametersWidget"),
        ("advancedCollapsibleButton", "advancedParametersWidget"),
    ):
        widget = root.find(f".//widget[@name='{section}']//widget[@name='{container}']")
        assert widget is not None and widget.get("class") == "QWidget", f"{container} is not in {section}"
        layout = widget.find("layout")
        assert layout is not None and layout.get("class") == "QVBoxLayout", container
        assert widget.find(".//widget") is None, f"{container} is filled at run time"
    assert uiWidgets()["attackComboBox"] == "QComboBox" and "attack" not in uiParameterBindings()
    from conftest import attack_catalogue

    names = set()
    for attack in attack_catalogue()["attacks"]:
        names.add(attack["name"])
        for parameter in attack["parameters"]:
            names.update((parameter["name"], parameter["flag"], "--no-" + parameter["flag"][2:]))
        names.update(preset["name"] for preset in attack["presets"])
    tree = moduleTree()
    selfTest = classes(tree)[f"{MODULE_NAME}Test"]
    sources = {MODULE_FILE.name: [n for n in tree.body if n is not selfTest]}
    sources.update({p.name: ast.parse(p.read_text(encoding="utf-8")).body for p in SCENE_LIB.glob("*.py")})
    for fileName, statements in sources.items():
        literals = {
            node.value
            for statement in statements
            for node in ast.walk(statement)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        assert not literals & names, f"{fileName} names {sorted(literals & names)}"
    fields = wrapperFields(tree)
    assert fields["attack"] == "str" and fields["attackSettings"] == "str"
    assert not set(fields) & names, "no parameter node field per attack parameter"


def test_nothing_heavy_happens_at_import():
    tree = moduleTree()
    statements = list(topLevelStatements(tree))
    imported = importedModules(statements)
    for heavy in ("torch", "monai", "AdvSegAttackLib", "PyTorchUtils", "numpy", "SimpleITK"):
        assert not any(m == heavy or m.startswith(heavy + ".") for m in imported), (
            f"{heavy} imported at import"
        )
    assert "imp" not in imported
    calls = callsAtImport(statements)
    for forbidden in (
        "pip_install",
        "pip_ensure",
        "installTorch",
        "pip_check",
        "launchConsoleProcess",
        "start",
    ):
        assert forbidden not in calls, f"{forbidden}() runs at import"


def test_scene_library_is_qt_free():
    for path in sorted(SCENE_LIB.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        everywhere = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert not everywhere & {"qt", "ctk", "PythonQt", "torch"}, f"{path.name} imports Qt or torch"
        atImport = {m.split(".")[0] for m in importedModules(topLevelStatements(tree))}
        assert not atImport & {"slicer", "vtk", "numpy", "AdvSegAttackLib"}, (
            f"{path.name}: heavy import at top"
        )


def test_child_process_is_started_with_an_argument_list():
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert source.count("qt.QProcess()") == 1, "one engine-process class starts every child process"
    assert re.search(r"process\.start\(launch\.program, launch\.arguments\)", source)
    assert "shell=True" not in source and "os.system" not in source
    for gone in ("_ExportRun", "class _Run", "_onExportStdout", "_onStderr", "_killChildren"):
        assert gone not in source, gone


# ------------------------------------------------------------------------------------------------
# CMake, catalogue entry, icon


def _moduleCMakeLists():
    text = cmakeText(MODULE_DIR / "CMakeLists.txt")
    name = re.search(r"set\(MODULE_NAME\s+(\w+)\)", text).group(1)
    scripts = [s.replace("${MODULE_NAME}", name) for s in cmakeSetValues(text, "MODULE_PYTHON_SCRIPTS")]
    resources = [s.replace("${MODULE_NAME}", name) for s in cmakeSetValues(text, "MODULE_PYTHON_RESOURCES")]
    return text, name, scripts, resources


def test_module_cmake_lists_every_file_and_only_existing_files():
    text, name, scripts, resources = _moduleCMakeLists()
    assert name == MODULE_NAME
    for listed in scripts + resources:
        assert (MODULE_DIR / listed).is_file(), f"listed in CMake but missing: {listed}"
    assert all(s.endswith(".py") for s in scripts), "SCRIPTS holds the .py files"
    assert not any(r.endswith(".py") for r in resources), "RESOURCES holds the other files"
    onDisk = {
        p.relative_to(MODULE_DIR).as_posix()
        for p in MODULE_DIR.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc" and p.name != "CMakeLists.txt"
    }
    unlisted = onDisk - set(scripts) - set(resources)
    assert not unlisted, f"files in the module folder that CMake does not install: {sorted(unlisted)}"
    assert re.search(r"slicerMacroBuildScriptedModule\(.*WITH_GENERIC_TESTS.*\)", text, re.S)
    testing = re.search(r"if\(BUILD_TESTING\)(.*?)endif\(\)", text, re.S)
    assert testing and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in testing.group(1)


def test_top_level_cmake_is_a_slicer_extension():
    text = cmakeText(REPO / "CMakeLists.txt")
    assert re.search(r"^project\(\s*AdvSegAttack\s*\)", text, re.M)
    variables = extensionVariables()
    for key in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        "EXTENSION_DEPENDS",
    ):
        assert variables.get(key), f"{key} is not set"
    assert variables["EXTENSION_DEPENDS"] == "PyTorch"
    assert variables["EXTENSION_CATEGORY"] in ACCEPTED_CATEGORIES
    assert variables["EXTENSION_HOMEPAGE"].startswith("https://")
    repoName = variables["EXTENSION_HOMEPAGE"].rstrip("/").split("/")[-1]
    assert "slicer" in repoName.lower(), "the Extensions Index wants 'Slicer' in the repository name"
    order = [
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "add_subdirectory(AdvSegAttackLib)",
        "add_subdirectory(AdvSegAttack)",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ]
    positions = [text.find(line) for line in order]
    assert all(p >= 0 for p in positions), dict(zip(order, positions, strict=True))
    assert positions == sorted(positions)
    # The regular expressions ExtensionsIndex/scripts/check_description_files.py applies.
    icon = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', text, re.I | re.M)
    shots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', text, re.I | re.M)
    assert (
        icon and icon[0].startswith("http") and shots and all(u.startswith("http") for u in shots[0].split())
    )


def test_engine_cmake_installs_the_engine_beside_the_module():
    text = cmakeText(REPO / "AdvSegAttackLib" / "CMakeLists.txt")
    assert re.search(r"set\(MODULE_NAME\s+AdvSegAttackLib\)", text)
    assert re.search(r"slicerMacroBuildScriptedModule\(.*WITH_SUBDIR.*\)", text, re.S)
    assert "WITH_GENERIC_TESTS" not in text
    assert re.search(r"file\(GLOB_RECURSE MODULE_PYTHON_SCRIPTS.*\*\.py", text, re.S)
    assert (REPO / "AdvSegAttackLib" / "__init__.py").is_file()
    # The bundled models and texture auto-encoders go where the engine looks (cards.models_dir,
    # texture.weights.texture_models_dir): Resources/<folder> beside the package.
    from AdvSegAttackLib.attacks.texture.weights import texture_models_dir
    from AdvSegAttackLib.models.cards import models_dir

    engine_parent = (REPO / "AdvSegAttackLib").resolve().parent
    read_at_run_time = {
        p.relative_to(engine_parent / "Resources").as_posix() for p in (models_dir(), texture_models_dir())
    }
    installed = re.search(r"foreach\(_resource_dir IN ITEMS ([^)]*)\)", text)
    assert installed and read_at_run_time <= set(installed.group(1).split()), (read_at_run_time, text)
    assert all(any((REPO / "Resources" / folder).iterdir()) for folder in read_at_run_time)
    assert (
        "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/Resources/${_resource_dir}/${_resource_subdir}" in text
    )
    assert (
        "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/Resources/${_resource_dir}/${_resource_file}"
        in text
    )


def test_s4ext_json_and_cmake_agree():
    variables = extensionVariables()
    legacy = s4ext()
    assert legacy["scm"] == "git"
    assert legacy["scmurl"] == variables["EXTENSION_HOMEPAGE"]
    assert legacy["homepage"] == variables["EXTENSION_HOMEPAGE"]
    assert legacy["category"] == variables["EXTENSION_CATEGORY"]
    assert legacy["depends"] == variables["EXTENSION_DEPENDS"]
    assert legacy["iconurl"] == variables["EXTENSION_ICONURL"]
    assert legacy["screenshoturls"] == variables["EXTENSION_SCREENSHOTURLS"]
    assert legacy["contributors"] == variables["EXTENSION_CONTRIBUTORS"]
    assert legacy["description"] == variables["EXTENSION_DESCRIPTION"]
    entry = catalog()
    assert set(entry) <= CATALOG_SCHEMA_PROPERTIES, (
        f"not in the schema: {sorted(set(entry) - CATALOG_SCHEMA_PROPERTIES)}"
    )
    assert CATALOG_SCHEMA_REQUIRED <= set(entry)
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/")
    assert entry["category"] == variables["EXTENSION_CATEGORY"]
    assert entry["scm_url"] == variables["EXTENSION_HOMEPAGE"]
    assert entry["scm_revision"] == legacy["scmrevision"]
    assert entry["build_dependencies"] == variables["EXTENSION_DEPENDS"].split()
    assert isinstance(entry["tier"], int) and 1 <= entry["tier"] <= 5


def test_icon_and_screenshot_urls_point_at_files_in_this_repository():
    variables = extensionVariables()
    icon = variables["EXTENSION_ICONURL"]
    assert icon.startswith(RAW_PREFIX)
    assert (REPO / icon[len(RAW_PREFIX) :]) == ICON_FILE
    for url in variables["EXTENSION_SCREENSHOTURLS"].split():
        assert url.startswith(RAW_PREFIX)
        assert url.lower().endswith((".png", ".jpg", ".jpeg", ".gif"))


def test_screenshot_exists():
    missing = [
        url[len(RAW_PREFIX) :]
        for url in extensionVariables()["EXTENSION_SCREENSHOTURLS"].split()
        if not (REPO / url[len(RAW_PREFIX) :]).is_file()
    ]
    if missing:
        pytest.skip(f"screenshot not taken yet (needs a running Slicer): {', '.join(missing)}")


def test_icon_is_a_128_pixel_png():
    data = ICON_FILE.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)


def sceneLibModule(name: str):
    """A Qt-free module of AdvSegAttackSceneLib (importable without Slicer)."""
    import importlib

    sys.path.insert(0, str(MODULE_DIR))
    try:
        return importlib.import_module(f"AdvSegAttackSceneLib.{name}")
    finally:
        sys.path.remove(str(MODULE_DIR))


def test_requirements_are_the_engine_dependencies_minus_torch_and_what_slicer_ships():
    """requirements.txt (what the module installs) = pyproject's runtime dependencies, with the same lower
    bounds, minus torch (PyTorch Utils) and minus the packages Slicer ships, whose Slicer 5.10 versions must
    meet the engine's lower bounds."""
    import tomllib
    from packaging.requirements import Requirement

    dependencies = sceneLibModule("dependencies")
    canonical = dependencies.canonicalName
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    runtime = {canonical(r.name): r.specifier for r in map(Requirement, project["project"]["dependencies"])}
    slicerPins = {
        canonical(name): version
        for name, version in dependencies.readPins(
            MODULE_DIR / "Resources" / dependencies.SLICER_CONSTRAINTS_FILE
        ).items()
    }
    requirements = dependencies.readRequirements(MODULE_DIR / "Resources" / "requirements.txt")
    listed = {canonical(r.name): r.specifier for r in map(Requirement, requirements)}
    assert listed == {
        name: specifier for name, specifier in runtime.items() if name not in slicerPins and name != "torch"
    }
    shippedBySlicer = {name: runtime[name] for name in runtime if name in slicerPins}
    assert set(shippedBySlicer) == {"numpy", "scipy", "simpleitk", "pydicom"}
    for name, specifier in shippedBySlicer.items():
        assert specifier.contains(slicerPins[name]), (
            f"Slicer 5.10 ships {name} {slicerPins[name]}, not {specifier}"
        )
    assert {"einops", "psutil", "monai"} <= set(listed)
    assert not any("==" in line for line in requirements), "lower bounds only, no exact pins"


def pythonOf(version: str) -> str:
    """A real Python `version` (pyenv on CI and the developers' machines, else on PATH); skips without one
    (fails under CI=true)."""
    import glob
    import os
    import shutil

    found = sorted(glob.glob(f"/root/.pyenv/versions/{version}.*/bin/python")) or [
        shutil.which(f"python{version}")
    ]
    if found[-1]:
        return found[-1]
    if os.environ.get("CI") == "true":
        pytest.fail(f"no Python {version} on this machine")
    pytest.skip(f"no Python {version} on this machine")


def test_module_file_runs_on_python_39_up_to_the_version_check():
    """On Slicer 5.6/5.8 (Python 3.9) the module must load and say which Slicer it needs: everything that runs
    before the check imports on Python 3.9, and the check is the first thing after the imports."""
    import subprocess

    tree = moduleTree()
    check = next(
        index
        for index, node in enumerate(tree.body)
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "UNSUPPORTED_REASON"
    )
    before = importedModules(tree.body[:check])
    allowed = {"qt", "slicer", "vtk", "slicer.ScriptedLoadableModule", "slicer.util", "slicer.i18n"}
    allowed.add("AdvSegAttackSceneLib.supported")
    assert before - set(sys.stdlib_module_names) <= allowed, sorted(
        before - set(sys.stdlib_module_names) - allowed
    )
    guarded = next(node for node in tree.body[check:] if isinstance(node, ast.If))
    assert ast.unparse(guarded.test) == "UNSUPPORTED_REASON is None"
    assert "AdvSegAttackSceneLib" in importedModules(guarded.body)  # engine, scene, … only after the check
    code = (
        "import sys; sys.path.insert(0, sys.argv[2]);"
        "compile(open(sys.argv[1], encoding='utf-8').read(), sys.argv[1], 'exec');"
        "from AdvSegAttackSceneLib.supported import unsupportedReason;"
        "print(unsupportedReason((5, 8), sys.version_info)); print(unsupportedReason((5, 10), (3, 12)))"
    )
    completed = subprocess.run(
        [pythonOf("3.9"), "-c", code, str(MODULE_FILE), str(MODULE_DIR)], capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == [
        "AdvSegAttack needs 3D Slicer 5.10 or newer (with Python 3.10 or newer); this is Slicer 5.8 with Python "
        "3.9, so please install a current Slicer.",
        "None",
    ]


def test_supported_slicer_is_stated_wherever_users_look():
    import tomllib

    supported = sceneLibModule("supported")
    assert supported.MINIMUM_SLICER_VERSION == (5, 10)
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["requires-python"] == ">=3.10" and supported.MINIMUM_PYTHON_VERSION == (3, 10)
    statement = "3D Slicer 5.10 or newer"
    assert statement in extensionVariables()["EXTENSION_DESCRIPTION"]
    assert statement in s4ext()["description"]
    assert statement in " ".join(ast.unparse(moduleTree()).split())
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    assert statement in readme and "Python 3.10" in readme
    # The catalogue entry's schema has no field for a Slicer version ("additionalProperties": false).
    assert set(catalog()) <= CATALOG_SCHEMA_PROPERTIES


# ------------------------------------------------------------------------------------------------
# Signal connections, reader mode and export widgets

# Signals the widget connects to, by widget class (Qt/CTK signatures as PythonQt's connect() takes them).
KNOWN_SIGNALS = {
    "QPushButton": {"clicked(bool)", "clicked()", "toggled(bool)"},
    "QRadioButton": {"clicked(bool)", "toggled(bool)"},
    "QCheckBox": {"clicked(bool)", "toggled(bool)", "stateChanged(int)"},
    "QComboBox": {"activated(int)", "currentIndexChanged(int)", "currentTextChanged(QString)"},
    "QLineEdit": {"textChanged(QString)", "editingFinished()", "returnPressed()"},
    "ctkPathLineEdit": {"currentPathChanged(QString)"},
    "QSpinBox": {"valueChanged(int)"},
    "QDoubleSpinBox": {"valueChanged(double)"},
}


def widgetConnections() -> list[tuple[str, str, str]]:
    """(widget name, signal, widget method) of every ``self.ui.<name>.connect("<signal>", self.<method>)``."""
    source = MODULE_FILE.read_text(encoding="utf-8")
    return re.findall(r'self\.ui\.(\w+)\.connect\(\s*"([^"]+)"\s*,\s*self\.(\w+)\s*\)', source)


def widgetMethods() -> set[str]:
    widget = classes(moduleTree())[f"{MODULE_NAME}Widget"]
    return {node.name for node in widget.body if isinstance(node, ast.FunctionDef)}


def logicStaticMethod(name: str, namespace: dict):
    """A static method of the Logic class, compiled from the module's source (the module itself needs Qt)."""
    logic = classes(moduleTree())[f"{MODULE_NAME}Logic"]
    function = next(n for n in logic.body if isinstance(n, ast.FunctionDef) and n.name == name)
    function.decorator_list = []
    code = compile(ast.Module(body=[function], type_ignores=[]), str(MODULE_FILE), "exec")
    exec(code, namespace)
    return namespace[name]


def test_every_connected_slot_exists_and_the_signal_fits_the_widget():
    connections = widgetConnections()
    widgets, methods = uiWidgets(), widgetMethods()
    assert len(connections) >= 15
    for widgetName, signal, method in connections:
        assert widgetName in widgets, f"{widgetName} is not in the .ui"
        assert method in methods, f"{widgetName}.{signal} is connected to the missing method {method}"
        known = KNOWN_SIGNALS.get(widgets[widgetName])
        assert known is not None and signal in known, f"{widgets[widgetName]} {widgetName} has no {signal}"
    connected = {(w, m) for w, _, m in connections}
    for pair in (
        ("readerStartButton", "onReaderStartButton"),
        ("readerNextButton", "onReaderNextButton"),
        ("readerStopButton", "onReaderStopButton"),
        ("readerManipulatedRadioButton", "onReaderVerdictToggled"),
        ("readerConfidenceComboBox", "onReaderConfidenceChanged"),
        ("exportButton", "onExportButton"),
        ("exportDicomCheckBox", "onExportDicomToggled"),
        ("nnunetConfigurationComboBox", "onNnunetConfigurationActivated"),
        ("nnunetCheckpointComboBox", "onNnunetCheckpointActivated"),
    ):
        assert pair in connected, pair


def test_attack_panel_makes_a_widget_for_every_kind_and_connects_signals_it_has():
    """`AttackPanel` (widgets made at run time): a widget for every kind the catalogue adapter names, and each
    widget made there connected only to signals its class has."""
    panel = classes(moduleTree())["AttackPanel"]
    made, connected = set(), []  # connected: (widget classes of the variable in its block, signal)
    for block in ast.walk(panel):
        created = {}
        statements = [getattr(block, field, None) for field in ("body", "orelse")]
        for statement in [s for part in statements if isinstance(part, list) for s in part]:
            node = statement.value if isinstance(statement, (ast.Assign, ast.Expr)) else None
            calls = [node.body, node.orelse] if isinstance(node, ast.IfExp) else [node]
            names = [ast.unparse(c.func) for c in calls if isinstance(c, ast.Call)]
            if isinstance(statement, ast.Assign) and names and all(n.startswith("qt.Q") for n in names):
                created[ast.unparse(statement.targets[0])] = {n[3:] for n in names}
                made.update(n[3:] for n in names)
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(".connect"):
                connected.append((created[ast.unparse(node.func.value)], node.args[0]))
    assert {"QComboBox", "QCheckBox", "QSpinBox", "QDoubleSpinBox"} <= made
    assert len(connected) == 4
    for widgetClasses, signal in connected:
        for widgetClass in widgetClasses:
            if isinstance(signal, ast.Constant):
                assert signal.value in KNOWN_SIGNALS[widgetClass], (widgetClass, signal.value)
            else:  # the spin boxes' signal, chosen by kind
                constants = {n.value for n in ast.walk(panel) if isinstance(n, ast.Constant)}
                assert {"valueChanged(double)", "valueChanged(int)"} <= constants
                assert widgetClass in ("QSpinBox", "QDoubleSpinBox"), widgetClass
    kinds = set(sceneLibModule("catalogue").WIDGET_KINDS.values())
    source = ast.unparse(panel)
    handled = {kind for kind in kinds if f"kind == '{kind}'" in source}
    assert kinds - handled == {"int"}, "check, combo and double by name; int is the remaining spin box"


def test_nnunet_group_widgets(capsys):
    """The nnU-Net group of the model section: its widgets, inside it; folds and mirroring bound to the
    parameter node, configuration and checkpoint set in code (their items come from the folder); every field
    starts at the engine's default; the mirroring tooltip says what it costs, as the engine's --tta help."""
    widgets = uiWidgets()
    expected = {
        "nnunetGroupBox": "QGroupBox",
        "nnunetConfigurationLabel": "QLabel",
        "nnunetConfigurationComboBox": "QComboBox",
        "nnunetFoldsLabel": "QLabel",
        "nnunetFoldsLineEdit": "QLineEdit",
        "nnunetCheckpointLabel": "QLabel",
        "nnunetCheckpointComboBox": "QComboBox",
        "nnunetTtaCheckBox": "QCheckBox",
    }
    for name, widgetClass in expected.items():
        assert widgets.get(name) == widgetClass, name
    root = uiRoot()
    group = {w.get("name") for w in root.find(".//widget[@name='nnunetGroupBox']").iter("widget")}
    assert set(expected) <= group
    inputs = {w.get("name") for w in root.find(".//widget[@name='inputsCollapsibleButton']").iter("widget")}
    assert "nnunetGroupBox" in inputs
    bindings = uiParameterBindings()
    assert bindings["nnunetFolds"] == ("nnunetFoldsLineEdit", "QLineEdit")
    assert bindings["nnunetTta"] == ("nnunetTtaCheckBox", "QCheckBox")
    tree = moduleTree()
    assert {"nnunetConfiguration", "nnunetCheckpoint"} <= set(moduleConstant(tree, "PARAMETERS_SET_IN_CODE"))
    defaults = {
        node.target.id: ast.unparse(node.value)
        for node in wrapperClass(tree).body
        if isinstance(node, ast.AnnAssign) and node.target.id.startswith("nnunet")
    }
    assert defaults == {
        "nnunetConfiguration": "''",
        "nnunetFolds": "''",
        "nnunetCheckpoint": "advEngine.NNUNET_DEFAULT_CHECKPOINT",
        "nnunetTta": "False",
    }
    assert sceneLibModule("engine").NNUNET_DEFAULT_CHECKPOINT == "final"
    tta = root.find(".//widget[@name='nnunetTtaCheckBox']/property[@name='toolTip']").findtext("string")
    assert "8x slower" in tta and "off by default" in tta
    from AdvSegAttackLib.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser("attack").parse_args(["attack", "--help"])
    engineHelp = " ".join(capsys.readouterr().out.split())
    assert (
        "--tta mirroring test-time augmentation" in engineHelp and "(off: 2-8x faster attacks)" in engineHelp
    )


def test_reader_section_widgets():
    widgets = uiWidgets()
    expected = {
        "readerCollapsibleButton": "ctkCollapsibleButton",
        "readerNameLineEdit": "QLineEdit",
        "readerSessionPathLineEdit": "ctkPathLineEdit",
        "readerStartButton": "QPushButton",
        "readerStopButton": "QPushButton",
        "readerCounterLabel": "QLabel",
        "readerRealRadioButton": "QRadioButton",
        "readerManipulatedRadioButton": "QRadioButton",
        "readerConfidenceComboBox": "QComboBox",
        "readerOrganComboBox": "QComboBox",
        "readerCommentLineEdit": "QLineEdit",
        "readerNextButton": "QPushButton",
        "readerStatusLabel": "QLabel",
    }
    for name, widgetClass in expected.items():
        assert widgets.get(name) == widgetClass, name
    root = uiRoot()
    reader = root.find(".//widget[@name='readerCollapsibleButton']")
    assert {p.get("name"): p.findtext("bool") for p in reader.findall("property")}.get("collapsed") == "true"
    # The two verdicts are auto-exclusive only if they share a parent widget, and nothing else is in it.
    verdict = root.find(".//widget[@name='readerVerdictWidget']")
    assert sorted(w.get("name") for w in verdict.iter("widget") if w is not verdict) == [
        "readerManipulatedRadioButton",
        "readerRealRadioButton",
    ]
    nextButton = root.find(".//widget[@name='readerNextButton']")
    assert {p.get("name"): p.findtext("bool") for p in nextButton.findall("property")}.get(
        "enabled"
    ) == "false"
    # The answer fields are inside the widget that is disabled when every case is answered.
    fields = {w.get("name") for w in root.find(".//widget[@name='readerAnswerFieldsWidget']").iter("widget")}
    assert {
        "readerVerdictWidget",
        "readerConfidenceComboBox",
        "readerOrganComboBox",
        "readerNextButton",
    } <= fields
    # No reader widget is bound to the scene's parameter node (the scene is closed when reading starts).
    assert not any(name.startswith("reader") for name, _ in uiParameterBindings().values())


def test_reader_mode_hides_the_attack_panels():
    tree = moduleTree()
    hidden = moduleConstant(tree, "READER_HIDDEN_PANELS")
    widgets = uiWidgets()
    assert set(hidden) <= set(widgets)
    assert {"resultsCollapsibleButton", "inputsCollapsibleButton", "attackCollapsibleButton"} <= set(hidden)
    root = uiRoot()
    reader = root.find(".//widget[@name='readerCollapsibleButton']")
    inside = {w.get("name") for w in reader.iter("widget")}
    assert not set(hidden) & inside, "a hidden panel would hide the reader section"


def test_export_widgets_match_the_engine_export():
    from AdvSegAttackLib.studies.export import EXPORT_FORMATS, PHI_OPTIONS

    tree = moduleTree()
    formatWidgets = moduleConstant(tree, "EXPORT_FORMAT_WIDGETS")
    assert set(formatWidgets) == set(EXPORT_FORMATS)
    widgets = uiWidgets()
    for widgetName in formatWidgets.values():
        assert widgets[widgetName] == "QCheckBox"
    assert widgets["exportPhiComboBox"] == "QComboBox"
    assert widgets["exportDicomSourcePathLineEdit"] == "ctkPathLineEdit"
    source = MODULE_FILE.read_text(encoding="utf-8")
    phiItems = re.findall(r'exportPhiComboBox\.addItem\(_\("[^"]*"\), "(\w+)"\)', source)
    assert sorted(phiItems) == sorted(PHI_OPTIONS)


def test_export_command_line_is_accepted_by_the_engine(tmp_path):
    sys.path.insert(0, str(MODULE_DIR))
    try:
        from AdvSegAttackSceneLib import engine
    finally:
        sys.path.remove(str(MODULE_DIR))
    from AdvSegAttackLib.cli import build_parser
    from AdvSegAttackLib.cli.studies import cmd_export

    exportArguments = logicStaticMethod("exportArguments", {"advEngine": engine})
    case, bundle = tmp_path / "my case", tmp_path / "out dir"
    arguments = exportArguments(case, bundle, ("nifti", "dicom"), tmp_path / "dicom src", "keep")
    assert arguments[:2] == ["-m", engine.ENGINE_CLI_MODULE]
    parsed = build_parser().parse_args(arguments[2:])
    assert parsed.func is cmd_export and parsed.progress == "jsonl"
    assert (parsed.case_dir, parsed.out) == (str(case), str(bundle))
    assert parsed.format == ["nifti", "dicom"] and parsed.phi == "keep"
    assert parsed.dicom_source == str(tmp_path / "dicom src")
    plain = build_parser().parse_args(exportArguments(case, bundle)[2:])
    assert (plain.format, plain.phi, plain.dicom_source) == (["nifti"], "remove", None)


def test_bundle_folder_never_reuses_a_folder_with_files(tmp_path):
    import os

    bundleFolder = logicStaticMethod("bundleFolder", {"os": os, "re": re})
    assert bundleFolder(str(tmp_path / "new"), "CT 1 adversarial (saa)") == str(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    assert bundleFolder(str(tmp_path / "empty"), "x") == str(tmp_path / "empty")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.txt").write_text("a", encoding="utf-8")
    first = bundleFolder(str(tmp_path / "full"), "CT 1 adversarial (saa)")
    assert first == str(tmp_path / "full" / "CT_1_adversarial_saa-bundle")
    Path(first).mkdir()
    assert bundleFolder(str(tmp_path / "full"), "CT 1 adversarial (saa)").endswith("-bundle-2")
