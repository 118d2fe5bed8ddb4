"""Where data lives: a local path or a URL, and the few operations popseg needs on either.

URL forms: ``s3://bucket/key``, ``gs://bucket/key`` (or ``gcs://``), ``https://host/path`` and
``http://`` (read-only), and plain local paths (``file://`` is accepted and made a path). Remote
locations go through fsspec (s3fs, gcsfs, fsspec's HTTP file system) and zarr's ``FsspecStore``;
local ones through the operating system and zarr's ``LocalStore``.

Why fsspec rather than obstore: one layer for every scheme popseg reads, including plain HTTPS;
it is what dask, xarray and ome-zarr-py use, so a user's ``storage_options`` and credentials
already work; and s3fs gives an atomic create-if-absent (``open(..., "xb")`` sends
``If-None-Match: *``), which the lease needs. Credentials are found the way the AWS and Google
tools find them (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, ``~/.aws/config``; ``GOOGLE_APPLICATION_CREDENTIALS``) or
from the config's ``storage:`` section; a :class:`Location` never shows its options.

Writes are whole objects: locally a temporary file renamed into place, remotely one PUT (atomic
on object stores); ``exclusive`` writes fail if the object exists (``O_EXCL`` locally, a
conditional PUT remotely).
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PopsegError

__all__ = ["Location", "is_url", "REMOTE_SCHEMES", "READ_ONLY_SCHEMES"]

REMOTE_SCHEMES = ("s3", "gs", "gcs", "http", "https", "memory")
READ_ONLY_SCHEMES = ("http", "https")
_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp"}


def is_url(value: str | os.PathLike) -> bool:
    """Whether ``value`` is a URL (``scheme://...``) rather than a local path."""
    return isinstance(value, str) and "://" in value


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


def _filesystem(scheme: str, options: str, asynchronous: bool = False) -> Any:
    """One fsspec file system per scheme, options and credential environment in each process (they
    hold connection pools, and making one loads the client's service description: about 0.1 s
    on S3); a changed ``AWS_*``/``GOOGLE_*`` environment gets a new one. ``asynchronous``: the
    kind zarr's ``FsspecStore`` drives from its own event loop."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("AWS_", "GOOGLE_", "GCS"))))
    return _cached_filesystem(scheme, options, env, asynchronous)


@functools.lru_cache(maxsize=32)
def _cached_filesystem(scheme: str, options: str, env: tuple, asynchronous: bool) -> Any:
    import fsspec

    try:
        # fsspec's own instance cache ignores the environment: the cache above decides instead.
        # No listings cache: a long-lived file system would answer from listings made before other
        # processes (workers, another run's lease) wrote, and ledger, lease and input identity
        # must see the store as it is now.
        opts = {"use_listings_cache": False, **json.loads(options or "{}")}
        return fsspec.filesystem(scheme, skip_instance_cache=True, asynchronous=asynchronous, **opts)
    except ImportError:
        raise PopsegError(f"reading {scheme}:// needs the package {_PACKAGES.get(scheme, scheme)}; "
                          f"pip install {_PACKAGES.get(scheme, scheme)}") from None


@dataclass(frozen=True)
class Location:
    """A local path or a URL, with the storage options to reach it (never shown).

    Build one with :meth:`of`; join with ``/``. Picklable: workers receive it in task arguments.
    """

    url: str
    options: str = field(default="", repr=False, compare=False)  # JSON: hashable, picklable, exact

    @classmethod
    def of(cls, value: "str | os.PathLike | Location", options: dict[str, Any] | None = None,
           base_dir: str | os.PathLike | None = None) -> "Location":
        """A location from a path or URL; relative paths are taken from ``base_dir``."""
        if isinstance(value, Location):
            return value
        value = os.fspath(value)
        if is_url(value):
            scheme = _scheme(value)
            if scheme == "file":
                value = value.split("://", 1)[1]
            elif scheme not in REMOTE_SCHEMES:
                raise PopsegError(f"{value}: unknown URL scheme {scheme!r}; use s3://, gs://, https:// or a local path")
            else:
                return cls(value.rstrip("/"), json.dumps(options, sort_keys=True) if options else "")
        p = Path(value).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        return cls(str(p.resolve()))

    # ------------------------------------------------------------------ naming
    @property
    def scheme(self) -> str:
        return _scheme(self.url) if is_url(self.url) else "file"

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def read_only(self) -> bool:
        return self.scheme in READ_ONLY_SCHEMES

    @property
    def path(self) -> str:
        """The path inside the file system: a local path, ``bucket/key``, or (HTTP) the URL itself."""
        if self.is_local or self.scheme in ("http", "https"):
            return self.url
        return self.url.split("://", 1)[1]

    @property
    def name(self) -> str:
        return posixpath.basename(self.url.rstrip("/")) if not self.is_local else Path(self.url).name

    @property
    def parent(self) -> "Location":
        if self.is_local:
            return Location(str(Path(self.url).parent))
        head, _ = self.url.rstrip("/").rsplit("/", 1)
        return Location(head, self.options)

    def __truediv__(self, name: str) -> "Location":
        if self.is_local:
            return Location(str(Path(self.url) / name))
        return Location(f"{self.url}/{name}", self.options)

    def __str__(self) -> str:
        return self.url

    def contains(self, other: "Location") -> bool:
        """Whether ``other`` is this location or lies inside it."""
        if self.is_local != other.is_local:
            return False
        if self.is_local:
            try:
                Path(other.url).resolve().relative_to(Path(self.url).resolve())
                return True
            except ValueError:
                return False
        return other.url == self.url or other.url.startswith(self.url + "/")

    # ------------------------------------------------------------------ file system
    @property
    def storage_options(self) -> dict[str, Any]:
        """The options for fsspec (and zarr's ``storage_options``); contains secrets: never print them."""
        return json.loads(self.options or "{}")

    @property
    def io_options(self) -> dict[str, Any] | None:
        """``storage_options`` for libraries that open the location themselves (pandas, dask):
        ``None`` locally; remotely the options with fsspec's instance cache bypassed, whose key
        ignores the credential environment (a process whose ``AWS_*`` variables changed would
        otherwise reuse a file system made with the old ones). Contains secrets: never print it."""
        if self.is_local:
            return None
        return {**self.storage_options, "skip_instance_cache": True}

    def fs(self):
        """The fsspec file system of a remote location."""
        return _filesystem(self.scheme, self.options)

    def exists(self) -> bool:
        if self.is_local:
            return os.path.exists(self.url)
        return bool(self.fs().exists(self.path))

    def read_bytes(self) -> bytes:
        if self.is_local:
            return Path(self.url).read_bytes()
        return self.fs().cat_file(self.path)

    def write_bytes(self, data: bytes, *, exclusive: bool = False) -> None:
        """Store ``data`` as a whole object; ``exclusive``: fail with FileExistsError if it exists."""
        self._writable()
        if self.is_local:
            _write_local(Path(self.url), data, exclusive)
        elif exclusive:
            with self.fs().open(self.path, "xb") as fh:
                fh.write(data)
        else:
            self.fs().pipe_file(self.path, data)

    def list(self) -> list[str]:
        """Names directly inside this location (empty when there is none)."""
        if self.is_local:
            try:
                return sorted(os.listdir(self.url))
            except (FileNotFoundError, NotADirectoryError):
                return []
        try:
            return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs().ls(self.path, detail=False))
        except FileNotFoundError:
            return []

    def delete(self) -> None:
        """Remove this object or tree (nothing if absent)."""
        self._writable()
        if self.is_local:
            if os.path.isdir(self.url):
                shutil.rmtree(self.url, ignore_errors=True)
            elif os.path.exists(self.url):
                os.remove(self.url)
            return
        try:
            self.fs().rm(self.path, recursive=True)
        except FileNotFoundError:
            pass

    def signature(self) -> tuple:
        """What changes when the object changes: size and modification time (locally) or ETag."""
        if self.is_local:
            st = os.stat(self.url)
            return (st.st_size, st.st_mtime_ns)
        info = self.fs().info(self.path)
        return (info.get("size"), info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified"))

    def modified(self) -> float:
        """Modification time (seconds since the epoch)."""
        if self.is_local:
            return os.stat(self.url).st_mtime
        info = self.fs().info(self.path)
        when = info.get("LastModified") or info.get("mtime") or info.get("updated")
        if hasattr(when, "timestamp"):
            return when.timestamp()
        try:
            return float(when)
        except (TypeError, ValueError):
            return 0.0

    def zarr_store(self, *, read_only: bool = False):
        """A zarr store rooted here."""
        from zarr.storage import FsspecStore, LocalStore

        if self.is_local:
            return LocalStore(self.url, read_only=read_only)
        # this process's file system for these options and credential environment (see _filesystem)
        fs = _filesystem(self.scheme, self.options, asynchronous=True)
        if not fs.async_impl:  # memory://: zarr drives file systems through asyncio
            from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

            fs = AsyncFileSystemWrapper(fs, asynchronous=True)
        return FsspecStore(fs, path=self.path, read_only=read_only or self.read_only)

    def _writable(self) -> None:
        if self.read_only:
            raise PopsegError(f"{self.url} is read-only ({self.scheme}://); write the output to a local path, "
                              "s3:// or gs://")


def _write_local(path: Path, data: bytes, exclusive: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if exclusive:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
