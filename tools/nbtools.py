"""What the notebook builder scripts share: the setup cell every notebook repeats, and writing."""
from pathlib import Path

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell

#: the same short setup cell in every notebook (STYLE.md)
SETUP = code("""from icm_lib.notebook import setup

S = setup(PROFILE, SEED, DATA_DIR, OUTPUT_DIR, DEVICE)
profile, device = S.profile, S.device
print(f"profile={profile.name}  device={device}  data={S.data_dir}  outputs={S.output_dir}")""")


def parameters(source: str):
    """The one cell tagged ``parameters`` (literals only)."""
    return code("# Parameters (papermill injects overrides after this cell)\n" + source,
                metadata={"tags": ["parameters"]})


def write(cells: list, name: str) -> Path:
    """Write ``notebooks/<name>.ipynb`` without outputs, with stable cell ids (clean diffs)."""
    for i, cell in enumerate(cells):
        cell["id"] = f"c{i:02d}"
    nb = nbf.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"}})
    out = Path(__file__).resolve().parent.parent / "notebooks" / f"{name}.ipynb"
    nbf.write(nb, out)
    print(out)
    return out
