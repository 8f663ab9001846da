"""Sharing a teacher between machines through Optuna's artifact store: one tar per teacher."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import optuna
import torch

from kdsearch.errors import CacheError
from kdsearch.training.data import Dataset
from kdsearch.training.teacher import Teacher
from kdsearch.training.teacher_store import Corrupt, files, load, teachers_dir


def publish_teacher(teacher: Teacher, artifact_dir: Path, study: optuna.Study) -> str:
    """Upload the teacher's cache folder as one tar to the artifact store; its artifact id."""
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    try:
        Path(artifact_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            tar_path = Path(tmp) / f"teacher-{teacher.record.key}.tar"
            with tarfile.open(tar_path, "w") as tar:
                for name in (*files(teacher.record), "meta.json"):
                    tar.add(teacher.path / name, arcname=name)
            return upload_artifact(artifact_store=FileSystemArtifactStore(str(artifact_dir)),
                                   file_path=str(tar_path), study_or_trial=study,
                                   mimetype="application/x-tar")
    except OSError as e:
        raise CacheError(f"artifact store {artifact_dir}: cannot publish the teacher: "
                         f"{e.strerror or e}") from None


def fetch_teacher(artifact_id: str, artifact_dir: Path, cache_dir: Path, key: str,
                  data: Dataset, device: torch.device) -> Teacher:
    """Download a published teacher into the local cache and load it (checksums verified)."""
    from optuna.artifacts import FileSystemArtifactStore, download_artifact

    folder = teachers_dir(cache_dir) / key
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tar_path = Path(tmp) / "teacher.tar"
            download_artifact(artifact_store=FileSystemArtifactStore(str(artifact_dir)),
                              file_path=str(tar_path), artifact_id=artifact_id)
            staging = folder.with_name(f"{key}.fetch{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            with tarfile.open(tar_path) as tar:
                tar.extractall(staging, filter="data")
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staging, folder)
        teacher = load(folder, data, device)
    except Corrupt as e:
        raise CacheError(
            f"teacher {key} in artifact store {artifact_dir} is corrupt: {e}") from None
    except Exception as e:  # missing artifact, unreadable tar, full disk
        raise CacheError(f"cannot fetch teacher {key} from artifact store {artifact_dir}: "
                         f"{getattr(e, 'strerror', None) or e}") from None
    teacher.reused = True
    return teacher
