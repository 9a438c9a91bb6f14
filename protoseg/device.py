"""Choosing the torch device from a config value ("auto", "cuda", "mps" or "cpu")."""

from __future__ import annotations

from protoseg.errors import ConfigError

DEVICES = ("auto", "cuda", "mps", "cpu")


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

    if name not in DEVICES:
        raise ConfigError(key, f"unknown device '{name}'; use one of {', '.join(DEVICES)}")
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

    ``auto``: bf16 on a CPU that computes it natively, else fp32; fp16 on CUDA (bf16 where
    the GPU supports it is chosen explicitly); fp32 on MPS. A precision the device cannot
    do (fp16 on a CPU, bf16 on an old GPU or a CPU without native bf16) raises
    :class:`ConfigError` naming ``key``.
    """
    import torch

    if name not in PRECISIONS:
        raise ConfigError(key, f"unknown precision '{name}'; use one of {', '.join(PRECISIONS)}")
    kind = str(device).split(":")[0]
    if name == "auto":
        if kind == "cpu":
            return "bf16" if cpu_has_native_bf16() else "fp32"
        return "fp16" if kind == "cuda" else "fp32"
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
        raise ConfigError(key, "this GPU does not support bfloat16; use auto (fp16) or fp32")
    if kind == "mps":
        raise ConfigError(key, "mixed precision on MPS is not supported here; use fp32 or auto")
    return name


def autocast_dtype(precision: str):
    """The torch dtype of ``torch.autocast`` for a resolved precision (None for fp32)."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
