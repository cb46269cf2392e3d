"""The window's set-up kept between starts: quitting forgot a model, a data file, its column choices and the
method's settings (only File › Save spec, done beforehand, kept them). The next plain start opens them again;
`--demo` (and `make run`) opens the demo."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from adapter_studio.engine.errors import UserError
from PySide6.QtCore import QSettings

if TYPE_CHECKING:
    from adapter_studio.engine.spec import RunSpec
    from adapter_studio.gui.state import StudioState

FILE = "last-session.yaml"
PAGE, RUN = "session/page", "session/run"  # QSettings: the page (its key) and run folder it was closed on


def session_file() -> Path:
    """Beside the window's settings (~/.config/AdapterStudio/)."""
    return Path(QSettings().fileName()).parent / FILE


def _absolute(path: str) -> str:
    """The data path as the app reads it, made absolute: read back from the config folder, a relative path would
    point into it (paths in a spec are the file's), and `$MY_DATA/d.jsonl` would have become `<cwd>/$MY_DATA/…`."""
    from adapter_studio.engine.data.files import local_path

    return str(local_path(path).resolve())


def save_session(state: StudioState, format_chosen: bool = True, page: str = "") -> None:
    """The set-up as the pages hold it, the page shown (its key) and the run chosen. Not the demo's, untouched,
    nor one without a model or data: the set-up kept before stays (its data on a drive not mounted opened the
    demo, and quitting that lost the set-up for good). A folder that cannot be written only loses the
    convenience. `format_chosen`: the Data page's format was picked, not detected (detected, it reopened as
    "chosen")."""
    file = session_file()
    try:
        spec = state.build_spec(settled=False) if state.demo is None else None
    except UserError:
        spec = None
    with contextlib.suppress(OSError):
        if spec is None:
            return
        data = spec.data
        paths = [_absolute(p) for p in data.path] if isinstance(data.path, list) else _absolute(data.path)
        data = data.model_copy(update={"path": paths, "eval_path": data.eval_path and _absolute(data.eval_path),
                                       "format": data.format if format_chosen else None})
        model = spec.model
        if Path(model.source).expanduser().exists():  # a folder or file, not a hub id or an embedded name
            model = model.model_copy(update={"source": _absolute(model.source)})
        spec.model_copy(update={"model": model, "data": data}).save(file)
        # Beside the set-up it goes with: a demo closed later keeps neither, as it keeps no set-up.
        run = state.current_run
        settings = QSettings()
        settings.setValue(PAGE, page)
        settings.setValue(RUN, str(Path(run).resolve()) if run else "")


def last_session() -> RunSpec | None:
    """The set-up the window had when it was last closed, where its model and data are still there; a UserError
    saying what is gone (the demo then opens instead). None where none was kept."""
    from adapter_studio.engine.data.files import data_files
    from adapter_studio.engine.models.loading import resolve_source
    from adapter_studio.engine.spec import load_spec_file

    file = session_file()
    if not file.is_file():
        return None
    spec = load_spec_file(file)
    resolve_source(spec.model.source)
    data_files(spec.data.path)
    return spec


def last_place() -> tuple[str, Path | None]:
    """The page (its key, "" if none was kept) and the run the window showed when its set-up was kept; the run
    only while its folder is still a run's."""
    from adapter_studio.engine.runs import is_run_folder

    settings = QSettings()
    page, run = settings.value(PAGE, ""), settings.value(RUN, "")
    page = page if isinstance(page, str) else ""  # a hand-edited file may hold anything
    run_dir = Path(run) if isinstance(run, str) and run and is_run_folder(run) else None
    return page, run_dir
