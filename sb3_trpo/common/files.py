"""Files: saves that never destroy the older file, and a look at what a model file holds before loading it.

Saving over a file in place (what ``open(path, "wb")`` does) truncates it first: an exception while
writing, a full disk or a killed process leaves a zip that cannot be loaded, and the older model is
gone. :func:`atomic_write` writes a temporary file beside the target, flushes and ``fsync``\\ s it, then
``os.replace``\\ s the target with it, a single atomic rename on POSIX and Windows: readers see the old
file or the complete new one, never a part. The algorithms' ``save()``, the ``VecNormalize`` statistics
of :func:`save_vec_normalize` and everything the zoo entry point saves go through it.

:func:`saved_algorithm` reads only the ``data`` entry of a model zip and says which algorithm saved it
(from the attributes it stores, which every algorithm names differently), so that ``load()`` can refuse
a file of another algorithm with a message instead of failing later inside ``learn()``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from typing import IO, Any, ClassVar, TypeVar

import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.save_util import json_to_data
from stable_baselines3.common.type_aliases import GymEnv
from stable_baselines3.common.vec_env import VecNormalize

PathLike = str | os.PathLike


def model_zip_path(path: PathLike) -> pathlib.Path:
    """The file ``BaseAlgorithm.save(path)`` writes: ``.zip`` added when ``path`` has no suffix, and
    ``<path>_2`` when ``path`` is a folder (with SB3's warning)."""
    target = pathlib.Path(path)
    if target.suffix == "":
        target = target.with_name(f"{target.name}.zip")
    if target.is_dir():
        warnings.warn(f"Path '{target}' is a folder. Will save instead to {target}_2", stacklevel=3)
        target = pathlib.Path(f"{target}_2")
    return target


def _new_file_mode(target: str) -> int:
    """The permissions ``open(target, "w")`` would give: the existing file's, else ``0o666`` less the umask."""
    try:
        return os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new content into; ``path`` is replaced only once it is complete.

    The content goes to a temporary file in ``path``'s folder (so the final rename stays on one file
    system), which is flushed and ``fsync``\\ ed, then renamed over ``path`` with ``os.replace``. If the
    block raises, the temporary file is removed and ``path`` is left as it was. Missing parent folders
    are created; a symbolic link is followed, so the file it points to is replaced, not the link.
    """
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, _new_file_mode(target))
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX); not possible, nor needed, on Windows."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------------------------------------- VecNormalize


def save_vec_normalize(vec_normalize: VecNormalize, save_path: PathLike) -> None:
    """``VecNormalize.save(save_path)``, atomic: the same pickle, readable by ``VecNormalize.load``."""
    with atomic_write(save_path) as file:
        pickle.dump(vec_normalize, file)


@contextlib.contextmanager
def atomic_vec_normalize_saves() -> Iterator[None]:
    """Within the block, ``VecNormalize.save`` is :func:`save_vec_normalize`.

    rl_zoo3 saves the statistics with ``vec_normalize.save(path)`` from several places (the end of
    training, its checkpoint callbacks, ``SaveVecNormalizeCallback``); the zoo entry point runs rl_zoo3
    inside this block so that each of those writes is atomic. The files are the same pickles.
    """
    original = VecNormalize.save
    VecNormalize.save = save_vec_normalize  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        VecNormalize.save = original  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------- what a zip holds

# Attributes that only one family of algorithms stores, in the order they are tested.
_FAMILIES: tuple[tuple[str, str], ...] = (
    ("kl_tolerance", "TRPOPenalty"),
    ("cg_max_steps", "TRPO"),
    ("clip_range", "PPO"),
    ("n_delta", "ARS"),
    ("learning_starts", "an off-policy algorithm (DQN, SAC, TD3, ...)"),
)


# The class that loads each kind of file, for the message of a refused load.
LOADED_BY = {
    "TRPO": "sb3_trpo.TRPO (or sb3_contrib.TRPO)",
    "TRPOPenalty": "sb3_trpo.TRPOPenalty",
    "RecurrentTRPO": "sb3_trpo.RecurrentTRPO",
    "RecurrentTRPOPenalty": "sb3_trpo.RecurrentTRPOPenalty",
    "PPO": "stable_baselines3.PPO",
    "RecurrentPPO": "sb3_contrib.RecurrentPPO",
}


def read_saved_data(path: PathLike | io.BufferedIOBase) -> dict[str, Any] | None:
    """The stored attributes of a model zip as JSON (objects left serialised), or None if it has none.

    A file object is read from where it stands and put back there. Nothing is unpickled, so this never
    fails on classes that cannot be imported; a file that is not a readable model gives None, and
    ``load()`` then reports it as SB3 does.
    """
    try:
        if isinstance(path, (str, os.PathLike)):
            target = pathlib.Path(path)
            if not target.exists():
                target = pathlib.Path(f"{path}.zip")  # where SB3's load() looks next
            with zipfile.ZipFile(target) as archive:
                return json.loads(archive.read("data"))
        position = path.tell()
        try:
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("data"))
        finally:
            path.seek(position)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _is_recurrent(policy_entry: Any) -> bool:
    """Whether the stored ``policy_class`` is an LSTM policy of sb3-contrib (or a subclass)."""
    from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy

    if not isinstance(policy_entry, dict):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class that cannot be unpickled: SB3's load() warns about it
        policy_class = json_to_data(json.dumps({"policy_class": policy_entry})).get("policy_class")
    if isinstance(policy_class, type):
        return issubclass(policy_class, RecurrentActorCriticPolicy)
    return "recurrent" in str(policy_entry.get("__module__", ""))


def saved_algorithm(data: dict[str, Any]) -> str:
    """Which algorithm saved the attributes ``data`` (see :func:`read_saved_data`).

    ``"TRPO"`` (sb3_trpo's or sb3_contrib's), ``"TRPOPenalty"``, ``"PPO"``, their ``"Recurrent..."``
    versions when the policy is an LSTM policy, or a description of another algorithm.
    """
    family = next((name for key, name in _FAMILIES if key in data), "an algorithm other than TRPO")
    if family in ("TRPO", "TRPOPenalty", "PPO") and _is_recurrent(data.get("policy_class")):
        return f"Recurrent{family}"
    return family


SelfAlgorithm = TypeVar("SelfAlgorithm", bound="CheckedFilesAlgorithm")


class CheckedFilesAlgorithm(BaseAlgorithm):
    """SB3's ``BaseAlgorithm`` with an atomic ``save()`` and a ``load()`` that refuses another algorithm's zip.

    A subclass names, in ``SAVED_ALGORITHM``, what :func:`saved_algorithm` calls the files it loads.
    """

    SAVED_ALGORITHM: ClassVar[str]

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
    ) -> None:
        """SB3's ``save()``, atomic: a path is replaced only once the new zip is complete.

        The zip is written to a temporary file beside the target, flushed and ``fsync``\\ ed, then renamed
        over it (:func:`~sb3_trpo.common.files.atomic_write`): an exception or a full disk while saving
        leaves the older file as it was. The path rules are SB3's (``.zip`` added when there is no
        suffix, missing folders created). A file object is written as SB3 writes it.
        """
        if isinstance(path, (str, os.PathLike)):
            with atomic_write(model_zip_path(path)) as file:
                super().save(file, exclude=exclude, include=include)  # type: ignore[arg-type]
        else:
            super().save(path, exclude=exclude, include=include)

    @classmethod
    def load(
        cls: type[SelfAlgorithm],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfAlgorithm:
        """SB3's ``load()``, which first checks that the file holds a model of this algorithm.

        A zip of another algorithm (an SB3 PPO model, a recurrent model into a feed-forward class or the
        other way round, a ``TRPOPenalty`` model into ``TRPO``) is refused with a ``ValueError`` naming
        what it holds, instead of loading into a model that fails later. ``TRPO`` loads the models that
        ``sb3_contrib.TRPO`` saves.
        """
        data = read_saved_data(path)
        if data is not None:
            found = saved_algorithm(data)
            if found != cls.SAVED_ALGORITHM:
                raise ValueError(
                    f"{path} holds a {found} model, which {cls.__name__}.load() cannot load "
                    f"(it loads {cls.SAVED_ALGORITHM} models); load it with {LOADED_BY.get(found, 'the class that saved it')}"
                )
        return super().load(
            path,
            env=env,
            device=device,
            custom_objects=custom_objects,
            print_system_info=print_system_info,
            force_reset=force_reset,
            **kwargs,
        )
