"""report.html: parsed, its sections present with the numbers of the JSON, and nothing it would fetch from anywhere."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner

from edgekit.cli.main import cli
from edgekit.report import compare_report, render_html

URL_ATTRS = {"src", "href", "xlink:href", "action", "data", "poster", "srcset", "formaction", "background"}


class Page(HTMLParser):
    """Tags, attributes, section ids and table cell texts of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str | None]] = []
        self.sections: list[str] = []
        self.cells: list[str] = []
        self.svgs = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v) for k, v in attrs]
        d = dict(attrs)
        if tag == "section":
            self.sections.append(d.get("id"))
        if tag == "svg":
            self.svgs += 1
        if tag == "td":
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(html: str) -> Page:
    p = Page()
    p.feed(html)
    p.close()
    return p


def assert_self_contained(html: str) -> None:
    page = parse(html)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags and "img" not in page.tags
    for tag, attr, value in page.attrs:
        if attr in URL_ATTRS and value:
            assert value.startswith(("#", "data:")), f"<{tag} {attr}={value!r}> points outside the page"
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.IGNORECASE), "an absolute URL is in the page"
    assert "@import" not in html and "@font-face" not in html
    assert not re.search(r"url\((?!#)", html), "CSS url() other than a same-page reference"


@pytest.fixture(scope="module")
def compare_html(mlp_set) -> tuple[dict, str]:
    rep = compare_report([mlp_set["fp32"], mlp_set["fp16"], mlp_set["int8"]], data=mlp_set["data"], latency_budget_s=0.3)
    return rep, render_html(rep)


def test_compare_page_has_its_sections_and_the_report_s_numbers(compare_html):
    rep, html = compare_html
    page = parse(html)
    assert page.sections == ["summary", "comparison", "plots", "layers"]
    assert page.svgs == 3  # Pareto, latency, per-layer
    for row in [rep["baseline"]] + rep["rows"]:
        assert row["file"] in page.cells
        assert f"{row['accuracy']:.2f}%" in page.cells
    assert "fc2" in page.cells and "(input x)" in page.cells  # the per-layer table names nodes for --exclude
    assert "edgekit compress --int8 --exclude NODE" in html
    assert html.count("<title>") == 1 and "edgekit report: mlp" in html


def test_page_is_self_contained(compare_html):
    assert_self_contained(compare_html[1])


def test_several_plots_share_the_page_without_id_clashes(compare_html):
    ids = re.findall(r'\bid="([^"]+)"', compare_html[1])
    assert len(ids) == len(set(ids))
    refs = set(re.findall(r'href="#([^"]+)"', compare_html[1]))
    assert refs <= set(ids)  # every <use href="#..."> resolves inside the page


def test_compress_page_shows_steps_gates_recipe_and_int8_search(digits, tmp_path):
    recipe = tmp_path / "gated.yaml"
    # objective size: an int8 .onnx whatever this CPU times (the page's per-layer section is about one)
    recipe.write_text("name: gated\nsteps:\n  - int8: {mode: static}\nexport: [onnx]\nobjective: size\n"
                      "gates:\n  max_accuracy_drop: 2.0\n  max_size: 1 MB\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["compress", "--recipe", str(recipe), "--data", str(digits["eval"]), "-o", str(out),
                                   str(digits["model"])])
    assert res.exit_code == 0, res.output
    html = (out / "report.html").read_text()
    rep = json.loads((out / "report.json").read_text())
    page = parse(html)
    # a "notes" section joins when the run had something to say (e.g. an artifact slower than fp32 on a busy CPU)
    assert [s for s in page.sections if s != "notes"] == ["summary", "comparison", "plots", "layers", "gates", "steps", "recipe"]
    assert "all gates passed" in html and "static-qdq-u8s8-perchannel" in html and "chosen" in html
    assert rep["steps"][0]["result"]["search"]["chosen"] in html
    assert "max_accuracy_drop: 2.0" in html  # the resolved recipe, ready to save as a file
    assert_self_contained(html)


def test_report_command_writes_the_page_and_importing_it_does_not_load_matplotlib(mlp_set, tmp_path):
    out = tmp_path / "r" / "report.html"
    res = CliRunner().invoke(cli, ["report", str(mlp_set["fp32"]), str(mlp_set["int8"]), "--data", str(mlp_set["data"]),
                                   "-o", str(out), "--latency-budget", "0.5"])
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.output
    assert_self_contained(out.read_text())
    # matplotlib loads when a page is rendered, not when the CLI or the report package is imported
    code = "import sys, edgekit.cli.main, edgekit.report, edgekit.cli.report; print('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
