"""The teacher's logits on each fixed view (views.py), computed once and cached apart from it."""

from __future__ import annotations

import copy
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from kdsearch.errors import CacheError
from kdsearch.training.data import Dataset
from kdsearch.training.evaluate import eval_batch
from kdsearch.training.teacher import VIEW_SPLITS, Teacher
from kdsearch.training.teacher_file import FileTeacher
from kdsearch.training.teacher_store import (
    Corrupt,
    load_views,
    lock,
    save_views,
    teachers_dir,
    views_key,
)
from kdsearch.training.views import (
    VIEW_BATCH,
    ViewSet,
    ViewSettings,
    make_views,
    view_logits,
    views_seed,
)


def attach_views(teacher: Teacher, settings: ViewSettings, data: Dataset, cache_dir: Path,
                 device: torch.device, log: Callable[[str], None] = print,
                 loaded: FileTeacher | None = None) -> Teacher:
    """Give `teacher` its fixed views of the train and validation splits with its logits on
    each, from the cache or computed now (the teacher runs once per view).

    A no-op without views (`settings.k == 0`). Cached in `views-<key>`, keyed by the
    teacher's key and the views; written atomically, checksummed like a teacher, so any worker
    with the teacher can rebuild them. A teacher file runs as `loaded` (the caller's one load
    of it), needed only when the views are not cached yet.
    """
    if not settings.k:
        return teacher
    vkey = views_key(teacher.record.key, settings)
    folder = teachers_dir(cache_dir) / f"views-{vkey}"
    try:
        with lock(folder.with_name(f"views-{vkey}.lock")):
            if folder.is_dir():
                try:
                    teacher.views = load_views(folder, data, settings.k)
                    return teacher
                except Corrupt as e:
                    log(f"warning: cached views {vkey} are corrupt ({e}); rebuilding them")
                    shutil.rmtree(folder, ignore_errors=True)
            from tqdm import tqdm

            forward = _view_forward(teacher, loaded, device)
            # A kdsearch teacher in the engine's evaluation batches; a teacher file in large
            # ones (ONNX Runtime's per-call cost).
            batch = VIEW_BATCH if teacher.model is None else eval_batch(teacher.model, device)
            start = time.perf_counter()
            views = {}
            total = settings.k * sum(len(data.split(split)) for split in VIEW_SPLITS)
            with tqdm(total=total, desc=f"teacher on {settings.k} views", unit="img",
                      file=sys.stderr, dynamic_ncols=True, unit_scale=True) as bar:
                for split in VIEW_SPLITS:
                    table = make_views(len(data.split(split)), settings.k, settings.hflip,
                                       settings.translate, views_seed(settings.seed, split))
                    views[split] = ViewSet(table, view_logits(forward, data.split(split).x, table,
                                                              batch, progress=bar.update))
            save_views(folder, views, {"key": vkey, "teacher": teacher.record.key,
                                       **settings.identity()})
            log(f"teacher logits on {settings.k} views of {sum(map(len, views.values())):,} "
                f"images cached at {folder} ({time.perf_counter() - start:.0f} s)")
            teacher.views = views
            return teacher
    except OSError as e:
        raise CacheError(f"teacher cache at {folder.parent}: {e.strerror or e}") from None


def _view_forward(teacher: Teacher, loaded: FileTeacher | None,
                  device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 batch -> logits: the trained model in eval mode, or the teacher file loaded."""
    if teacher.model is None:
        if loaded is None:
            raise ValueError("a teacher file's views need the file loaded (`loaded`)")
        return loaded
    # Weights in channels_last, as the engine trains CNNs: the convolutions pick the faster
    # layout (benchmarks/bench_view_logits.py). A copy: the teacher's own model is left as is.
    model = copy.deepcopy(teacher.model).eval().to(memory_format=torch.channels_last)
    return lambda xb: model(xb.to(device))
