"""The docs site (mkdocs.yml, docs/): it builds strictly, every Python example on it runs, and
a real browser renders it (pages, API reference, equations) without errors.

One strict build into a temporary folder serves every test here (about 2 s), so `make test`
checks what `make docs` builds without building twice.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The pages whose Python examples must run: every page of the site but design.md, whose
# ```python blocks are excerpts of the source (a Config class body), not examples.
EXAMPLE_PAGES = [ROOT / "docs" / "index.md", *sorted((ROOT / "docs" / "guide").rglob("*.md"))]


def _env() -> dict[str, str]:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", OMP_NUM_THREADS="1")
    # this checkout's sources, whatever bnlab the venv holds
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def test_docs_build_strictly_with_every_page(site: Path):
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html")} - {"404.html"}
    assert pages == {
        "index.html",
        "design.html",
        "guide/getting-started.html",
        "guide/math.html",
        "guide/pitfalls.html",
        "guide/results.html",
        "guide/performance.html",
        "guide/api/functional.html",
        "guide/api/reference.html",
        "guide/api/nn.html",
        "guide/api/doctor.html",
    }
    nn_page = (site / "guide/api/nn.html").read_text()
    import bnlab.nn

    missing = [n for n in bnlab.nn.__all__ if f'id="bnlab.nn.{n}"' not in nn_page]
    assert not missing, f"the API reference lacks {missing}"


def test_every_pitfalls_entry_is_a_doctor_rule_and_every_rule_has_one():
    codes = set(
        re.findall(r'"([a-z0-9]+(?:-[a-z0-9]+)+)",\n', (ROOT / "src/bnlab/doctor.py").read_text())
    )
    entries = set(re.findall(r"^### (\S+)$", (ROOT / "docs/guide/pitfalls.md").read_text(), re.M))
    assert entries == codes
    assert {
        "keras-momentum",
        "fp16-running-var-overflow",
        "bn-buffers-differ-across-ranks",
    } <= codes


def test_every_python_example_on_the_site_runs():
    """pytest-markdown-docs runs each ```python block of the pages as a test of its own."""
    blocks = sum(p.read_text().count("```python\n") for p in EXAMPLE_PAGES)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--markdown-docs"]
        + [str(p) for p in EXAMPLE_PAGES],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert re.search(rf"\b{blocks} passed\b", done.stdout), done.stdout[-2000:]
    assert blocks >= 20


def test_the_site_renders_in_a_browser(site: Path):
    """Headless Chromium opens the built site from disk: no script or console errors, no failed
    loads, the API reference is there, every equation is typeset by KaTeX (vendored under
    docs/assets/katex, so this holds offline) and the results page's figures load."""
    from browser import inspect_page

    home = inspect_page(site / "index.html", site, ("table", ".md-nav__link"))
    assert home["errors"] == []
    assert home["counts"]["table"] == 1 and home["counts"][".md-nav__link"] >= 10

    import bnlab.nn

    classes = [n for n in bnlab.nn.__all__ if isinstance(getattr(bnlab.nn, n), type)]
    api = inspect_page(site / "guide/api/nn.html", site / "guide/api", (".doc-class",))
    assert api["errors"] == []
    assert api["counts"][".doc-class"] == len(classes) >= 21  # Ghost Batch Renorm included

    math = inspect_page(
        site / "guide/math.html",
        site / "guide",
        (".arithmatex", ".arithmatex .katex", ".katex-error"),
    )
    assert math["errors"] == []
    assert math["counts"][".arithmatex"] >= 20
    assert math["counts"][".arithmatex .katex"] == math["counts"][".arithmatex"]
    assert math["counts"][".katex-error"] == 0

    results = inspect_page(site / "guide/results.html", site / "guide")
    assert results["errors"] == []
    figures = (ROOT / "docs" / "guide" / "results.md").read_text().count("![")
    assert len(results["images"]) == figures >= 4 and all(im["ok"] for im in results["images"])
