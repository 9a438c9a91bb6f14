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
