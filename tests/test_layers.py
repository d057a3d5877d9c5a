"""The plan of the code (README, "Where to change what"): modules in layers,
each importing only lower layers and its own package; one owner for the
file names the scripts exchange; short functions with few parameters.

Read from the source with `ast`, so the rules hold for imports inside
functions too."""

import ast
import os
import re

import pytest

from helpers import ROOT

# Layer of each top-level module and package, lowest first. A module may
# import modules of a lower layer and of its own package, nothing else.
LAYERS = {
    "utils": 0,
    "store": 1,
    "data": 2,
    "models": 2,
    "attacks": 2,
    "robust": 2,
    "ntk": 3,
    "training": 3,
    "analysis": 4,
    "cli": 5,
    "sweeper": 6,
}
PACKAGES = ("store", "ntk", "training", "analysis", "sweeper", "robust")
ENTRY_SCRIPTS = (
    "run_exp",
    "eval_and_make_adv",
    "calculate_kernel",
    "visualize_ntk_features",
    "analyze_kernels",
    "sweep",
    "report",
)
# The layers of the core modules (data, models, attacks, robust) may
# import one another in this order only: no cycles among them.
CORE_ORDER = ("data", "models", "attacks", "robust")
# Only store/ may spell these names; every other module asks store.layout.
OWNED_LITERALS = ("parameters_checkpoint_", "train_state.pkl")
MAX_LINES = 80
MAX_PARAMETERS = 8
# A comment on the line above a def that starts with this lets it exceed
# the limits, saying why.
EXEMPTION = re.compile(r"#\s*long:")


def _unit(relpath):
    """The layer unit of a source file: its package, or its module."""
    parts = relpath.split(os.sep)
    return parts[0] if len(parts) > 1 else parts[0][: -len(".py")]


def _sources():
    """Relative paths of every non-test source module of the project."""
    found = []
    for name in sorted(os.listdir(ROOT)):
        path = os.path.join(ROOT, name)
        if name.endswith(".py"):
            found.append(name)
        elif name in PACKAGES and os.path.isdir(path):
            for sub in sorted(os.listdir(path)):
                if sub.endswith(".py"):
                    found.append(os.path.join(name, sub))
    return found


def _imported_units(tree):
    """(line, unit) of each project module the tree imports."""
    known = set(LAYERS) | set(ENTRY_SCRIPTS)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in known:
                yield node.lineno, top


def _tree(relpath):
    with open(os.path.join(ROOT, relpath)) as f:
        text = f.read()
    return text, ast.parse(text, relpath)


def _import_problem(unit, target):
    """Why `unit` may not import `target`, or None."""
    if target == unit:
        return None
    if unit in ENTRY_SCRIPTS:
        return None  # the top layer: sweep.py hands the grid the parsers
    if target in ENTRY_SCRIPTS:
        return "an entry script"
    if LAYERS[target] > LAYERS[unit]:
        return "a higher layer"
    if LAYERS[target] == LAYERS[unit]:
        if unit in CORE_ORDER and target in CORE_ORDER:
            if CORE_ORDER.index(target) < CORE_ORDER.index(unit):
                return None
        return "a module of the same layer"
    return None


def test_every_module_has_a_layer():
    units = {_unit(p) for p in _sources()}
    unplaced = units - set(LAYERS) - set(ENTRY_SCRIPTS)
    assert not unplaced, (
        f"{sorted(unplaced)}: add each to LAYERS or ENTRY_SCRIPTS here and "
        "to README's 'Where to change what'"
    )


def test_imports_point_down():
    problems = []
    for relpath in _sources():
        unit = _unit(relpath)
        _, tree = _tree(relpath)
        for line, target in _imported_units(tree):
            why = _import_problem(unit, target)
            if why:
                problems.append(f"{relpath}:{line} imports {target} ({why})")
    assert not problems, "\n".join(problems)


def test_the_rule_catches_what_it_should():
    assert _import_problem("ntk", "training") == "a module of the same layer"
    assert _import_problem("store", "models") == "a higher layer"
    assert _import_problem("sweeper", "run_exp") == "an entry script"
    assert _import_problem("analysis", "cli") == "a higher layer"
    assert _import_problem("models", "data") is None
    assert _import_problem("data", "models") == "a module of the same layer"
    assert _import_problem("sweep", "sweeper") is None
    assert _import_problem("sweep", "run_exp") is None
    assert _import_problem("analysis", "ntk") is None


def test_package_docstrings_say_what_they_may_import():
    for unit in PACKAGES:
        init = os.path.join(ROOT, unit, "__init__.py")
        if not os.path.isdir(os.path.join(ROOT, unit)):
            continue
        with open(init) as f:
            doc = ast.get_docstring(ast.parse(f.read()))
        assert doc and "May import" in doc, f"{unit}/__init__.py"


def _package_modules():
    """(package, module) of every module of every package, its __init__
    (re-exports and the package's docstring) aside."""
    return [
        tuple(relpath[: -len(".py")].split(os.sep))
        for relpath in _sources()
        if os.sep in relpath and not relpath.endswith("__init__.py")
    ]


def test_every_package_module_has_its_test_file():
    """README's "a file per module": tests/<package>/test_<module>.py, which
    tests the module's public functions directly."""
    missing = [
        f"{package}/{module}.py: tests/{package}/test_{module}.py"
        for package, module in _package_modules()
        if not os.path.isfile(
            os.path.join(ROOT, "tests", package, f"test_{module}.py")
        )
    ]
    assert not missing, "modules without their test file:\n" + "\n".join(
        missing
    )
    assert ("store", "layout") in _package_modules()  # the rule sees them


def test_file_names_have_one_owner():
    problems = []
    for relpath in _sources():
        if _unit(relpath) == "store":
            continue
        text, _ = _tree(relpath)
        for literal in OWNED_LITERALS:
            for number, line in enumerate(text.splitlines(), 1):
                if literal in line:
                    problems.append(f"{relpath}:{number}: {line.strip()}")
    assert not problems, (
        "file names spelled outside store/ (ask store.layout):\n"
        + "\n".join(problems)
    )


def _functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _parameters(node):
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    count = len(names) + (args.vararg is not None) + (args.kwarg is not None)
    return count - (names[:1] in (["self"], ["cls"]))


def _exempt(lines, node):
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    above = lines[first - 2] if first >= 2 else ""
    return bool(EXEMPTION.search(above))


@pytest.mark.parametrize("limit", ["lines", "parameters"])
def test_functions_are_short_and_narrow(limit):
    problems = []
    for relpath in _sources():
        text, tree = _tree(relpath)
        lines = text.splitlines()
        for node in _functions(tree):
            if limit == "lines":
                size, most = node.end_lineno - node.lineno + 1, MAX_LINES
            else:
                size, most = _parameters(node), MAX_PARAMETERS
            if size > most and not _exempt(lines, node):
                problems.append(f"{relpath}:{node.lineno} {node.name}: {size}")
    assert not problems, (
        f"functions over {MAX_LINES} lines or {MAX_PARAMETERS} parameters "
        "(split them, or say why in a '# long: ...' comment above the def):\n"
        + "\n".join(problems)
    )
