"""A run folder that cannot be clobbered: atomic writes, a manifest that claims it, a lock.

Every file the trainer writes goes through :func:`atomic_write` (a unique temporary name,
``fsync``, then ``os.replace``), so a crash or a second process never leaves half a file.
``smakit-run.json`` (the manifest) says which recipe, data and model the folder holds; a
command that asks for another model or data is refused before anything is written.
``.smakit.lock`` holds the pid of the process training into the folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path

MANIFEST = "smakit-run.json"
LOCK = ".smakit.lock"
FORMAT = 1


@contextmanager
def atomic_write(path, mode: str = "w"):
    """Write ``path`` through a uniquely named temporary file, fsynced, then renamed over it.

    Args:
        path (str or Path): the file to (re)place.
        mode (str): ``"w"`` for text or ``"wb"`` for bytes. Default: ``"w"``.

    Examples::

        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_write(p) as f:
        ...     _ = f.write("hello")
        >>> p.read_text(), sorted(x.name for x in p.parent.iterdir())
        ('hello', ['a.txt'])
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:  # makes the rename itself durable; not possible on every OS / filesystem
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def json_safe(value):
    """``value`` with every non-finite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps(value, **kwargs) -> str:
    """Strict JSON (``null`` for NaN / inf)."""
    return json.dumps(json_safe(value), allow_nan=False, default=str, **kwargs)


def config_hash(tables: dict) -> str:
    """Short sha256 of the ``data`` and ``model`` tables: what makes two runs the same run."""
    text = json.dumps({k: tables[k] for k in ("data", "model")}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def out_path(out_dir) -> Path:
    """``out_dir`` as a Path; an empty string is refused (``Path("")`` is the current folder)."""
    if out_dir is None or not str(out_dir).strip():
        raise ValueError("--out must name a run folder, got an empty string")
    return Path(out_dir).expanduser()


def _differences(old: dict, new: dict, prefix: str) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{prefix}.{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
            for k in keys if old.get(k) != new.get(k)]


class RunDir:
    """The folder of one training run: checks it, claims it and writes into it.

    Args:
        path (str or Path): the folder (created on :meth:`claim`).
        recipe (dict): the run's ``Recipe.as_dict()``.
    """

    def __init__(self, path, recipe: dict):
        self.path = out_path(path)
        self.recipe = recipe
        self._depth = 0

    @property
    def manifest(self) -> dict:
        return {"format": FORMAT, "recipe": self.recipe["name"], "preset": self.recipe.get("preset"),
                "config_hash": config_hash(self.recipe), "data": self.recipe["data"],
                "model": self.recipe["model"]}

    def read_manifest(self) -> dict | None:
        f = self.path / MANIFEST
        if not f.exists():
            return None
        try:
            return json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{f} is not valid JSON; is {self.path} a smakit run folder?") from None

    def check(self) -> None:
        """Refuse a folder that is not a smakit run, or a run of another model or data.

        Reads only; raises ``ValueError`` with what differs.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out {self.path} is a file, not a folder")
        if not self.path.exists():
            return
        found = self.read_manifest() or self._legacy_manifest()
        if found is None:
            if any(not p.name.startswith(LOCK) for p in self.path.iterdir()):
                raise ValueError(f"--out {self.path} is not a smakit run folder (it has files but no "
                                 f"{MANIFEST}); pass a new or empty folder")
            return
        if found.get("config_hash") == config_hash(self.recipe):
            return
        diffs = (_differences(found.get("data", {}), self.recipe["data"], "data")
                 + _differences(found.get("model", {}), self.recipe["model"], "model"))
        raise ValueError(f"--out {self.path} holds a run of recipe {found.get('recipe')!r} with other "
                         f"settings ({'; '.join(diffs) or 'config hash differs'}); a run folder holds one "
                         "model and data set: pass a new --out, or drop these overrides to resume it")

    def _legacy_manifest(self) -> dict | None:
        """A run written before manifests existed: ``checkpoint.pt`` beside the ``config.json``
        smakit wrote (a recipe dict); anything else is not taken for a run."""
        try:
            config = json.loads((self.path / "config.json").read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        keys = ("name", "data", "model", "train")
        if not (self.path / "checkpoint.pt").exists() or not isinstance(config, dict) or any(k not in config for k in keys):
            return None
        return {"recipe": config["name"], "config_hash": config_hash(config), "data": config["data"],
                "model": config["model"]}

    @contextmanager
    def claimed(self):
        """Hold the lock (re-entrant in one process), check again and write the manifest."""
        if self._depth == 0:
            self.check()
            self.path.mkdir(parents=True, exist_ok=True)
            self._acquire()
        self._depth += 1
        try:
            if self._depth == 1:
                self.check()  # under the lock: nobody changed it since
                with atomic_write(self.path / MANIFEST) as f:
                    f.write(dumps(self.manifest, indent=2))
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._release()

    # -- lock --------------------------------------------------------------------------
    def _acquire(self) -> None:
        lock = self.path / LOCK
        mine = {"pid": os.getpid(), "host": socket.gethostname()}
        tmp = self.path / f"{LOCK}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps(mine))
        try:
            for _ in range(2):
                try:
                    os.link(tmp, lock)  # atomic "create if absent", with the content already there
                    self._lock_owner = mine
                    return
                except FileExistsError:
                    if not self._remove_if_stale(lock):
                        break
            holder = self._read_lock(lock)
            raise ValueError(f"--out {self.path} is in use by another smakit train (pid {holder.get('pid')} on "
                             f"{holder.get('host')}); wait for it, or delete {lock} if that process is gone")
        finally:
            tmp.unlink()

    @staticmethod
    def _read_lock(lock: Path) -> dict:
        try:
            return json.loads(lock.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return {}

    def _remove_if_stale(self, lock: Path) -> bool:
        holder = self._read_lock(lock)
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False  # cannot tell from here whether it is alive
        if _pid_alive(holder["pid"]):
            return False
        lock.unlink(missing_ok=True)
        return True

    def _release(self) -> None:
        lock = self.path / LOCK
        if self._read_lock(lock).get("pid") == os.getpid():
            lock.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True
