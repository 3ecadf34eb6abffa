"""The notebook sources: each ``notebooks/NN_name.ipynb`` is paired with ``notebooks/NN_name.py``
(jupytext's py:percent format, see ``jupytext.toml``; ``make sync``) and the two hold the same
cells; the ``.ipynb`` is committed without outputs; its one ``parameters`` cell (papermill) holds
only UPPER_CASE assignments of literals. Fast: nothing is executed.

Each check is a small function returning a list of problems (empty when all is well); the
``test_checker_*`` tests feed it a drifted or unstripped pair written into ``tmp_path``, so a
check that could never fail would fail here."""

import ast
import json
import re
from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATTERN = "[0-9][0-9]_*"
UPPER = re.compile(r"[A-Z][A-Z0-9_]*")


def _source(cell) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _tags(cell) -> list:
    return list(cell.get("metadata", {}).get("tags", []))


def _cells(cells) -> list:
    """(cell_type, source, tags) of each cell: what the two files of a pair must agree on."""
    return [(c["cell_type"], _source(c), _tags(c)) for c in cells]


def _difference(py, ipynb) -> str:
    """The first thing that differs between two (cell_type, source, tags), .py's first."""
    if py[0] != ipynb[0] or py[2] != ipynb[2]:
        return f"{py[0]} tags={py[2]} vs {ipynb[0]} tags={ipynb[2]}"
    a, b = py[1].split("\n"), ipynb[1].split("\n")
    n = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    shown = [repr(lines[n]) if n < len(lines) else "(end)" for lines in (a, b)]
    return f"source line {n + 1}: {shown[0]} vs {shown[1]}"


def read_ipynb(path: Path) -> dict:
    """The notebook's JSON as committed (no normalisation by nbformat)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def pair_problems(ipynb: Path) -> list:
    """The paired ``.py`` exists and ``jupytext.read`` of it gives the cells of the ``.ipynb``."""
    ipynb = Path(ipynb)
    script = ipynb.with_suffix(".py")
    if not script.is_file():
        return [
            f"{script.name} missing: run `.venv/bin/jupytext --sync notebooks/{ipynb.name}` "
            f"or save the notebook in `make lab` (pairing in jupytext.toml)"
        ]
    expected = _cells(read_ipynb(ipynb)["cells"])
    got = _cells(jupytext.read(script)["cells"])
    for i, (e, g) in enumerate(zip(expected, got)):
        if e != g:
            return [
                f"{script.name} and {ipynb.name} differ at cell {i}: {_difference(g, e)} "
                f"(`make sync` copies the newer over the older)"
            ]
    if len(expected) != len(got):
        return [
            f"{script.name} has {len(got)} cells, {ipynb.name} {len(expected)} "
            f"(`make sync` copies the newer over the older)"
        ]
    return []


def orphan_problems(script: Path) -> list:
    """A notebook script without its ``.ipynb`` (papermill and ``make tutorial`` run the .ipynb)."""
    script = Path(script)
    ipynb = script.with_suffix(".ipynb")
    return [] if ipynb.is_file() else [f"{ipynb.name} missing for {script.name}: run `make sync`"]


def output_problems(nb: dict) -> list:
    """No outputs and a null execution count in every code cell (`make strip`)."""
    problems = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {i} has {len(cell['outputs'])} output(s)")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {i} has execution_count {cell['execution_count']}")
    return problems


def parameters_problems(nb: dict) -> list:
    """Exactly one code cell tagged ``parameters``; every statement in it assigns a literal to
    UPPER_CASE names (papermill injects overrides of these names after the cell)."""
    tagged = [(i, c) for i, c in enumerate(nb["cells"]) if "parameters" in _tags(c)]
    if len(tagged) != 1:
        return [f"{len(tagged)} cells tagged 'parameters' (cells {[i for i, _ in tagged]}), want 1"]
    i, cell = tagged[0]
    if cell["cell_type"] != "code":
        return [f"the 'parameters' cell {i} is {cell['cell_type']}, not code"]
    try:
        tree = ast.parse(_source(cell))
    except SyntaxError as err:
        return [f"the 'parameters' cell {i} does not parse: {err}"]
    problems = []
    for stmt in tree.body:
        where = f"parameters cell {i}, line {stmt.lineno}"
        if not isinstance(stmt, ast.Assign):
            problems.append(f"{where}: {type(stmt).__name__}, not an assignment")
            continue
        for target in stmt.targets:
            if not (isinstance(target, ast.Name) and UPPER.fullmatch(target.id)):
                problems.append(
                    f"{where}: target {ast.unparse(target)!r} is not an UPPER_CASE name"
                )
        try:
            ast.literal_eval(stmt.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            problems.append(f"{where}: {ast.unparse(stmt.value)!r} is not a literal")
    if not tree.body:
        problems.append(f"the 'parameters' cell {i} assigns nothing")
    return problems


# --- the committed notebooks -------------------------------------------------------------------

IPYNBS = sorted(NOTEBOOKS.glob(PATTERN + ".ipynb"))
SCRIPTS = sorted(NOTEBOOKS.glob(PATTERN + ".py"))


def test_notebooks_found():
    assert IPYNBS, f"no {PATTERN}.ipynb in {NOTEBOOKS}"


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.stem)
def test_paired_script_has_the_same_cells(ipynb):
    assert pair_problems(ipynb) == []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_has_its_notebook(script):
    assert orphan_problems(script) == []


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.stem)
def test_notebook_has_no_outputs(ipynb):
    assert output_problems(read_ipynb(ipynb)) == []


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.stem)
def test_parameters_cell_holds_literals(ipynb):
    assert parameters_problems(read_ipynb(ipynb)) == []


# --- the checks fail on a drifted or unstripped pair ------------------------------------------

# (no trailing newline: nbformat never writes one, and the percent format does not keep it)
PARAMS = '# Parameters\nPROFILE = "cpu"  # smoke | cpu | paper\nSEED = 0\nSIZES = (64, 128)'


def _notebook(params=PARAMS):
    v4 = nbformat.v4
    return v4.new_notebook(
        cells=[
            v4.new_markdown_cell("# A title\n\nSome *text*."),
            v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
            v4.new_code_cell("x = SEED + 1\nprint(x)"),
            v4.new_markdown_cell("## Next"),
        ]
    )


def _write_pair(tmp_path, nb=None, name="00_example") -> Path:
    """A clean pair as `make sync` writes it; returns the .ipynb path."""
    nb = nb or _notebook()
    ipynb = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, ipynb)
    jupytext.write(nb, ipynb.with_suffix(".py"), fmt="py:percent")
    return ipynb


def test_checker_accepts_a_clean_pair(tmp_path):
    ipynb = _write_pair(tmp_path)
    nb = read_ipynb(ipynb)
    assert pair_problems(ipynb) == []
    assert orphan_problems(ipynb.with_suffix(".py")) == []
    assert output_problems(nb) == []
    assert parameters_problems(nb) == []
    assert '# %% tags=["parameters"]' in ipynb.with_suffix(".py").read_text()


@pytest.mark.parametrize(
    "drift",
    ["py source", "ipynb source", "py lost tag", "py extra cell", "ipynb cell type", "py missing"],
)
def test_checker_reports_a_drifted_pair(tmp_path, drift):
    ipynb = _write_pair(tmp_path)
    script = ipynb.with_suffix(".py")
    text, nb = script.read_text(), read_ipynb(ipynb)
    if drift == "py source":
        script.write_text(text.replace("print(x)", "print(x + 1)"))
    elif drift == "ipynb source":
        nb["cells"][2]["source"] = "x = SEED + 2\nprint(x)"
    elif drift == "py lost tag":
        script.write_text(text.replace('# %% tags=["parameters"]', "# %%"))
    elif drift == "py extra cell":
        script.write_text(text + "\n# %%\nprint('only in the script')\n")
    elif drift == "ipynb cell type":
        nb["cells"][3]["cell_type"] = "raw"
    elif drift == "py missing":
        script.unlink()
    ipynb.write_text(json.dumps(nb, indent=1))
    assert pair_problems(ipynb) != []


def test_checker_reports_an_orphan_script(tmp_path):
    ipynb = _write_pair(tmp_path)
    ipynb.unlink()
    assert orphan_problems(ipynb.with_suffix(".py")) != []


@pytest.mark.parametrize("unstripped", ["outputs", "execution_count"])
def test_checker_reports_an_unstripped_notebook(tmp_path, unstripped):
    nb = _notebook()
    if unstripped == "outputs":
        nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    else:
        nb.cells[2].execution_count = 3
    ipynb = _write_pair(tmp_path, nb)
    assert pair_problems(ipynb) == []  # outputs are not in the .py: the pair still agrees
    assert output_problems(read_ipynb(ipynb)) != []


@pytest.mark.parametrize(
    "params",
    [
        PARAMS + "\nDATA_DIR = Path('../data')",  # a call, not a literal
        PARAMS + "\nseed = 1",  # not UPPER_CASE
        PARAMS + "\nA, B = 1, 2",  # a tuple target
        PARAMS + "\nSEED += 1",  # not a plain assignment
        "import os\n" + PARAMS,  # not an assignment
        PARAMS + "\nCFG.SEED = 1",  # an attribute target
        PARAMS + "\nX = [i for i in range(3)]",  # a comprehension
        PARAMS + "\nX = (",  # does not parse
    ],
)
def test_checker_reports_a_parameters_cell_with_more_than_literals(tmp_path, params):
    assert parameters_problems(read_ipynb(_write_pair(tmp_path, _notebook(params)))) != []


@pytest.mark.parametrize("tags", [[], ["parameters", "parameters"]])
def test_checker_reports_other_than_one_parameters_cell(tags):
    nb = _notebook()
    nb.cells[1].metadata["tags"] = []
    for t in tags[1:]:
        nb.cells[2].metadata["tags"] = [t]
    if tags:
        nb.cells[1].metadata["tags"] = ["parameters"]
    assert parameters_problems(json.loads(nbformat.writes(nb))) != []
