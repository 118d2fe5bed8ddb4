"""Run configuration: YAML in, validated pydantic models out.

YAML is read with a ``yaml.SafeLoader`` only (no tags that build objects); nothing in a
configuration is ever executed. A key given twice in one mapping is an error naming the key and
both lines, since YAML itself would silently keep the last one. Unknown keys are errors that name the key, because a misspelt option
silently falling back to its default is the worst failure a batch job can have.

Population entries are validated in two steps: here, the keys every population
has (``segmenter``, ``device``, ...); then by the segmenter plugin's own
parameter model (see :mod:`popseg_dask.segmenters`), which knows its keys.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError, field_validator

from .errors import PopsegError
from .location import Location, is_url

CORRECTED_SUFFIX = "-corrected"  # labels/<population>-corrected: proofread frames (popseg_dask.corrections)

__all__ = [
    "Strict",
    "PopulationSpec",
    "StorageConfig",
    "RunConfig",
    "load_config",
    "parse_config",
    "read_yaml",
    "validation_message",
]

_DIM_NAMES = set("tczyx")


class Strict(BaseModel):
    """Base model: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class PopulationSpec(BaseModel):
    """Keys common to every population; the rest belongs to its segmenter."""

    model_config = ConfigDict(extra="allow")

    segmenter: str = Field(description="Segmenter plugin name, e.g. 'threshold'.")
    device: Literal["auto", "cpu", "gpu"] = "auto"
    tile: Literal["auto", "none"] | int | tuple[int, int] = Field(
        "auto", description="core tile size [ty, tx]; auto: from the memory budget; none: whole frames")
    halo: int | None = Field(None, ge=0, description="context pixels around a tile (default: the segmenter's)")
    tile_memory_mb: float = Field(1024, gt=0, description="memory a tile task may use, for tile: auto")
    cache: Literal["none", "model_outputs"] = Field(
        "none", description="model_outputs: keep the network's outputs in the output, so that a change of "
        "post-processing settings only reruns post-processing")

    @field_validator("tile")
    @classmethod
    def _tile(cls, v):
        if isinstance(v, int) and v < 1 or isinstance(v, tuple) and min(v) < 1:
            raise ValueError("tile sizes must be positive")
        return v

    def params(self) -> dict[str, Any]:
        """Segmenter-specific keys (everything but the common ones)."""
        return dict(self.model_extra or {})


def _fspath(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


# A local path (relative: to the config file's folder) or a URL (s3://, gs://, https://). Kept as
# text: pathlib would fold the '//' of a URL.
PathOrURL = Annotated[str, BeforeValidator(_fspath)]


class StorageConfig(Strict):
    """How to reach object stores when the environment does not say (``AWS_*`` variables and
    ``~/.aws`` files, ``GOOGLE_APPLICATION_CREDENTIALS`` are read by default). Never written into
    the run record, never printed."""

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    region: str | None = None
    profile: str | None = Field(None, description="a profile of ~/.aws/config")
    anon: bool = Field(False, description="unsigned requests (public buckets)")
    key: SecretStr | None = Field(None, description="access key id")
    secret: SecretStr | None = Field(None, description="secret access key")
    token: SecretStr | None = Field(None, description="session token (S3) or credentials file / token (GCS)")

    def options(self, scheme: str) -> dict[str, Any]:
        """fsspec storage options for a URL scheme."""
        reveal = {k: v.get_secret_value() for k, v in (("key", self.key), ("secret", self.secret),
                                                         ("token", self.token)) if v is not None}
        if scheme == "s3":
            out: dict[str, Any] = {"anon": self.anon, **reveal}
            if self.endpoint_url:
                out["endpoint_url"] = self.endpoint_url
            if self.profile:
                out["profile"] = self.profile
            if self.region:
                out["client_kwargs"] = {"region_name": self.region}
            return out
        if scheme in ("gs", "gcs"):
            return {"token": "anon"} if self.anon else ({"token": reveal["token"]} if "token" in reveal else {})
        return {}


class RunConfig(Strict):
    """A whole run: one movie (or stack) and its populations."""

    input: PathOrURL | list[PathOrURL] = Field(description="a movie, a list of movies, a Celldetective "
                                               "experiment folder or an HCS plate; a path or a URL")
    channels: list[str] | None = None
    dims: str | None = None
    pixel_size_um: float | None = Field(default=None, gt=0)
    output: PathOrURL | None = None
    storage: StorageConfig | None = Field(None, exclude=True)  # credentials: never in a record
    populations: dict[str, PopulationSpec] = Field(min_length=1)
    base_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("dims")
    @classmethod
    def _check_dims(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.lower()
        if not set(v) <= _DIM_NAMES or len(set(v)) != len(v) or not {"y", "x"} <= set(v):
            raise ValueError(
                f"dims {v!r} must be distinct letters among t, c, z, y, x and include y and x (e.g. 'tcyx')"
            )
        return v

    @field_validator("channels")
    @classmethod
    def _check_channels(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"channel names must be unique, got {v}")
        return v

    @field_validator("populations")
    @classmethod
    def _check_population_names(cls, v: dict[str, PopulationSpec]) -> dict[str, PopulationSpec]:
        for name in v:
            if not name or not all(ch.isalnum() or ch in "_-." for ch in name) or name.startswith("."):
                raise ValueError(
                    f"population name {name!r} must be letters, digits, '_', '-' or '.' (it becomes a folder name)"
                )
            if name.endswith(CORRECTED_SUFFIX):
                raise ValueError(f"population name {name!r} ends with {CORRECTED_SUFFIX!r}, which names the "
                                 "corrections of a population; choose another name")
        return v

    def resolve(self, path: Path | str) -> Path:
        """A local path from the config, relative to the config file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def location(self, value: "str | os.PathLike") -> Location:
        """A path or URL from the config, with the ``storage:`` options for its scheme."""
        scheme = str(value).split("://", 1)[0].lower() if is_url(os.fspath(value)) else "file"
        options = self.storage.options(scheme) if self.storage else None
        return Location.of(value, options, base_dir=self.base_dir)


def validation_message(err: ValidationError, where: str = "") -> str:
    """One line naming every bad key and what is wrong with it."""
    parts, seen = [], set()
    for e in err.errors():
        # a union (tile: auto | none | int | [ty, tx]) reports each alternative: name the key once
        keys = [str(x) for x in (where, *e["loc"]) if x != "" and not _is_union_branch(x)]
        loc = ".".join(keys)
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}' (check its spelling; see the config reference in README.md)")
        elif e["type"] == "missing":
            parts.append(f"missing required key '{loc}'")
        elif loc not in seen:
            msg = e["msg"].removeprefix("Value error, ")
            got = repr(e.get("input"))
            got = got if len(got) <= 60 else got[:57] + "..."  # a whole population's keys say nothing more
            parts.append(f"'{loc}': {msg} (got {got})")
        seen.add(loc)
    return "; ".join(parts)


def _is_union_branch(part) -> bool:
    s = str(part)
    return s in ("int", "float", "str", "bool", "none") or s.startswith(
        ("literal[", "tuple[", "list[", "dict[", "function-"))


def _yaml_inf(data: Any) -> Any:
    # YAML's '.inf' already parses to float('inf'); accept the strings users write too.
    if isinstance(data, dict):
        return {k: _yaml_inf(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_yaml_inf(v) for v in data]
    if isinstance(data, str) and data.strip().lower() in {"inf", "+inf", "infinity", "np.inf"}:
        return math.inf
    return data


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated within one mapping."""


def _mapping_without_duplicates(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False):
    # Only the keys written in this mapping count: keys merged in from an anchor (<<: *base) may
    # be overridden, that is what merging is for.
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            first = seen.get(key)
            seen.setdefault(key, line)
        except TypeError:  # an unhashable key: the constructor below reports it
            continue
        if first is not None:
            raise PopsegError(f"config {loader.name}: key {key!r} is given twice (lines {first} and {line}); "
                              "keep one of them")
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def read_yaml(text: str, name: str = "<config>") -> Any:
    """Parse YAML text with :class:`StrictLoader` (safe, no duplicate keys)."""
    loader = StrictLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_config(data: Any, base_dir: Path | str = ".") -> RunConfig:
    """Validate an already-parsed mapping into a :class:`RunConfig`.

    Parameters
    ----------
    data : mapping
        The configuration, as ``yaml.safe_load`` returns it.
    base_dir : path
        Folder that relative paths in the configuration are resolved against.

    Raises
    ------
    PopsegError
        If a key is unknown, missing or has a bad value.
    """
    if not isinstance(data, dict):
        raise PopsegError("config must be a mapping of keys (input, populations, ...); got " + type(data).__name__)
    try:
        return RunConfig(**_yaml_inf(data), base_dir=Path(base_dir))
    except ValidationError as err:
        raise PopsegError("config error: " + validation_message(err)) from None
    except TypeError as err:  # e.g. a non-string key at the top level
        raise PopsegError(f"config error: {err}") from None


def load_config(path: Path | str) -> RunConfig:
    """Read and validate a YAML configuration file.

    Parameters
    ----------
    path : path
        The YAML file. Relative paths inside it are relative to its folder.

    Returns
    -------
    RunConfig
    """
    path = Path(path)
    if not path.is_file():
        raise PopsegError(f"config file not found: {path} (give the path of a YAML file)")
    try:
        data = read_yaml(path.read_text(), str(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PopsegError(f"config {path} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    except UnicodeDecodeError:
        raise PopsegError(f"config {path} is not a text file (expected YAML)") from None
    return parse_config(data, base_dir=path.parent)
