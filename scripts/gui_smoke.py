#!/usr/bin/env python
"""GUI smoke test: the three modules in CellProfiler's own GUI (wxPython), under Xvfb.

Starts CellProfiler's GUI application in this process, loads each example pipeline
(example_pipelines/*.cppipe, or those named), and for every one of our modules in it:

* selects it in the pipeline list, so that CellProfiler builds its settings panel, and checks
  that every visible setting got its edit control;
* switches each of its choice and yes/no settings through all their values (the way an edit
  in the panel does), so that every variant of the panel is built, then restores them;
* opens the module's help (Help > Module help, as CellProfiler renders it) and each setting's
  *?* help, and checks that they hold text;
* saves a PNG screenshot of the window (``OUT/<pipeline>__<module_num>_<Module>.png``) and
  of its help window (``...__help.png``).

Then it runs three example pipelines in CellProfiler's test mode on one example image, our
modules' display windows on (their ``display()`` code in CellProfiler's real figure
windows), and saves those windows (``OUT/<pipeline>__testmode_<n>.png``).

It writes ``OUT/report.json`` and exits 0 when no exception came from our code (the plugins/
folder or the nucleaizer_backend package), no error dialog named one of our modules and every
check passed, 1 otherwise, 2 when the GUI cannot be started here. Exceptions and logged errors
of CellProfiler's own code are listed in the report but do not fail the run. Modal dialogs
never wait for a click: each one is recorded in the report and answered with Cancel.

CellProfiler 4.2 passes floats to wx.Point and wx.Size, which Python 3.10 and later refuse
(see fix_cellprofiler_layout): by default the run gives it Python 3.9's truncation back, as on
CellProfiler's own installers; --no-layout-fix shows CellProfiler as it is on this Python.

It runs on its own virtual X server (Xvfb; with --use-display, on $DISPLAY). wxPython comes
from the Python environment, or else from the system's Python 3 packages (Debian/Ubuntu
``python3-wxgtk4.0``, installed by scripts/setup_gui.sh) when those were built for this
Python version. CellProfiler's preferences are a fresh temporary set, not the user's.

    python scripts/gui_smoke.py --out gui_out
    python scripts/gui_smoke.py --out gui_out --pipeline example_pipelines/segment_and_measure.cppipe
    python scripts/gui_smoke.py --out gui_out --docs docs/gui   # + the settings panels for the docs
"""
import argparse
import glob
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "plugins"
OURS = ("SegmentNucleiStyleAdapted", "EstimateNucleusSize", "TrainStyleAdaptation")
# The pipeline whose instance of each module is drawn for the docs (--docs).
DOCS_PIPELINE = {
    "SegmentNucleiStyleAdapted": "segment_and_measure",
    "EstimateNucleusSize": "size_estimation_qc",
    "TrainStyleAdaptation": "style_adaptation_train",
}
# Where distributions put the packages of their system Python 3 (wxPython among them).
SYSTEM_SITE_DIRS = (
    "/usr/lib/python3/dist-packages",
    "/usr/lib/python{v}/site-packages",
    "/usr/lib64/python{v}/site-packages",
    "/usr/local/lib/python{v}/dist-packages",
)
# CellProfiler's test mode runs these pipelines on the first of these images (--test-mode).
TEST_MODE_PIPELINES = ("segment_and_measure", "measured_size_drives_segmentation",
                       "style_adaptation_train")
TEST_MODE_IMAGES = (REPO / "example_images" / "images" / "fluo_0e5edb072788.png",
                    REPO / "example_images" / "images" / "he_420f43d21dba.png")
SCREEN = "2200x1000x24"
FRAME_SIZE = (1360, 920)


# ---------------------------------------------------------------------------------------
# Is the GUI possible here? (also used by tests/gui/test_gui_smoke.py to skip)

def find_wx_site():
    """A folder to put on sys.path so that ``import wx`` works in this Python, or None when
    it already does. Raises RuntimeError (the reason) when no usable wxPython is found.

    $NUCLEAIZER_WX_SITE names a folder holding a ``wx`` package, else the system's Python 3
    package folders are searched. Only the ``wx`` package is exposed (a folder with a link to
    it), never the rest of the system's packages."""
    if importlib.util.find_spec("wx") is not None:
        return None
    version = "%d.%d" % sys.version_info[:2]
    candidates = [os.environ["NUCLEAIZER_WX_SITE"]] if os.environ.get("NUCLEAIZER_WX_SITE") else []
    candidates += [d.format(v=version) for d in SYSTEM_SITE_DIRS]
    found_other = []
    for site in candidates:
        pkg = Path(site) / "wx"
        if not (pkg / "__init__.py").is_file():
            continue
        if not any((pkg / ("_core" + s)).is_file() for s in importlib.machinery.EXTENSION_SUFFIXES):
            found_other.append(str(pkg))
            continue
        link_dir = Path(tempfile.gettempdir()) / ("nucleaizer-wx-%s-py%s" % (os.getuid(), version))
        link_dir.mkdir(exist_ok=True)
        link = link_dir / "wx"
        if not (link.is_symlink() and os.readlink(link) == str(pkg)):
            tmp = link_dir / ("wx.%d" % os.getpid())
            if tmp.is_symlink():
                tmp.unlink()
            tmp.symlink_to(pkg, target_is_directory=True)
            os.replace(tmp, link)
        return str(link_dir)
    if found_other:
        raise RuntimeError("wxPython found (%s) but not built for Python %s"
                           % (", ".join(found_other), version))
    raise RuntimeError("wxPython is not installed (Debian/Ubuntu: bash scripts/setup_gui.sh, "
                       "i.e. apt-get install python3-wxgtk4.0 xvfb)")


def gui_unavailable_reason():
    """None when the GUI smoke test can run here, else why not."""
    try:
        find_wx_site()
    except RuntimeError as e:
        return str(e)
    if shutil.which("Xvfb") is None:
        return "Xvfb is not installed (Debian/Ubuntu: apt-get install xvfb)"
    return None


# ---------------------------------------------------------------------------------------
# Recording what goes wrong

def known_cellprofiler_error(frames, value):
    """CellProfiler 4.2's float-to-wx.Point/wx.Size TypeError (Python >= 3.10), raised in its
    own GUI code (the innermost frame is in cellprofiler/gui)."""
    if not frames or not isinstance(value, TypeError) or "float" not in str(value):
        return False
    if not any(name in str(value) for name in ("Point", "Size")):
        return False
    return os.sep + os.path.join("cellprofiler", "gui") + os.sep in frames[-1].filename


class GtkNoiseFilter:
    """Keeps GTK's repeated drawing warnings ("drawing failure for widget ... invalid matrix",
    printed by the C library on file descriptor 2 for CellProfiler's display windows) out of
    the output, counting them; everything else written there passes through."""

    NOISE = (b"Gtk-WARNING", b"Gtk-CRITICAL", b"GLib-GObject-CRITICAL")

    def __init__(self):
        import threading

        self.dropped = 0
        self.real = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.thread = threading.Thread(target=self.pump, args=(read_end,), daemon=True)
        self.thread.start()

    def pump(self, read_end):
        pending = b""
        while True:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if any(n in line for n in self.NOISE):
                    self.dropped += 1
                elif line.strip():  # (GTK frames each warning with blank lines)
                    os.write(self.real, line + b"\n")

    def close(self):
        """Give file descriptor 2 back and let the rest through."""
        sys.stderr.flush()
        os.dup2(self.real, 2)
        self.thread.join(timeout=5)


class Recorder:
    def __init__(self):
        self.exceptions = []   # raised and not caught (event handlers, threads, our steps)
        self.logged = []       # logged at ERROR or above, or any logged traceback
        self.dialogs = []      # modal dialogs and message boxes (answered with Cancel)
        self.step = "start"
        self.our_dirs = [str((REPO / "nucleaizer_backend").resolve())]

    def add_plugins_dir(self, path):
        self.our_dirs.append(str(Path(path).resolve()))

    def add_backend_dir(self):
        try:
            import nucleaizer_backend

            self.our_dirs.append(str(Path(nucleaizer_backend.__file__).resolve().parent))
        except ImportError:
            pass

    def is_ours(self, tb, value=None):
        """True when the traceback runs through our code, unless it is CellProfiler's own
        float-to-wx.Point/Size error (see fix_cellprofiler_layout) raised in its GUI code."""
        frames = traceback.extract_tb(tb)
        if value is not None and known_cellprofiler_error(frames, value):
            return False
        for frame in frames:
            path = os.path.realpath(frame.filename)
            if any(path == d or path.startswith(d + os.sep) for d in self.our_dirs):
                return True
        return False

    def exception(self, etype, value, tb, where=None):
        self.exceptions.append({
            "step": where or self.step,
            "ours": self.is_ours(tb, value),
            "type": etype.__name__,
            "text": "".join(traceback.format_exception(etype, value, tb)),
        })
        sys.__stderr__.write("[gui_smoke] exception during %s:\n%s" % (
            where or self.step, self.exceptions[-1]["text"]))

    def log_record(self, record):
        tb = record.exc_info[2] if record.exc_info else None
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.logged.append({
            "step": self.step,
            "ours": bool(tb is not None and self.is_ours(tb, record.exc_info[1])),
            "level": record.levelname,
            "logger": record.name,
            "text": text,
        })

    def dialog(self, kind, message):
        self.dialogs.append({"step": self.step, "kind": kind, "message": str(message)[:2000]})
        sys.__stderr__.write("[gui_smoke] %s during %s (answered Cancel): %s\n"
                             % (kind, self.step, str(message)[:300]))


def install_hooks(rec):
    import logging
    import threading

    sys.excepthook = rec.exception
    threading.excepthook = lambda a: rec.exception(a.exc_type, a.exc_value, a.exc_traceback,
                                                   "thread %s" % (a.thread.name if a.thread else "?"))

    class Handler(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.ERROR or record.exc_info:
                rec.log_record(record)

    logging.getLogger().addHandler(Handler(level=logging.DEBUG))


def patch_modal_dialogs(rec):
    """No modal dialog may wait for a click that never comes: record it, answer Cancel."""
    import wx

    def message_box(message, caption="", *args, **kwargs):
        rec.dialog("MessageBox %r" % caption, message)
        return wx.CANCEL

    wx.MessageBox = message_box

    def make_show_modal(cls):
        def show_modal(self):
            text = ""
            for getter in ("GetMessage", "GetExtendedMessage", "GetTitle"):
                try:
                    text += " " + str(getattr(self, getter)())
                except Exception:
                    pass
            rec.dialog("%s.ShowModal" % type(self).__name__, text.strip())
            return wx.ID_CANCEL
        return show_modal

    for name in ("Dialog", "MessageDialog", "GenericMessageDialog", "FileDialog", "DirDialog",
                 "TextEntryDialog", "SingleChoiceDialog", "MultiChoiceDialog", "ColourDialog",
                 "RichMessageDialog"):
        cls = getattr(wx, name, None)
        if cls is not None:
            cls.ShowModal = make_show_modal(cls)


def fix_cellprofiler_layout():
    """Give CellProfiler 4.2's GUI back the float-to-integer truncation of Python 3.9.

    CellProfiler computes widget positions with true division and passes the floats to
    wx.Point and wx.Size. Python 3.8/3.9, which CellProfiler 4.2's own installers ship,
    truncate them to integers (with a deprecation warning); from Python 3.10 on wxPython
    refuses them with a TypeError. Two places matter here:

    * the settings panel's ModuleSizer (cellprofiler/gui/module_view/_module_sizer.py)
      catches the error and logs "Detected WX error" - and places no control at all: every
      label, edit control and help button of every module's settings panel (CellProfiler's
      own modules' as well as ours) is drawn on top of each other at the panel's corner;
    * the display window's tables (Figure.subplot_table -> align_widget, in
      cellprofiler/gui/figure/_figure.py) raise it: every module that shows a table in its
      display window (ours, IdentifyPrimaryObjects...) fails in test mode with "Error while
      processing", and each resize of such a window raises it again.

    Both modules get a ``wx`` whose Point and Size truncate floats as Python 3.9 did."""
    import wx
    from cellprofiler.gui.figure import _figure
    from cellprofiler.gui.module_view import _module_sizer

    class WxWithIntCoordinates:
        def __getattr__(self, name):
            return getattr(wx, name)

        @staticmethod
        def Point(*args):
            return wx.Point(*[int(a) if isinstance(a, float) else a for a in args])

        @staticmethod
        def Size(*args):
            return wx.Size(*[int(a) if isinstance(a, float) else a for a in args])

    _module_sizer.wx = WxWithIntCoordinates()
    _figure.wx = WxWithIntCoordinates()


# ---------------------------------------------------------------------------------------
# Screenshots

def _x_get_image(x, y, w, h):
    """(h, w, 3) uint8 RGB of the screen's rectangle, read from the X server (XGetImage).

    wx.ScreenDC can return a stale picture under GTK 3 (it kept showing the main window after a
    help window had opened over it), so the pixels come from the X server itself."""
    import ctypes
    import ctypes.util

    import numpy as np

    class XImage(ctypes.Structure):
        _fields_ = [("width", ctypes.c_int), ("height", ctypes.c_int),
                    ("xoffset", ctypes.c_int), ("format", ctypes.c_int),
                    ("data", ctypes.POINTER(ctypes.c_ubyte)), ("byte_order", ctypes.c_int),
                    ("bitmap_unit", ctypes.c_int), ("bitmap_bit_order", ctypes.c_int),
                    ("bitmap_pad", ctypes.c_int), ("depth", ctypes.c_int),
                    ("bytes_per_line", ctypes.c_int), ("bits_per_pixel", ctypes.c_int),
                    ("red_mask", ctypes.c_ulong), ("green_mask", ctypes.c_ulong),
                    ("blue_mask", ctypes.c_ulong)]

    xlib = ctypes.CDLL(ctypes.util.find_library("X11"))
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    xlib.XDefaultRootWindow.restype = ctypes.c_ulong
    xlib.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
    xlib.XGetImage.restype = ctypes.POINTER(XImage)
    xlib.XGetImage.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int,
                               ctypes.c_uint, ctypes.c_uint, ctypes.c_ulong, ctypes.c_int]
    xlib.XFree.argtypes = [ctypes.c_void_p]
    xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    display = xlib.XOpenDisplay(None)
    if not display:
        raise RuntimeError("cannot open the X display")
    try:
        all_planes, z_pixmap = (1 << 64) - 1, 2
        image = xlib.XGetImage(display, xlib.XDefaultRootWindow(display), x, y, w, h,
                               all_planes, z_pixmap)
        if not image:
            raise RuntimeError("XGetImage failed")
        im = image.contents
        if im.bits_per_pixel != 32 or im.byte_order != 0:
            raise RuntimeError("unexpected X image format (%d bpp)" % im.bits_per_pixel)
        line = im.bytes_per_line
        raw = np.ctypeslib.as_array(im.data, shape=(h * line,)).copy()
        xlib.XFree(ctypes.cast(im.data, ctypes.c_void_p))
        xlib.XFree(ctypes.cast(image, ctypes.c_void_p))
    finally:
        xlib.XCloseDisplay(display)
    bgrx = raw.reshape(h, line)[:, : 4 * w].reshape(h, w, 4)
    return np.ascontiguousarray(bgrx[:, :, 2::-1])


def trim(pixels, margin=8):
    """pixels cropped to what differs from the background (the bottom-left pixel's colour),
    with a margin of background all round."""
    import numpy as np

    background = pixels[-1, 0]
    differs = np.any(pixels != background, axis=-1)
    rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    if len(rows) == 0:
        return pixels
    content = pixels[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    out = np.empty((content.shape[0] + 2 * margin, content.shape[1] + 2 * margin, 3), np.uint8)
    out[:] = background
    out[margin:margin + content.shape[0], margin:margin + content.shape[1]] = content
    return out


def grab(window, path, rect=None, trimmed=False):
    """Save what the screen shows of window (or of rect, screen coordinates) as a PNG
    (``trimmed``: cropped to its content); returns simple pixel statistics of the capture."""
    import numpy as np
    import wx

    if rect is None:
        rect = window.GetScreenRect()
    pixels = _x_get_image(rect.x, rect.y, rect.width, rect.height)
    if trimmed:
        pixels = trim(pixels)
    h, w = pixels.shape[:2]
    wx.Image(w, h, pixels.tobytes()).SaveFile(str(path), wx.BITMAP_TYPE_PNG)
    return {"width": w, "height": h, "std": float(pixels.std()),
            "colours": int(len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)))}


# ---------------------------------------------------------------------------------------
# The walk through the GUI

class Smoke:
    def __init__(self, app, rec, pipelines, out, docs):
        self.app, self.rec, self.pipelines, self.out, self.docs = app, rec, pipelines, out, docs
        self.frame = app.frame
        self.results = []
        self.test_mode_results = []
        self.failures = []
        self.test_mode = []

    # helpers ----------------------------------------------------------------------------
    def fail(self, message):
        self.failures.append("%s: %s" % (self.rec.step, message))
        sys.__stderr__.write("[gui_smoke] FAIL %s: %s\n" % (self.rec.step, message))

    def module_view(self):
        return self.frame.get_module_view()

    def panel_check(self, module):
        """Every visible setting of module has its edit control in the module panel."""
        from cellprofiler.gui.utilities.module_view import edit_control_name, text_control_name

        mv = self.module_view()
        panel = mv.get_module_panel()
        if mv.get_current_module() is not module:
            self.fail("the module view shows %r, not the selected module"
                      % getattr(mv.get_current_module(), "module_name", None))
        visible = module.visible_settings()
        missing = []
        shown = 0
        for v in visible:
            control = panel.FindWindowByName(edit_control_name(v))
            text = panel.FindWindowByName(text_control_name(v))
            if control is None or text is None:
                missing.append(v.text)
            elif control.IsShown():
                shown += 1
        if missing:
            self.fail("no control for the settings %s" % missing)
        return {"visible_settings": len(visible), "controls_shown": shown,
                "missing": missing, "panel_children": len(panel.GetChildren())}

    def variants(self, module):
        """The choice and yes/no settings to switch through: (setting, values)."""
        from cellprofiler_core.setting import Binary
        from cellprofiler_core.setting.choice import Choice, CustomChoice

        result = []
        for v in module.settings():
            if isinstance(v, Binary):
                result.append((v, ["Yes", "No"]))
            elif isinstance(v, Choice) and not isinstance(v, CustomChoice):
                result.append((v, list(v.get_choices())))
        return result

    # the steps (a generator: each yield is a pause in ms for the event loop) -------------
    def run(self):
        frame = self.frame
        frame.SetPosition((0, 0))
        frame.SetSize(FRAME_SIZE)
        controller = frame.get_pipeline_controller()
        pipeline = frame.get_pipeline()
        yield 1500
        for index, path in enumerate(self.pipelines):
            stem = Path(path).stem
            self.rec.step = "load %s" % stem
            if index > 0:  # the first one was opened with the application
                controller.do_load_pipeline(str(path))
            yield 1200
            names = [m.module_name for m in pipeline.modules(False)]
            expected = re.findall(r"^(\w+):\[module_num:", Path(path).read_text(), re.M)
            if names != expected:
                self.fail("the pipeline holds %s, its file %s" % (names, expected))
            ours = [m for m in pipeline.modules(False) if m.module_name in OURS]
            if not ours:
                self.fail("no module of ours in %s (modules: %s)" % (stem, names))
            for module in ours:
                yield from self.guarded(self.walk_module(stem, module))
        for stem in self.test_mode:
            yield from self.guarded(self.run_test_mode(stem))
        self.rec.step = "done"

    def guarded(self, steps):
        """Run steps; an exception stops them (recorded, classified as ours or not) but not
        the walk."""
        try:
            yield from steps
        except Exception:
            self.rec.exception(*sys.exc_info())
            self.fail("stopped by an exception (see the exceptions)")

    def walk_module(self, stem, module):
        """Select module, check and draw its panel, every variant, its help."""
        import wx
        from cellprofiler.gui.utilities.module_view import edit_control_name, help_ctrl_name

        frame = self.frame
        tag = "%s__%02d_%s" % (stem, module.module_num, module.module_name)
        result = {"pipeline": stem, "module_num": module.module_num,
                  "module": module.module_name}
        self.results.append(result)

        self.rec.step = "%s: select" % tag
        frame.get_pipeline_list_view().select_one_module(module.module_num)
        yield 800
        result["panel"] = self.panel_check(module)

        self.rec.step = "%s: screenshot" % tag
        frame.Raise()
        frame.Update()
        yield 300
        shot = self.out / (tag + ".png")
        result["screenshot"] = shot.name
        result["screenshot_stats"] = grab(frame, shot)
        if self.docs is not None and DOCS_PIPELINE.get(module.module_name) == stem:
            mv = self.module_view()
            doc = self.docs / (module.module_name.lower() + ".png")
            result["docs_screenshot"] = grab(mv.get_module_panel(), doc, trimmed=True)

        # every variant of the panel: switch each choice through its values
        self.rec.step = "%s: settings variants" % tag
        mv = self.module_view()
        n_variants = 0
        for setting, values in self.variants(module):
            original = setting.value_text
            if setting not in module.visible_settings():
                continue
            for value in values + [original]:
                if setting not in module.visible_settings():
                    break
                control = mv.get_module_panel().FindWindowByName(edit_control_name(setting))
                self.rec.step = "%s: %s = %s" % (tag, setting.text, value)
                mv.on_value_change(setting, control, value, None, timeout=0)
                yield 200
                if setting.value_text != value:
                    self.fail("the setting did not take the value %r (has %r)"
                              % (value, setting.value_text))
                check = self.panel_check(module)
                n_variants += 1
                if check["missing"]:
                    break
        result["variants"] = n_variants
        self.rec.step = "%s: after variants" % tag
        result["panel_after_variants"] = self.panel_check(module)

        # the module's help, as Help > Module help shows it
        self.rec.step = "%s: module help" % tag
        before = set(wx.GetTopLevelWindows())
        frame.do_help_module(module.module_name, module.get_help())
        yield 500
        new = [w for w in wx.GetTopLevelWindows() if w not in before]
        help_frames = [w for w in new if w.GetTitle().startswith("Help for module")]
        help_text = ""
        for w in help_frames:
            for child in w.GetChildren():
                if hasattr(child, "ToText"):
                    help_text += child.ToText()
        result["help_chars"] = len(help_text)
        result["help_windows"] = [w.GetTitle() for w in new]
        if len(help_frames) != 1 or len(help_text) < 200:
            self.fail("module help: windows %s, %d characters"
                      % (result["help_windows"], len(help_text)))
        if help_frames:
            help_frames[0].SetPosition((FRAME_SIZE[0] + 20, 0))
            help_frames[0].SetSize((720, 760))
            help_frames[0].Raise()
            yield 800
            shot = tag + "__help.png"
            result["help_screenshot"] = dict(grab(help_frames[0], self.out / shot), file=shot)
        for w in new:
            w.Destroy()

        # each setting's "?" button
        self.rec.step = "%s: setting help" % tag
        panel = mv.get_module_panel()
        before = set(wx.GetTopLevelWindows())
        clicked = 0
        for v in module.visible_settings():
            button = panel.FindWindowByName(help_ctrl_name(v))
            if isinstance(button, wx.Button):
                event = wx.CommandEvent(wx.wxEVT_BUTTON, button.GetId())
                event.SetEventObject(button)
                button.GetEventHandler().ProcessEvent(event)
                clicked += 1
        yield 500
        dialogs = [w for w in wx.GetTopLevelWindows() if w not in before]
        texts = []
        for d in dialogs:
            for child in d.GetChildren():
                if hasattr(child, "ToText"):
                    texts.append(len(child.ToText()))
        result["setting_help"] = {"buttons": clicked, "windows": len(dialogs),
                                  "chars": texts}
        if clicked == 0 or len(dialogs) != clicked or min(texts or [0]) < 10:
            self.fail("setting help: %d buttons, %d windows, text lengths %s"
                      % (clicked, len(dialogs), texts))
        for d in dialogs:
            d.Destroy()
        yield 200

    def run_test_mode(self, stem):
        """CellProfiler's test mode on the first example image: run the pipeline's modules up
        to our last one, with our modules' display windows on (their display() code)."""
        import wx

        frame = self.frame
        controller = frame.get_pipeline_controller()
        pipeline = frame.get_pipeline()
        self.rec.step = "test mode %s: load" % stem
        controller.do_load_pipeline(str(REPO / "example_pipelines" / (stem + ".cppipe")))
        yield 1000
        controller.add_urls([p.as_uri() for p in TEST_MODE_IMAGES])
        yield 1500
        ours = [m for m in pipeline.modules(False) if m.module_name in OURS]
        for m in pipeline.modules(False):
            m.show_window = m in ours
        result = {"pipeline": stem, "ran": [], "figures": []}
        self.test_mode_results.append(result)
        before = set(wx.GetTopLevelWindows())
        self.rec.step = "test mode %s: start" % stem
        controller.on_debug_start(None)
        yield 1000
        if not pipeline.test_mode:
            self.fail("test mode did not start")
            return
        last = max(m.module_num for m in ours)
        while True:
            module = controller.current_debug_module()
            if module is None or module.module_num > last:
                break
            self.rec.step = "test mode %s: run %s #%d" % (stem, module.module_name, module.module_num)
            started = time.time()
            ok = controller.do_step(module)
            result["ran"].append({"module": module.module_name, "ok": bool(ok),
                                  "seconds": round(time.time() - started, 1)})
            yield 300
            if not ok:
                step = self.rec.step
                known = [e for e in self.rec.logged if e["step"] == step and not e["ours"]
                         and "Failed to run module" in e["text"]]
                if known:  # CellProfiler's own error (listed in the report), not ours
                    result["ran"][-1]["cellprofiler_error"] = known[-1]["text"].splitlines()[-1]
                else:
                    self.fail("%s failed in test mode" % module.module_name)
                break
            if not controller.next_debug_module():
                break
        yield 1500
        self.rec.step = "test mode %s: figures" % stem
        figures = [w for w in wx.GetTopLevelWindows() if w not in before and w.IsShown()]
        for i, fig in enumerate(figures):
            fig.SetPosition((FRAME_SIZE[0] + 20, 0))
            fig.Raise()
            yield 1000
            shot = "%s__testmode_%d.png" % (stem, i + 1)
            result["figures"].append(dict(grab(fig, self.out / shot), title=fig.GetTitle(), file=shot))
            fig.Destroy()
            yield 200
        expected = [m for m in ours if m.module_name != "TrainStyleAdaptation"]
        if len(result["figures"]) < len(expected):
            self.fail("%d display windows for %s" % (len(result["figures"]),
                                                      [m.module_name for m in expected]))
        controller.on_debug_stop(None)
        yield 500


def drive(app, smoke, on_done):
    """Run smoke.run()'s steps inside the wx main loop."""
    import wx

    steps = smoke.run()

    def advance():
        try:
            delay = next(steps)
        except StopIteration:
            on_done(None)
            return
        except Exception:
            on_done(traceback.format_exc())
            return
        wx.CallLater(max(1, int(delay)), advance)

    wx.CallLater(500, advance)


# ---------------------------------------------------------------------------------------

def start_xvfb():
    """Start a virtual X server; (process, display). -displayfd: it says its display number
    once it accepts clients. It is told to end with this process, however that ends."""
    import select

    def end_with_parent():
        try:
            import ctypes
            import signal

            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
        except Exception:
            pass

    read_end, write_end = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write_end), "-screen", "0", SCREEN,
                             "-nolisten", "tcp", "-noreset"],
                            pass_fds=(write_end,), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=end_with_parent)
    os.close(write_end)
    number = b""
    deadline = time.time() + 30
    while not number.endswith(b"\n") and time.time() < deadline:
        ready, _, _ = select.select([read_end], [], [], 1.0)
        if ready:
            chunk = os.read(read_end, 16)
            if not chunk:
                break
            number += chunk
    os.close(read_end)
    if not number.strip().isdigit():
        proc.kill()
        raise RuntimeError("Xvfb did not start")
    return proc, ":" + number.decode().strip()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the screenshots and report.json")
    parser.add_argument("--pipeline", action="append",
                        help="a pipeline to open (repeatable; default example_pipelines/*.cppipe)")
    parser.add_argument("--docs", help="also write each module's settings panel here "
                                       "(<module>.png, from the pipeline in DOCS_PIPELINE)")
    parser.add_argument("--test-mode", action="append", metavar="PIPELINE",
                        help="run this example pipeline (file name without .cppipe) in test "
                             "mode on one example image, our modules' display windows on "
                             "(repeatable; default: %s; 'none': skip)" % ", ".join(TEST_MODE_PIPELINES))
    parser.add_argument("--plugins", help="the plugins folder (default: this repository's)")
    parser.add_argument("--timeout", type=float, default=480,
                        help="give up (exit 1) after this many seconds")
    parser.add_argument("--no-layout-fix", action="store_true",
                        help="leave CellProfiler's settings-panel layout as it is under "
                             "Python >= 3.10 (all controls piled up; see fix_cellprofiler_layout)")
    parser.add_argument("--use-display", action="store_true",
                        help="draw on $DISPLAY instead of a virtual X server of its own")
    args = parser.parse_args(argv)

    xvfb = None
    if not args.use_display:
        if shutil.which("Xvfb") is None:
            print("gui_smoke: Xvfb is not installed (apt-get install xvfb)", file=sys.stderr)
            return 2
        try:
            xvfb, os.environ["DISPLAY"] = start_xvfb()
        except RuntimeError as e:
            print("gui_smoke: %s" % e, file=sys.stderr)
            return 2
    elif not os.environ.get("DISPLAY"):
        print("gui_smoke: --use-display but no $DISPLAY", file=sys.stderr)
        return 2

    try:
        site = find_wx_site()
    except RuntimeError as e:
        print("gui_smoke: %s" % e, file=sys.stderr)
        return 2
    if site is not None:
        sys.path.insert(0, site)
    sys.path.insert(0, str(REPO))  # this checkout's backend before an installed one

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    docs = Path(args.docs).resolve() if args.docs else None
    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
    pipelines = [Path(p).resolve() for p in (args.pipeline or
                 sorted(glob.glob(str(REPO / "example_pipelines" / "*.cppipe"))))]
    if not pipelines:
        print("gui_smoke: no pipelines", file=sys.stderr)
        return 2

    # CellProfiler keeps its preferences in the user's configuration folder: use a fresh one,
    # so that the run neither depends on nor changes the user's own.
    # The default input and output folders are shown in the panels ("Default Output Folder
    # (output)"): relative names in that folder keep this computer's paths out of the pictures.
    config_home = Path(tempfile.mkdtemp(prefix="gui-smoke-config-"))
    os.environ["HOME"] = str(config_home)
    os.environ["XDG_CONFIG_HOME"] = str(config_home / ".config")
    os.chdir(config_home)
    for name in ("input", "output"):
        os.mkdir(name)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    rec = Recorder()
    install_hooks(rec)
    noise = GtkNoiseFilter()
    # a crash or a hang prints the Python stacks (past the filter, which dies with the process)
    import faulthandler

    real_stderr = os.fdopen(os.dup(noise.real), "w")
    faulthandler.enable(file=real_stderr)
    faulthandler.dump_traceback_later(args.timeout, exit=True, file=real_stderr)
    started = time.time()

    import matplotlib

    matplotlib.use("WXAgg")
    import wx

    patch_modal_dialogs(rec)
    import cellprofiler_core.preferences as prefs

    prefs.set_awt_headless(True)
    plugins = Path(args.plugins).resolve() if args.plugins else PLUGINS
    rec.add_plugins_dir(plugins)
    prefs.set_plugin_directory(str(plugins), globally=False)
    prefs.set_telemetry_prompt(False)
    prefs.set_telemetry(False)
    prefs.set_startup_blurb(False)
    prefs.set_default_image_directory("input")
    prefs.set_default_output_directory("output")
    rec.add_backend_dir()

    import cellprofiler.gui.app

    # CellProfiler's App.OnExit stops Java, which waits for its validation thread: that can
    # hang when a validation is under way. This process ends with os._exit instead.
    cellprofiler.gui.app.App.OnExit = lambda self: 0
    rec.step = "start with %s" % pipelines[0].stem
    app = cellprofiler.gui.app.App(0, pipeline_path=str(pipelines[0]))
    if app.frame is None:
        print("gui_smoke: CellProfiler's window did not open", file=sys.stderr)
        return 2
    if not args.no_layout_fix:
        fix_cellprofiler_layout()
    smoke = Smoke(app, rec, pipelines, out, docs)
    smoke.test_mode = [t for t in (args.test_mode or TEST_MODE_PIPELINES) if t != "none"]
    outcome = {}

    def on_done(error):
        outcome["harness_error"] = error
        if error:
            sys.__stderr__.write("[gui_smoke] the walk stopped:\n%s" % error)
        wx.CallAfter(finish)

    def finish():
        for w in list(wx.GetTopLevelWindows()):
            if w is not app.frame:
                w.Destroy()
        app.ExitMainLoop()

    drive(app, smoke, on_done)
    app.MainLoop()

    ours = [e for e in rec.exceptions if e["ours"]] + [e for e in rec.logged if e["ours"]]
    report = {
        "python": sys.version.split()[0],
        "wx": wx.version(),
        "seconds": round(time.time() - started, 1),
        "pipelines": [p.stem for p in pipelines],
        "modules": smoke.results,
        "test_mode": smoke.test_mode_results,
        "failures": smoke.failures,
        "harness_error": outcome.get("harness_error"),
        "exceptions_ours": ours,
        "exceptions_other": [e for e in rec.exceptions if not e["ours"]],
        "logged_other": [e for e in rec.logged if not e["ours"]],
        "dialogs": rec.dialogs,
        "gtk_warnings": noise.dropped,
    }
    for d in rec.dialogs:  # an error message about one of our modules (but not CellProfiler's
        # own float-to-wx.Point error in its display window, see fix_cellprofiler_layout)
        known = "unexpected type 'float'" in d["message"] and re.search(r"\b(Point|Size)\(", d["message"])
        if any(name in d["message"] for name in OURS) and not known:
            smoke.failures.append("%s: dialog %s" % (d["step"], d["message"][:300]))
    (out / "report.json").write_text(json.dumps(report, indent=1))
    status = 0 if not (ours or smoke.failures or outcome.get("harness_error")) else 1
    print("gui_smoke: %d module panels in %d pipelines, %d failures, %d exceptions from our code, "
          "%d from CellProfiler (+%d logged), %d dialogs, %.0f s -> %s"
          % (len(smoke.results), len(pipelines), len(smoke.failures), len(ours),
             len(report["exceptions_other"]), len(report["logged_other"]), len(rec.dialogs),
             report["seconds"], out / "report.json"))
    if outcome.get("harness_error"):
        print(outcome["harness_error"], file=sys.stderr)
    sys.stdout.flush()
    noise.close()
    # CellProfiler's Java and worker threads do not always let the interpreter end: leave now.
    shutil.rmtree(config_home, ignore_errors=True)
    if xvfb is not None:
        xvfb.terminate()
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
