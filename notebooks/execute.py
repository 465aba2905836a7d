"""Re-execute the notebooks in place, so that they are committed with their outputs:

    python notebooks/execute.py [notebooks/divergences.ipynb ...]

(``tests/test_notebooks.py`` re-executes them too and checks the figures against the committed
ones.)"""

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

if __name__ == "__main__":
    here = Path(__file__).parent
    for path in [Path(p) for p in sys.argv[1:]] or sorted(here.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()  # fmt: skip
        nbformat.write(notebook, path)
        print(f"executed {path}")
