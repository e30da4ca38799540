"""Checkpoints by Hugging Face Hub name: `hf:OWNER/REPO`, `hf:OWNER/REPO/FILE`, optionally `@REVISION`.

    evmamba.load_checkpoint(model, "hf:TerryPei/EfficientVMamba-Tiny")              # finds the checkpoint file
    evmamba.load_checkpoint(model, "hf:OWNER/REPO/weights/model.safetensors")         # names it
    evmamba.load_checkpoint(model, "hf:OWNER/REPO@0123abcd.../model.pth")            # pins a revision

Files are downloaded and cached by huggingface_hub (the cache is shared with every other library that
uses it). Every request is bounded: the first one (the repository's file list) doubles as a reachability
check with a `timeout` (HF_HUB_ETAG_TIMEOUT, 10 s by default), so a machine without a network fails in
seconds instead of entering huggingface_hub's retry loop. Without a network a file already in the cache is
used as is; otherwise a CheckpointError says the Hub could not be reached and asks for a local path.

HF_ENDPOINT, HF_HUB_CACHE and HF_HUB_OFFLINE are read at each call, so setting them in a running notebook
takes effect. A `pathlib.Path` is always a local file: only strings are read as Hub names.

Bounds: the listing request and the download's metadata request each time out after `timeout`; the
download itself stops when no data arrives for HF_HUB_DOWNLOAD_TIMEOUT seconds (10 by default). Only a
network that drops between the listing and the download can make huggingface_hub retry for longer.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError

log = logging.getLogger("evmamba")

PREFIX = "hf:"
# Checkpoint file kinds, most preferred first: safetensors loads without unpickling and maps lazily.
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# Files with a checkpoint suffix that hold training state rather than model weights.
_AUX = re.compile(r"(optimi[sz]er|scheduler|rng_state|training_args|trainer_state|scaler)")
_EMA = re.compile(r"(?<![a-z])ema(?![a-z])")


def _default_timeout() -> float:
    from huggingface_hub import constants
    return float(constants.HF_HUB_ETAG_TIMEOUT)


TIMEOUT: float | None = None  # seconds per Hub request; None: HF_HUB_ETAG_TIMEOUT (10 s unless set)


@dataclass(frozen=True)
class HubName:
    repo_id: str  # OWNER/REPO
    filename: str | None = None  # path inside the repository; None: find the checkpoint
    revision: str | None = None  # branch, tag or commit; None: the default branch

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{PREFIX}{self.repo_id}{rev}" + (f"/{self.filename}" if self.filename else "")


@dataclass
class Resolved:
    """A Hub checkpoint resolved to a local file."""

    path: Path  # the file in the huggingface_hub cache
    name: HubName  # with the filename filled in
    notes: list  # what was chosen and why, in sentences


def is_hub_name(source) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def parse_hub_name(source: str) -> HubName:
    """Split `hf:OWNER/REPO[@REVISION][/FILE]` (an `hf://` prefix is accepted too)."""
    if not is_hub_name(source):
        raise ValueError(f"not a Hub name: {source!r}; write hf:OWNER/REPO or hf:OWNER/REPO/FILE")
    rest = source[len(PREFIX):]
    rest = rest[2:] if rest.startswith("//") else rest
    parts = rest.strip("/").split("/")
    if len(parts) < 2 or not parts[0] or not parts[1] or any(not p for p in parts):
        raise ValueError(f"{source!r} is not a Hub name: write hf:OWNER/REPO (the checkpoint is found) or "
                         "hf:OWNER/REPO/FILE, e.g. hf:TerryPei/EfficientVMamba-Tiny")
    repo, at, revision = parts[1].partition("@")
    if not repo or (at and not revision):
        raise ValueError(f"{source!r}: write the revision after the repository name, hf:OWNER/REPO@REVISION/FILE")
    return HubName(f"{parts[0]}/{repo}", "/".join(parts[2:]) or None, revision or None)


def _candidates(files) -> list[str]:
    """Checkpoint files in order of preference: weights before training state (optimizer, scheduler...),
    plain before EMA, then by kind (CHECKPOINT_SUFFIXES order), then the shallowest path, then by name."""
    def rank(f: str):
        low = f.lower()
        kind = next(i for i, s in enumerate(CHECKPOINT_SUFFIXES) if low.endswith(s))
        return (bool(_AUX.search(low)), bool(_EMA.search(low)), kind, f.count("/"), f)

    return sorted((f for f in files if f.lower().endswith(CHECKPOINT_SUFFIXES)), key=rank)


def pick_checkpoint(files) -> tuple[str, str]:
    """The checkpoint file to use among a repository's files (deterministic), and a sentence saying why."""
    candidates = _candidates(files)
    if not candidates:
        shown = ", ".join(sorted(files)[:8]) or "none"
        raise CheckpointError(f"the repository has no checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)}); its files "
                              f"are: {shown}")
    best = candidates[0]
    if len(candidates) == 1:
        return best, f"using {best}, the repository's only checkpoint file"
    others = ", ".join(candidates[1:6]) + (", ..." if len(candidates) > 6 else "")
    why = "plain weights first, then .safetensors before .pth/.pt/.bin/.ckpt, then the shortest path"
    return best, (f"using {best} among {len(candidates)} checkpoint files ({why}); the others are {others}: "
                  "name one as hf:OWNER/REPO/FILE to use it")


# ---- talking to the Hub -------------------------------------------------------------------------
def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _offline() -> bool:
    from huggingface_hub import constants
    return constants.HF_HUB_OFFLINE or _truthy(os.environ.get("HF_HUB_OFFLINE"))


def _network_errors() -> tuple:
    """Exception classes meaning "the Hub could not be reached" for the installed huggingface_hub, whose
    HTTP client has changed between versions (requests, httpx, httpx2)."""
    from huggingface_hub.errors import OfflineModeIsEnabled
    errors = [OSError, TimeoutError, ConnectionError, OfflineModeIsEnabled]
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests", ("ConnectionError", "Timeout"))):
        try:
            m = importlib.import_module(module)
        except ImportError:
            continue
        errors += [getattr(m, n) for n in names if isinstance(getattr(m, n, None), type)]
    return tuple(errors)


def _why(error: BaseException) -> str:
    detail = (str(error).strip().splitlines() or [""])[0][:120]
    return f"{type(error).__name__}{': ' + detail if detail else ''}"


def _unreachable(name: HubName, error: BaseException | None) -> CheckpointError:
    why = f" ({_why(error)})" if error is not None else ""
    target = name.filename or "its checkpoint file"
    return CheckpointError(f"could not reach the Hugging Face Hub to fetch {name}{why} and the file is not in the "
                           f"local cache: download {target} from {_repo_url(name)} on a machine with a network and "
                           "pass the file's local path instead, as in evmamba.load_checkpoint(model, PATH)")


def _repo_url(name: HubName) -> str:
    from huggingface_hub import constants
    return f"{(os.environ.get('HF_ENDPOINT') or constants.ENDPOINT).rstrip('/')}/{name.repo_id}"


def _hub_error(name: HubName, error: BaseException) -> CheckpointError | None:
    """A CheckpointError for the Hub's answers that are not network failures; None for other errors."""
    from huggingface_hub import errors as hf
    if isinstance(error, hf.GatedRepoError):
        return CheckpointError(f"{name}: the repository is gated; accept its terms at {_repo_url(name)} "
                               f"and log in (hf auth login), or download the file and pass its path")
    if isinstance(error, hf.RepositoryNotFoundError):
        return CheckpointError(f"{name}: no repository {name.repo_id} on the Hugging Face Hub (or it is private: "
                               "log in with hf auth login); check the spelling, e.g. hf:TerryPei/EfficientVMamba-Tiny")
    if isinstance(error, hf.RevisionNotFoundError):
        return CheckpointError(f"{name}: the repository has no revision {name.revision!r}; name a branch, tag or "
                               "commit that exists, or leave the @REVISION out")
    if isinstance(error, hf.HfHubHTTPError) and not isinstance(error, hf.LocalEntryNotFoundError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if isinstance(error, hf.EntryNotFoundError) or status == 404:
            return CheckpointError(f"{name}: the repository has no file {name.filename!r}; name one of its "
                                   "checkpoint files, or write hf:OWNER/REPO to pick it automatically")
        if status is None or status >= 500 or status == 429:
            return None  # the Hub is down or refusing: treated like an unreachable Hub
        return CheckpointError(f"{name}: the Hub answered HTTP {status} ({str(error).splitlines()[0][:120]})")
    return None


def _list_files(name: HubName, endpoint: str | None, timeout: float) -> list[str]:
    from huggingface_hub import HfApi
    info = HfApi(endpoint=endpoint).model_info(name.repo_id, revision=name.revision, timeout=timeout)
    return [s.rfilename for s in (info.siblings or [])]


def _cached_files(name: HubName, cache_dir: str | None) -> list[str] | None:
    """The repository's files present in the local cache for the revision, or None if none is cached."""
    from huggingface_hub import snapshot_download
    try:
        folder = Path(snapshot_download(name.repo_id, revision=name.revision, cache_dir=cache_dir,
                                        local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here just means "not cached"
        return None
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _download(name: HubName, cache_dir: str | None, endpoint: str | None, timeout: float,
              local_files_only: bool, progress) -> str:
    from huggingface_hub import hf_hub_download
    extra = {"tqdm_class": _progress_class(progress)} if progress is not None else {}
    return hf_hub_download(name.repo_id, name.filename, revision=name.revision, cache_dir=cache_dir,
                           endpoint=endpoint, etag_timeout=timeout, local_files_only=local_files_only, **extra)


def _remote_size(name: HubName, endpoint: str | None, timeout: float) -> int | None:
    """The file's size in bytes as the Hub reports it (None when it says nothing), unless it is cached."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    if isinstance(try_to_load_from_cache(name.repo_id, name.filename, revision=name.revision), str):
        return None  # already here: nothing to download
    url = hf_hub_url(name.repo_id, name.filename, revision=name.revision, endpoint=endpoint)
    return get_hf_file_metadata(url, timeout=timeout).size


def _progress_class(progress):
    """A tqdm class that also reports (fraction done, message) to `progress`."""
    from huggingface_hub.utils import tqdm as hub_tqdm

    class Reporting(hub_tqdm):
        # Counts for itself: a disabled bar (no terminal) neither counts nor keeps its description.
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.done, self.size = kwargs.get("initial") or 0, kwargs.get("total")
            self.what = kwargs.get("desc") or "checkpoint"

        def update(self, n=1):
            out = super().update(n)
            self.done += n or 0
            if self.size:
                progress(min(1.0, self.done / self.size), f"downloading {self.what}")
            return out

    return Reporting


def resolve(source: str, *, cache_dir=None, timeout: float | None = None, progress=None,
            max_bytes: int | None = None) -> Resolved:
    """Download (or find in the cache) the checkpoint a Hub name points at; a CheckpointError says why not.

    cache_dir: the huggingface_hub cache (default: HF_HUB_CACHE, else huggingface_hub's default).
    timeout: seconds allowed for each Hub request (default: TIMEOUT, else HF_HUB_ETAG_TIMEOUT).
    progress: optional callable(fraction, message) called while the file downloads.
    max_bytes: refuse to download a file larger than this (its size asked of the Hub first)."""
    name = parse_hub_name(source)
    if importlib.util.find_spec("huggingface_hub") is None:
        raise CheckpointError(f"reading {name} needs the huggingface_hub package: pip install huggingface_hub, "
                              "or download the file and pass its path")
    cache_dir = str(cache_dir) if cache_dir is not None else os.environ.get("HF_HUB_CACHE") or None
    endpoint = os.environ.get("HF_ENDPOINT") or None
    timeout = float(timeout if timeout is not None else TIMEOUT if TIMEOUT is not None else _default_timeout())
    notes = []

    # One bounded request for the file list also tells whether the Hub is reachable at all.
    files, failure = None, None
    if _offline():
        failure = OSError("offline mode is on (HF_HUB_OFFLINE)")
    else:
        try:
            files = _list_files(name, endpoint, timeout)
        except Exception as e:  # noqa: BLE001 - sorted just below; anything else is re-raised
            hub_error = _hub_error(name, e)
            if hub_error is not None:
                raise hub_error from e
            if not isinstance(e, _network_errors()) and not _is_server_error(e):
                raise
            failure = e
    online = files is not None
    if not online:
        files = _cached_files(name, cache_dir)
        if name.filename is None and not _candidates(files or []):
            raise _unreachable(name, failure) from failure
        notes.append(f"the Hub could not be reached ({_why(failure)}); used the local cache")

    ambiguous = False
    if name.filename is None:
        ambiguous = len(_candidates(files)) > 1
        filename, why = pick_checkpoint(files)
        name = HubName(name.repo_id, filename, name.revision)
        notes.append(why)
    elif online and name.filename not in files:
        checkpoints = [f for f in files if f.lower().endswith(CHECKPOINT_SUFFIXES)]
        raise CheckpointError(f"{name}: the repository has no file {name.filename!r}; its checkpoint files are: "
                              f"{', '.join(checkpoints[:8]) or 'none'}")

    if online and max_bytes is not None:
        size = _remote_size(name, endpoint, timeout)
        if size is not None and size > max_bytes:
            raise CheckpointError(f"{name} is {size / 2**20:.0f} MB, more than this server downloads "
                                  f"({max_bytes / 2**20:.0f} MB)")
    try:
        path = _download(name, cache_dir, endpoint, timeout, not online, progress)
    except Exception as e:  # noqa: BLE001 - sorted just below
        hub_error = _hub_error(name, e)
        if hub_error is not None:
            raise hub_error from e
        if isinstance(e, _network_errors()) or _is_server_error(e):
            raise _unreachable(name, failure or e) from e
        raise
    # Choosing among several files is worth a warning; the usual single file is worth an info line.
    log.log(logging.WARNING if ambiguous else logging.INFO, "%s: %s", name, "; ".join(notes) or "ready")
    notes.append(f"{name} is the file {path}")
    return Resolved(Path(path), name, notes)


def _is_server_error(error: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError
    status = getattr(getattr(error, "response", None), "status_code", None)
    return isinstance(error, HfHubHTTPError) and (status is None or status >= 500 or status == 429)


__all__ = ["CHECKPOINT_SUFFIXES", "HubName", "PREFIX", "Resolved", "TIMEOUT", "is_hub_name", "parse_hub_name",
           "pick_checkpoint", "resolve"]
