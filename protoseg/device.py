"""Choosing the torch device from a config value ("auto", "cuda", "cuda:N", "mps" or "cpu"),
the numeric precision it computes in, whether training compiles its network, and which
GPU a training job takes on a machine with several (:func:`claim_gpu`)."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

from protoseg.errors import ConfigError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "mps", "cpu")
GPU_INDEX = re.compile(r"^cuda:(\d+)$")


def _mps_available(torch) -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available() and mps.is_built())


def resolve_device(name: str = "auto", key: str = "device") -> str:
    """The torch device to use for the config value ``name`` (found under config ``key``).

    ``auto`` picks the first available of cuda, mps, cpu. Naming a device this machine
    does not have raises :class:`ConfigError` naming ``key``, rather than failing later
    inside torch with a less helpful message.
    """
    import torch  # here, so that importing protoseg never needs torch

    indexed = GPU_INDEX.match(str(name))
    if indexed:
        return _check_gpu_index(torch, int(indexed.group(1)), key)
    if name not in DEVICES:
        raise ConfigError(
            key, f"unknown device '{name}'; use one of {', '.join(DEVICES)} or cuda:N (a GPU index)"
        )
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if _mps_available(torch):
            return "mps"
        return "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            key, "'cuda' was asked for but torch sees no CUDA GPU here; set it to auto or cpu"
        )
    if name == "mps" and not _mps_available(torch):
        raise ConfigError(
            key,
            "'mps' was asked for but torch has no Apple MPS backend here; set it to auto or cpu",
        )
    return name


def _check_gpu_index(torch, index: int, key: str) -> str:
    if not torch.cuda.is_available():
        raise ConfigError(
            key,
            f"'cuda:{index}' was asked for but torch sees no CUDA GPU here; set it to auto or cpu",
        )
    count = torch.cuda.device_count()
    if index >= count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ConfigError(
            key,
            f"GPU index {index} does not exist: torch sees {count} GPU(s), cuda:0..cuda:{count - 1}"
            + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
            + "; use cuda (one GPU per job, chosen for it) or an index that exists",
        )
    return f"cuda:{index}"


# ---------------------------------------------------------------- one GPU per training job
# Open lock files of the GPUs this process holds: closed (released) when it exits.
_CLAIMED: dict[int, object] = {}


def gpu_lock_dir() -> Path:
    """Where training jobs on this machine mark the GPU each holds (machine-local)."""
    return Path(os.environ.get("PROTOSEG_GPU_LOCKS") or tempfile.gettempdir()) / (
        f"protoseg-gpus-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    )


def claim_gpu(device: str, count: int | None = None, lock_dir: str | Path | None = None) -> str:
    """The GPU a training job uses for the resolved ``device``.

    ``cuda`` on a machine where torch sees several GPUs (a workstation; Snakemake runs up
    to ``--resources gpu=N`` training jobs at once) takes the first GPU that no other
    protoseg job on this machine holds, marked by an exclusive lock on a file in
    :func:`gpu_lock_dir` that the operating system releases when the job ends, however it
    ends; ``cuda:0`` when all are taken (jobs then share). One visible GPU (a SLURM job
    given one, ``CUDA_VISIBLE_DEVICES`` set) or an explicit ``cuda:N``: that one.
    Anything else is returned as it is.
    """
    if device != "cuda":
        return device
    if count is None:
        import torch

        count = torch.cuda.device_count()
    if count <= 1:
        return "cuda:0"
    if _CLAIMED:
        return f"cuda:{next(iter(_CLAIMED))}"
    folder = Path(lock_dir) if lock_dir is not None else gpu_lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        handle = open(folder / f"gpu-{index}.lock", "a+")  # noqa: SIM115 - held until exit
        if _try_lock(handle):
            _CLAIMED[index] = handle
            log.info("GPU %d of %d taken for this job (lock %s)", index, count, handle.name)
            return f"cuda:{index}"
        handle.close()
    log.warning("all %d GPUs are held by other protoseg jobs; sharing cuda:0", count)
    return "cuda:0"


def release_gpus() -> None:
    """Give back the GPUs this process claimed (tests; a finished job just exits)."""
    for handle in _CLAIMED.values():
        handle.close()
    _CLAIMED.clear()


def _try_lock(handle) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: no claims, every job takes its first free guess
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- numeric precision
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX), read from
    /proc/cpuinfo; elsewhere (macOS, Windows, older CPUs) False, so no emulated slow path."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = set(handle.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(name: str, device: str, key: str = "train.precision") -> str:
    """The precision to compute in: ``fp32``, ``bf16`` or ``fp16``.

    ``auto``: bf16 on a CPU that computes it natively, else fp32; on CUDA bf16 where the
    GPU supports it (``torch.cuda.is_bf16_supported()``: Ampere and newer; no GradScaler
    needed), else fp16 (with a GradScaler in training); fp32 on MPS. Every reduced precision
    runs with channels_last (:func:`uses_channels_last`). A precision the device cannot do
    (fp16 on a CPU, bf16 on an old GPU or a CPU without native bf16) raises
    :class:`ConfigError` naming ``key``.
    """
    import torch

    if name not in PRECISIONS:
        raise ConfigError(key, f"unknown precision '{name}'; use one of {', '.join(PRECISIONS)}")
    kind = str(device).split(":")[0]
    if name == "auto":
        if kind == "cpu":
            return "bf16" if cpu_has_native_bf16() else "fp32"
        if kind == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if name == "fp32":
        return name
    if kind == "cpu":
        if name == "fp16":
            raise ConfigError(key, "fp16 is not computed natively on a CPU; use auto, bf16 or fp32")
        if not cpu_has_native_bf16():
            raise ConfigError(
                key,
                "this CPU has no native bfloat16 (AVX-512 BF16 or AMX); bf16 would be emulated "
                "and slow: use auto or fp32",
            )
        return name
    if kind == "cuda" and name == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            key, "this GPU does not support bfloat16; use auto (fp16 on this GPU), fp16 or fp32"
        )
    if kind == "mps":
        raise ConfigError(key, "mixed precision on MPS is not supported here; use fp32 or auto")
    return name


def autocast_dtype(precision: str):
    """The torch dtype of ``torch.autocast`` for a resolved precision (None for fp32)."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def uses_channels_last(precision: str) -> bool:
    """Whether model and inputs go channels_last: every reduced precision (the convolutions
    of bf16 and fp16 run fastest, on CPU and GPU alike, in that layout); not fp32, whose
    CPU numbers stay those of the contiguous layout."""
    return precision != "fp32"


# ---------------------------------------------------------------- torch.compile
def resolve_compile(setting, device: str, key: str = "train.compile") -> bool:
    """Whether training compiles its network: ``auto`` on CUDA only (on a CPU compiling
    costs minutes and gains little for these U-Nets), ``true``/``false`` as given.
    ``true`` where this torch cannot compile (no ``torch.compile``, or a Python it does not
    support) raises :class:`ConfigError` naming ``key``."""
    if not (setting is True or setting is False or setting == "auto"):
        raise ConfigError(key, f"unknown value {setting!r}; use auto, true or false")
    if setting == "auto":
        return str(device).split(":")[0] == "cuda" and compile_unavailable() is None
    if setting is True:
        reason = compile_unavailable()
        if reason is not None:
            raise ConfigError(key, f"true, but {reason}; set it to auto or false")
    return bool(setting)


def compile_unavailable() -> str | None:
    """Why this torch cannot compile, or None when it can."""
    import sys

    import torch

    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile (needs torch >= 2.0)"
    dynamo = getattr(torch, "_dynamo", None)
    is_supported = getattr(dynamo, "is_dynamo_supported", None)
    if is_supported is not None and not is_supported():
        return f"torch.compile does not support Python {sys.version.split()[0]} in torch {torch.__version__}"
    return None


def resolve_placement(
    device: str, precision: str, device_key: str, precision_key: str
) -> tuple[str, str]:
    """(device, precision) to run a network in, each checked and named by its key on error
    (:func:`resolve_device`, then :func:`resolve_precision` on that device)."""
    resolved = resolve_device(device, key=device_key)
    return resolved, resolve_precision(precision, resolved, key=precision_key)
