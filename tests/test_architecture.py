"""The package's layers import only downward (README, Layout), and the run folder has one owner."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "eqcryo"
LAYERS = ["physics", "data", "models", "reconstruction", "evaluation", "training", "experiments", "cli"]


def _imported_layers(path: Path) -> set[str]:
    """The eqcryo layers a module imports (relative ``from ..layer`` and absolute ``eqcryo.layer``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level >= 2:
                out.add(mod.split(".")[0] if mod else "")
            elif node.level == 0 and mod.startswith("eqcryo."):
                out.add(mod.split(".")[1])
            if node.level >= 2 and not mod:  # from .. import x
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("eqcryo."))
    return out & set(LAYERS)


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_import_only_downward(layer):
    rank = LAYERS.index(layer)
    for f in sorted((SRC / layer).glob("*.py")):
        upward = {x for x in _imported_layers(f) if LAYERS.index(x) > rank}
        assert not upward, f"{f.relative_to(SRC)} imports {sorted(upward)} (above {layer})"


RUN_FILES = ("metrics.csv", "checkpoint.pt", "summary.json", "eval_poses.npz", "config.yaml")


def _run_file_literals(path: Path) -> list[tuple[int, str]]:
    return [(n.lineno, n.value) for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in RUN_FILES]


def test_only_the_run_folder_module_opens_run_files_by_name():
    """File names of the run folder appear as string literals in training/rundir.py alone."""
    for f in SRC.rglob("*.py"):
        if f.name != "rundir.py":
            assert not _run_file_literals(f), f"{f.relative_to(SRC)} names run files; use training.rundir.RunDir"
    assert len(_run_file_literals(SRC / "training" / "rundir.py")) == len(RUN_FILES)


def test_the_checks_can_fail(tmp_path):
    """An upward import and a run-file literal in a crafted module are both seen."""
    bad = tmp_path / "bad.py"
    bad.write_text("from ..training.trainer import Trainer\nimport eqcryo.cli.main\nopen(run / 'metrics.csv')\n")
    assert _imported_layers(bad) == {"training", "cli"}
    assert _run_file_literals(bad) == [(3, "metrics.csv")]
