"""The plan of the code (README, "Where to change what"): modules in layers,
each importing only lower layers and its own package, no entry script
importing another, bench/ importing nothing of tests/; one owner for the
file names the scripts exchange and one for the attacks' names, budget
fields and codes (the attack registry); libraries that take typed
settings, never the parsed flags; short functions with few parameters.

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
    "ntk": 3,
    "training": 3,
    "analysis": 4,
    "cli": 5,
    "sweeper": 6,
}
PACKAGES = ("store", "attacks", "ntk", "training", "analysis", "cli")
PACKAGES += ("sweeper",)
ENTRY_SCRIPTS = (
    "run_exp",
    "eval_and_make_adv",
    "calculate_kernel",
    "visualize_ntk_features",
    "analyze_kernels",
    "sweep",
    "report",
)
# The layers of the core modules (data, models, attacks) may import one
# another in this order only: no cycles among them.
CORE_ORDER = ("data", "models", "attacks")
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
            found += _python_files(name)
    return found


def _python_files(folder):
    """Relative paths of the .py files directly in `folder` (relative)."""
    path = os.path.join(ROOT, folder)
    return [
        os.path.join(folder, sub)
        for sub in sorted(os.listdir(path))
        if sub.endswith(".py")
    ]


def _imports(tree):
    """(line, module name) of each absolute import of the tree."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        for name in names:
            yield node.lineno, name


def _imported_units(tree):
    """(line, unit) of each project module the tree imports."""
    known = set(LAYERS) | set(ENTRY_SCRIPTS)
    for line, name in _imports(tree):
        top = name.split(".")[0]
        if top in known:
            yield line, top


def _tree(relpath):
    with open(os.path.join(ROOT, relpath)) as f:
        text = f.read()
    return text, ast.parse(text, relpath)


def _import_problem(unit, target):
    """Why `unit` may not import `target`, or None."""
    if target == unit:
        return None
    if target in ENTRY_SCRIPTS:
        return "an entry script"  # their shared parsers live in cli/
    if unit in ENTRY_SCRIPTS:
        return None  # the top layer
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
    assert _import_problem("sweep", "run_exp") == "an entry script"
    assert _import_problem("sweep", "cli") is None
    assert _import_problem("cli", "training") is None
    assert _import_problem("attacks", "models") is None
    assert _import_problem("models", "attacks") == "a module of the same layer"
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


# --------------------------------------------------------------------------
# bench/ and tests/
# --------------------------------------------------------------------------


def _test_modules():
    """The names of the modules under tests/ (helpers, test files...)."""
    names = set()
    for _, _, files in os.walk(os.path.join(ROOT, "tests")):
        names |= {f[: -len(".py")] for f in files if f.endswith(".py")}
    return names


def _bench_problems(relpath, tree, test_modules):
    """Why the bench module `relpath` reaches into tests/ or an entry
    script: an import of either, or a path naming the tests folder."""
    problems = [
        f"{relpath}:{line} imports {name}"
        for line, name in _imports(tree)
        if name.split(".")[0] in (*test_modules, *ENTRY_SCRIPTS)
    ]
    for line, text in _string_literals(tree):
        if text == "tests":
            problems.append(f"{relpath}:{line} names the tests folder")
    return problems


def test_bench_imports_nothing_of_tests_nor_entry_scripts():
    """Benchmarks share code with tests through modules of their own (the
    reference models are bench/reference_models.py), never tests/."""
    test_modules = _test_modules()
    problems = []
    for relpath in _python_files("bench"):
        _, tree = _tree(relpath)
        problems += _bench_problems(relpath, tree, test_modules)
    assert not problems, "\n".join(problems)


def test_the_bench_rule_catches_what_it_should():
    tree = ast.parse(
        'import helpers\nimport run_exp\nos.path.join(ROOT, "tests")\n'
    )
    assert len(_bench_problems("b.py", tree, {"helpers"})) == 3


# --------------------------------------------------------------------------
# Typed settings below the entry scripts
# --------------------------------------------------------------------------


def _namespace_parameters(tree):
    """(line, function) of each parameter annotated argparse.Namespace."""
    for node in _functions(tree):
        args = node.args
        for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs):
            note = arg.annotation
            if (
                isinstance(note, ast.Attribute)
                and note.attr == "Namespace"
                and isinstance(note.value, ast.Name)
                and note.value.id == "argparse"
            ):
                yield node.lineno, node.name


def test_libraries_take_settings_not_parsed_flags():
    """Only the entry scripts and cli/ (which turns flags into settings)
    handle an argparse.Namespace; every library takes its settings."""
    problems = []
    for relpath in _sources():
        if _unit(relpath) in (*ENTRY_SCRIPTS, "cli"):
            continue
        _, tree = _tree(relpath)
        for line, name in _namespace_parameters(tree):
            problems.append(f"{relpath}:{line} {name}")
    assert not problems, (
        "argparse.Namespace parameters below the entry scripts (take a "
        "settings dataclass; cli.settings makes it):\n" + "\n".join(problems)
    )


# --------------------------------------------------------------------------
# The attacks' vocabulary: only the attacks package spells it
# --------------------------------------------------------------------------

# A word of a string literal: what names, keys and columns are made of.
WORD = re.compile(r"[A-Za-z0-9_-]+")
# Words of the vocabulary used there as plain English: (file, word).
PLAIN_WORDS = {(os.path.join("ntk", "kernel_files.py"), "square")}  # matrix


def _vocabulary():
    """Every attack name (as written and as a column, 'apgd_ce'), budget
    field and broken_by column of the registry."""
    import attacks

    names = attacks.names()
    words = set(names) | set(attacks.budget_fields())
    words |= {name.replace("-", "_") for name in names}
    words |= {
        "broken_by_" + name.replace("-", "_") for name in attacks.outcomes()
    }
    return words


def _docstring_nodes(tree):
    """The Constant nodes that are docstrings."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(
            node,
            (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef),
        ):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
            ):
                found.add(id(body[0].value))
    return found


def _string_literals(tree):
    """(line, text) of each string literal but docstrings (f-strings'
    literal parts included)."""
    docstrings = _docstring_nodes(tree)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            yield node.lineno, node.value


def _vocabulary_problems(relpath, tree, words):
    words = {w for w in words if (relpath, w) not in PLAIN_WORDS}
    return [
        f"{relpath}:{line}: {', '.join(sorted(found))}"
        for line, text in _string_literals(tree)
        if (found := words & set(WORD.findall(text)))
    ]


def test_attack_names_budget_fields_and_codes_have_one_owner():
    """No attack name, budget field or broken_by column appears as a
    literal outside the attacks package (and the tests): the CLI, the
    grid's schema, the estimate, the verdicts and the report derive them
    from the registry, so that an attack is added in one place."""
    words = _vocabulary()
    problems = []
    for relpath in _sources():
        if _unit(relpath) == "attacks":
            continue
        _, tree = _tree(relpath)
        problems += _vocabulary_problems(relpath, tree, words)
    assert not problems, (
        "attack names or budget fields spelled outside attacks/ (ask the "
        "registry: attacks.names(), attacks.get(name), "
        "attacks.budget_fields(), attacks.outcomes()):\n" + "\n".join(problems)
    )


def test_the_vocabulary_rule_catches_what_it_should():
    words = _vocabulary()
    assert {"pgd", "apgd-ce", "apgd_ce", "n_targets"} <= words
    assert "broken_by_square" in words
    source = (
        '"""Docstrings may say apgd-ce."""\n'
        'a = "apgd-ce"\n'
        'b = f"--attack_budget n_targets={n}"\n'
        'c = "broken_by_fab_t"\n'
        'd = "eval_pgd_iters, --pgd_iters and PGD steps"\n'
    )
    problems = _vocabulary_problems("x.py", ast.parse(source), words)
    assert sorted(p.split(":")[1] for p in problems) == ["2", "3", "4"]
