"""docs/MODULES.md and the modules' in-app help cannot drift apart: the module sections of
the page are written from the help by scripts/write_module_docs.py, and the page must be what
the script writes now. Also: the help is valid reStructuredText (CellProfiler renders it with
docutils), every setting has help, and the post-processing values the help quotes are the
shipped model's.
"""
import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

MODULE_NAMES = ("SegmentNucleiStyleAdapted", "EstimateNucleusSize", "TrainStyleAdaptation")


@pytest.fixture(scope="module")
def writer():
    """scripts/write_module_docs.py as a module."""
    spec = importlib.util.spec_from_file_location(
        "write_module_docs", REPO / "scripts" / "write_module_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def modules(cellprofiler):
    return {name: cellprofiler.instantiate_module(name) for name in MODULE_NAMES}


def test_modules_md_is_written_from_the_help(writer, modules):
    page = (REPO / "docs" / "MODULES.md").read_text(encoding="utf-8")
    expected = writer.updated(page, writer.generated_part(modules))
    assert page == expected, (
        "docs/MODULES.md differs from the modules' help: edit plugins/_<module>_help.py (not "
        "the page) and run python scripts/write_module_docs.py")
    for name in MODULE_NAMES:  # each module's manual and every setting made it into the page
        assert "\n## %s\n" % name in page
        for setting in modules[name].help_settings():
            assert "\n#### %s\n" % writer.inline(setting.text) in page


def test_the_check_option_fails_on_a_stale_page(writer, modules, tmp_path, monkeypatch):
    stale = tmp_path / "MODULES.md"
    page = (REPO / "docs" / "MODULES.md").read_text(encoding="utf-8")
    stale.write_text(page.replace("#### Nucleus size\n", "#### Nucleus sise\n"), "utf-8")
    monkeypatch.setattr(writer, "MODULES_MD", stale)
    monkeypatch.setattr(writer, "load_modules", lambda: modules)
    assert writer.main(["--check"]) == 1
    assert writer.main([]) == 0  # rewrites it ...
    assert stale.read_text(encoding="utf-8") == page  # ... to the real page
    assert writer.main(["--check"]) == 0


def test_help_covers_every_setting_once(modules):
    for name, module in modules.items():
        help_settings = module.help_settings()
        assert len(help_settings) == len(set(map(id, help_settings))), name
        assert set(map(id, help_settings)) == set(map(id, module.settings())), name
        for setting in help_settings:
            assert setting.doc and setting.doc.strip(), "%s: %r has no help" % (name, setting.text)


def test_help_is_valid_restructuredtext(modules):
    """CellProfiler renders the help with docutils: no warnings or errors in any of it."""
    from docutils.core import publish_parts

    for name, module in modules.items():
        manual, settings = module.get_help_text()
        for what, text in [("manual", manual)] + list(settings):
            try:
                publish_parts(text, writer_name="html",
                              settings_overrides={"halt_level": 2, "report_level": 5})
            except Exception as e:  # docutils' SystemMessage
                pytest.fail("%s, %s: %s" % (name, what, e))


def test_rst_to_markdown(writer):
    rst = """\
Title
=====

Intro with ``code`` and a `link <https://example.org>`__.

|

.. |image0| image:: memory:picture.png
   :width: 20

====== ====== ======
First  Second Third
====== ====== ======
YES    NO     YES
====== ====== ======

Section one
^^^^^^^^^^^

-  *Item:* text that goes
   on here.
"""
    assert writer.rst_to_markdown(rst) == """\
Intro with `code` and a [link](https://example.org).

| First | Second | Third |
|---|---|---|
| YES | NO | YES |

### Section one

- *Item:* text that goes
  on here."""


def test_the_help_quotes_the_shipped_models_values(modules):
    """The confidence and p1..p6 that the help gives for the shipped model are those of its
    model.json (the help once said 0.5 and "by up to a pixel" while the model had 0.8, p4 2)."""
    from nucleaizer_backend.models.io import stored_postprocess

    shipped = stored_postprocess(None).to_dict()
    m = modules["SegmentNucleiStyleAdapted"]
    quoted = re.search(r"DSB 2018 val images \(confidence ([\d.]+), p1 ([\d.]+), p2 ([\d.]+) "
                       r"px², p3 ([\d.]+), p4 ([\d.]+) px, p5 ([\d.]+) px, p6 ([\d.]+)\)",
                       " ".join(m.params_choice.doc.split()))
    assert quoted, m.params_choice.doc
    names = ("confidence", "p1", "p2", "p3", "p4", "p5", "p6")
    assert {k: float(v) for k, v in zip(names, quoted.groups())} == {k: shipped[k] for k in names}
    assert "The shipped model uses %g." % shipped["confidence"] in m.confidence.doc
    assert "%g and %g with the shipped model" % (shipped["p4"], shipped["p5"]) in " ".join(
        m.refinement.doc.split())
    # and the settings of a new module start from them
    assert {k: getattr(m, k).value for k in names} == {k: shipped[k] for k in names}
