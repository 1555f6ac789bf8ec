"""Write the first two cells of every notebook in this folder, and strip all outputs.

Every notebook opens with

1. an "Open in Colab" badge that points to the notebook's own path in the repository, and
2. an install cell that pip-installs the package from the repository when it is not importable
   (on Colab) and does nothing otherwise.

The repository URL lives in one place, ``[project.urls] Repository`` of ``pyproject.toml``; this
script reads it from there. Run it after changing the URL or adding a notebook::

    python notebooks/write_badges.py           # rewrite the notebooks in place
    python notebooks/write_badges.py --check   # exit status 1 if a notebook is not as written

Outputs and execution counts are removed, so notebooks are stored without outputs.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys
import tomllib

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
BADGE_ID = "colab-badge"
INSTALL_ID = "install"
BRANCH = "main"


def repository_url(pyproject: pathlib.Path = ROOT / "pyproject.toml") -> str:
  """``[project.urls] Repository`` of pyproject.toml, without a trailing slash or '.git'."""
  with open(pyproject, "rb") as f:
    url = tomllib.load(f)["project"]["urls"]["Repository"]
  url = url.rstrip("/")
  return url[:-len(".git")] if url.endswith(".git") else url


def github_path(url: str) -> str:
  """'https://github.com/owner/repo' -> 'owner/repo'."""
  prefix = "https://github.com/"
  if not url.startswith(prefix) or url[len(prefix):].count("/") != 1:
    raise ValueError(f"the Repository URL must look like {prefix}<owner>/<repo>, got {url!r}.")
  return url[len(prefix):]


def colab_url(url: str, name: str) -> str:
  """The Colab address of notebooks/<name>.ipynb on the main branch."""
  return (f"https://colab.research.google.com/github/{github_path(url)}/blob/{BRANCH}/"
          f"notebooks/{name}.ipynb")


def badge_cell(url: str, name: str) -> dict:
  source = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({colab_url(url, name)})")
  return {"cell_type": "markdown", "id": BADGE_ID, "metadata": {}, "source": source}


def install_cell(url: str) -> dict:
  source = ("# Installs bplambda_jax from its repository where it is not importable (Colab);\n"
            "# elsewhere this cell does nothing.\n"
            "try:\n"
            "    import bplambda_jax\n"
            "except ImportError:\n"
            f"    get_ipython().run_line_magic('pip', 'install -q git+{url}')")
  return {"cell_type": "code", "execution_count": None, "id": INSTALL_ID, "metadata": {},
          "outputs": [], "source": source}


def _text(source) -> str:
  return "".join(source) if isinstance(source, list) else source


def written(nb: dict, name: str, url: str) -> dict:
  """The notebook with its badge and install cells (replaced or inserted) and no outputs."""
  nb = copy.deepcopy(nb)
  cells = [c for c in nb["cells"] if c.get("id") not in (BADGE_ID, INSTALL_ID)]
  for c in cells:
    c["source"] = _text(c["source"])
    if c["cell_type"] == "code":
      c["outputs"] = []
      c["execution_count"] = None
  nb["cells"] = [badge_cell(url, name), install_cell(url)] + cells
  return nb


def dumps(nb: dict) -> str:
  return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def notebooks() -> list[pathlib.Path]:
  return sorted(HERE.glob("*.ipynb"))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--check", action="store_true",
                 help="only check; exit status 1 if a notebook differs from what would be written")
  args = p.parse_args(argv)
  url = repository_url()
  stale = []
  for path in notebooks():
    text = path.read_text(encoding="utf-8")
    new = dumps(written(json.loads(text), path.stem, url))
    if new != text:
      stale.append(path.name)
      if not args.check:
        path.write_text(new, encoding="utf-8")
  if args.check and stale:
    print("not as written (run python notebooks/write_badges.py): " + ", ".join(stale))
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
