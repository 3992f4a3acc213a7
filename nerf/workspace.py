"""The run's folder: its automatic name, its log file and its record of options."""

from __future__ import annotations

import datetime
import logging
import logging.handlers
import sys
from pathlib import Path

from nerf.fileio import remove_stale_partials
from nerf.options import Options

log = logging.getLogger("realfusion")
LOG_FORMAT = "%(asctime)s %(message)s"


def default_workspace(opt: Options, now: datetime.datetime | None = None) -> Path:
    now = now or datetime.datetime.now()
    return Path("outputs") / opt.run_name / f"{now:%Y-%m-%d--%H-%M-%S}--seed-{opt.seed}"


def setup_logging() -> None:
    """Messages to stderr; until a workspace is opened they are also held back for its log file, so that what a
    run said while it was being assembled (the prompt, the resumed step) is in log.txt too."""
    pending = logging.handlers.MemoryHandler(capacity=1 << 16, flushLevel=logging.CRITICAL + 1)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stderr), pending], force=True)


def _log_to_file(log_file: Path) -> None:
    """Replace the held-back buffer by the log file, writing what it held first."""
    root = logging.getLogger()
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    for handler in list(root.handlers):
        if isinstance(handler, logging.handlers.MemoryHandler):
            handler.setTarget(file_handler)
            handler.flush()
            root.removeHandler(handler)
    root.addHandler(file_handler)


def open_workspace(workspace: Path) -> None:
    """Log into the workspace and clear partial files (the folder is created and locked by `nerf.build.open_run`,
    after the run was validated, so a refused run leaves it as it was). The options are recorded with each
    checkpoint (`Trainer.save`), so that options.json always describes the checkpoint beside it, also after a run
    that failed before saving."""
    _log_to_file(workspace / "log.txt")
    freed = remove_stale_partials(workspace)
    if freed:
        log.info("removed %.1f MiB of partial files left by interrupted writes", freed / 2**20)

