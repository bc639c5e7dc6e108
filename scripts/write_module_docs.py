"""Write the module reference of docs/MODULES.md from the CellProfiler modules' own help.

The in-app help is the one source: each module's manual (its docstring, from
plugins/_<module>_help.py) and every setting's text and documentation (``help_settings()``),
as CellProfiler's *?* button shows them. This script loads the three plugins in real
CellProfiler (headless), converts that reStructuredText to Markdown and replaces the part of
docs/MODULES.md between the BEGIN/END markers; the rest of the file (installing, the command
line, example pipelines, cluster use) is written by hand.

    python scripts/write_module_docs.py           # rewrite docs/MODULES.md
    python scripts/write_module_docs.py --check   # exit status 1 when it is out of date

tests/plugins/test_module_docs.py fails when docs/MODULES.md differs from what this writes.
Run it with the repository root on PYTHONPATH when another checkout's backend is installed.
"""
import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "plugins"
MODULES_MD = REPO / "docs" / "MODULES.md"
MODULE_NAMES = ("SegmentNucleiStyleAdapted", "EstimateNucleusSize", "TrainStyleAdaptation")

BEGIN = ("<!-- BEGIN MODULE HELP: written by scripts/write_module_docs.py from the plugins' "
         "help (plugins/_<module>_help.py); edit the help, not this part -->")
END = "<!-- END MODULE HELP -->"

_TABLE_BORDER = re.compile(r"^=+( +=+)+\s*$")
_HEADING_RULE = re.compile(r"^([=^~\-\"'`#*+])\1{2,}\s*$")
_LINK = re.compile(r"`([^`<]+?)\s*<([^>]+)>`__?")
_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)
_SUBSTITUTION = re.compile(r"^\.\. \|[^|]+\| ")


# --------------------------------------------------------------------------- rst -> Markdown


def inline(text):
    """rst inline markup -> Markdown: links, ``literals``; *emphasis* and **strong** are the
    same in both."""
    text = _LINK.sub(lambda m: "[%s](%s)" % (m.group(1).strip(), m.group(2)), text)
    return _LITERAL.sub(lambda m: "`%s`" % m.group(1), text)


def _columns(border):
    """(start, end) character spans of the columns of a simple-table border line."""
    return [m.span() for m in re.finditer(r"=+", border)]


def _cells(line, spans):
    cells = []
    for i, (start, end) in enumerate(spans):
        stop = spans[i + 1][0] if i + 1 < len(spans) else len(line)
        cells.append(inline(line[start:stop].strip()))
    return cells


def table(lines):
    """An rst simple table (its lines, borders included) -> Markdown table lines."""
    spans = _columns(lines[0])
    borders = [i for i, line in enumerate(lines) if _TABLE_BORDER.match(line)]
    header = [line for line in lines[borders[0] + 1:borders[1]] if line.strip()]
    body = [line for line in lines[borders[1] + 1:borders[-1]] if line.strip()]
    if len(borders) < 3:  # a table without a header row
        header, body = [], header
    rows = [_cells(line, spans) for line in body]
    head = _cells(header[0], spans) if header else [""] * len(spans)
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(spans)]
    return out + ["| " + " | ".join(row) + " |" for row in rows]


def rst_to_markdown(text, level=3):
    """CellProfiler's help (reStructuredText) -> Markdown.

    Section titles become headings from ``level`` down (the document title, the first
    title, is dropped: the caller writes its own); simple tables become Markdown tables;
    lone ``|`` spacer lines and substitution definitions (``.. |image0| image:: ...``) are
    dropped; bullet items keep their text with two-space continuation lines."""
    # literals may run over a line break: converted on the whole text
    lines = _LITERAL.sub(lambda m: "`%s`" % m.group(1), text.strip("\n")).splitlines()
    out, i, seen_title = [], 0, False
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if stripped and _HEADING_RULE.match(nxt) and len(nxt.strip()) >= len(stripped) \
                and not _TABLE_BORDER.match(nxt):
            if nxt.strip()[0] == "=" and not seen_title:
                seen_title = True  # the module's name: the caller's heading
            else:
                out += ["#" * level + " " + inline(stripped), ""]
            i += 2
            continue
        if _TABLE_BORDER.match(line):
            block, borders = [], 0
            while i < len(lines) and (lines[i].strip() or borders < 3):
                block.append(lines[i])
                borders += bool(_TABLE_BORDER.match(lines[i]))
                i += 1
                if borders == 3:
                    break
            out += table(block)
            continue
        if stripped == "|":
            i += 1
            continue
        if _SUBSTITUTION.match(stripped):
            i += 1
            while i < len(lines) and lines[i].startswith((" ", "\t")) and lines[i].strip():
                i += 1
            continue
        bullet = re.match(r"^([-*+])\s+(.*)$", line)
        if bullet:
            out.append("- " + inline(bullet.group(2)))
        elif line.startswith("   ") and out and out[-1].startswith(("- ", "  ")) and stripped:
            out.append("  " + inline(stripped))
        else:
            out.append(inline(line.rstrip()))
        i += 1
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


# --------------------------------------------------------------------------- the modules


def load_modules():
    """{name: a fresh instance} of the three plugin modules, loaded by real CellProfiler."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import cellprofiler_core.preferences as prefs

    prefs.set_headless()
    prefs.set_plugin_directory(str(PLUGINS))
    from cellprofiler_core.utilities.core.modules import (fill_modules, get_module_names,
                                                           instantiate_module)

    if not all(name in get_module_names() for name in MODULE_NAMES):
        previous = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # "Multiple definitions of module ..."
        try:
            fill_modules()
        finally:
            logging.getLogger().setLevel(previous)
    missing = [name for name in MODULE_NAMES if name not in get_module_names()]
    if missing:
        raise RuntimeError("plugins not loaded by CellProfiler: %s" % ", ".join(missing))
    return {name: instantiate_module(name) for name in MODULE_NAMES}


def default_text(setting):
    """The setting's value as a new module has it, in words; "" when it has none to show."""
    from cellprofiler_core.setting import Binary
    from cellprofiler_core.setting.range import IntegerRange
    from cellprofiler_core.setting.subscriber import Subscriber
    from cellprofiler_core.setting.text import Directory

    if isinstance(setting, Subscriber):
        return ""
    if isinstance(setting, Binary):
        return "Yes" if setting.value else "No"
    if isinstance(setting, IntegerRange):
        return "%d to %d" % (setting.min, setting.max)
    if isinstance(setting, Directory):
        return setting.dir_choice
    value = setting.value
    if isinstance(value, float):
        return "%g" % value
    value = str(value)
    return "" if value in ("", "None") else value


def module_markdown(module):
    """One module's section of docs/MODULES.md: its manual, then every setting."""
    manual, settings = module.get_help_text()
    out = ["## %s" % module.module_name, "",
           "*Category in Add module:* %s." % module.category, "",
           rst_to_markdown(manual, level=3), "", "### Settings", ""]
    for setting in module.help_settings():
        out += ["#### %s" % inline(setting.text), ""]
        default = default_text(setting)
        if default:
            out += ["*Default:* `%s`" % default, ""]
        out += [rst_to_markdown(setting.doc or "", level=5), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def generated_part(modules=None):
    """The text between the markers (markers included)."""
    modules = modules or load_modules()
    body = "\n".join(module_markdown(modules[name]) for name in MODULE_NAMES)
    return "%s\n\n%s\n%s" % (BEGIN, body, END)


def updated(text, part):
    """``text`` (docs/MODULES.md) with its generated part replaced by ``part``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError("%s lacks the markers %r ... %r" % (MODULES_MD.name, BEGIN, END))
    return text[:start] + part + text[end + len(END):]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only check: exit status 1 when docs/MODULES.md is out of date")
    args = parser.parse_args(argv)
    old = MODULES_MD.read_text(encoding="utf-8")
    new = updated(old, generated_part())
    if args.check:
        if new != old:
            print("docs/MODULES.md is out of date: run python scripts/write_module_docs.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != old:
        MODULES_MD.write_text(new, encoding="utf-8")
        print("docs/MODULES.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
