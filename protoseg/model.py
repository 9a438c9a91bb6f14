"""U-Net (Ronneberger et al. 2015) for binary segmentation, and its checkpoint format.

Double 3x3 convolutions (padded, so the output has the input's size; optional batch norm)
at every level, 2x2 max-pooling down, transposed convolution or bilinear upsampling up,
skip connections by concatenation, one output logit channel (the foreground), or more for
a network with instance outputs (``model.instances``, :mod:`protoseg.instances`). Any input
size works: where an odd size makes the upsampled map one pixel short, it is padded to the
skip's size.

``model.pt`` holds a dict: ``format``, ``architecture`` (the constructor's arguments),
``state_dict`` (weights) and ``meta`` (training config, data set description, threshold,
instance post-processing, ...). A binary network is written as :data:`CHECKPOINT_FORMAT`;
one with instance outputs as :data:`INSTANCE_CHECKPOINT_FORMAT`, so that a protoseg from
before instance outputs refuses it ("not a protoseg U-Net checkpoint") instead of reading
its first channel as a binary model and dropping the instances.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from protoseg.errors import ConfigError, InputError
from protoseg.io import atomic_path

CHECKPOINT_FORMAT = "protoseg-unet-1"
INSTANCE_CHECKPOINT_FORMAT = "protoseg-unet-instances-1"
FORMATS = (CHECKPOINT_FORMAT, INSTANCE_CHECKPOINT_FORMAT)
UPSAMPLE_MODES = ("transpose", "bilinear")


def double_conv(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for channels_in in (in_channels, out_channels):
        # No conv bias under batch norm: the norm's shift replaces it.
        layers.append(nn.Conv2d(channels_in, out_channels, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Up(nn.Module):
    """Upsample by 2, concatenate the skip, double conv."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool, mode: str):
        super().__init__()
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, out_channels, 1),
            )
        self.conv = double_conv(2 * out_channels, out_channels, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net with ``depth`` down-sampling steps; level ``i`` has ``base_channels * 2**i`` channels."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        depth: int = 4,
        base_channels: int = 64,
        batch_norm: bool = True,
        upsample: str = "transpose",
    ):
        super().__init__()
        if depth < 1:
            raise ConfigError("model.depth", f"must be at least 1, got {depth}")
        if base_channels < 1:
            raise ConfigError("model.base_channels", f"must be at least 1, got {base_channels}")
        if upsample not in UPSAMPLE_MODES:
            raise ConfigError(
                "model.upsample",
                f"unknown mode '{upsample}'; use one of {', '.join(UPSAMPLE_MODES)}",
            )
        self.architecture = {
            "in_channels": int(in_channels),
            "out_channels": int(out_channels),
            "depth": int(depth),
            "base_channels": int(base_channels),
            "batch_norm": bool(batch_norm),
            "upsample": upsample,
        }
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList([double_conv(in_channels, widths[0], batch_norm)])
        self.down.extend(double_conv(widths[i], widths[i + 1], batch_norm) for i in range(depth))
        self.up = nn.ModuleList(
            Up(widths[i + 1], widths[i], batch_norm, upsample) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottom level is x itself
        for block in self.up:
            x = block(x, skips.pop())
        return self.head(x)


class ResizingUNet(nn.Module):
    """The study's ``resize`` geometry inside one network, for export: the input (any size)
    is resized to the training ``size``, the U-Net's probabilities (sigmoid of its logits)
    are resized back to the input's size. Both resizes are bilinear with half-pixel centres,
    as protoseg's own (OpenCV's linear) resizes of the image and of the probabilities, so a
    consumer that gives it a whole image gets what ``protoseg predict`` gets.

    Its ``unet`` holds the trained U-Net's weights (state-dict keys ``unet.*``)."""

    def __init__(self, size: list[int], **architecture):
        super().__init__()
        self.size = [int(size[0]), int(size[1])]
        self.unet = UNet(**architecture)
        self.architecture = {"size": list(self.size), **self.unet.architecture}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = int(x.shape[-2]), int(x.shape[-1])
        inside = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        probabilities = torch.sigmoid(self.unet(inside))
        return F.interpolate(
            probabilities, size=[height, width], mode="bilinear", align_corners=False
        )


def architecture_from_config(model_cfg: dict, in_channels: int) -> dict:
    """The U-Net's constructor arguments from config ``model`` and the data's channels."""
    from protoseg.config import complete_section
    from protoseg.instances import output_channels

    model_cfg = complete_section("model", model_cfg)
    return {
        "in_channels": int(in_channels),
        "out_channels": output_channels(model_cfg["instances"]),
        "depth": int(model_cfg["depth"]),
        "base_channels": int(model_cfg["base_channels"]),
        "batch_norm": bool(model_cfg["batch_norm"]),
        "upsample": model_cfg["upsample"],
    }


def build_model(model_cfg: dict, in_channels: int) -> UNet:
    return UNet(**architecture_from_config(model_cfg, in_channels))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fold_batch_norm(network: nn.Module) -> nn.Module:
    """For inference: a copy of ``network`` in eval mode in which every batch norm that
    follows a convolution in a ``Sequential`` is folded into that convolution's weights and
    bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``), as ONNX Runtime, OpenVINO and
    TensorRT fold them: the same function with its running statistics, one pass over memory
    fewer per layer (1.2x faster in bfloat16 on this CPU: docs/benchmarks/fold_batch_norm.md).
    ``network`` itself, untouched, when it has no such pair (or is not a torch module)."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def pairs(module: nn.Module):
        for sequence in module.modules():
            if isinstance(sequence, nn.Sequential):
                for index in range(len(sequence) - 1):
                    conv, norm = sequence[index], sequence[index + 1]
                    if (
                        isinstance(conv, nn.Conv2d)
                        and isinstance(norm, nn.BatchNorm2d)
                        and norm.track_running_stats
                    ):
                        yield sequence, index

    if not isinstance(network, nn.Module) or next(pairs(network), None) is None:
        return network
    folded = copy.deepcopy(network).eval()
    for sequence, index in list(pairs(folded)):
        sequence[index] = fuse_conv_bn_eval(sequence[index], sequence[index + 1])
        sequence[index + 1] = nn.Identity()
    return folded


def save_model(path: str | Path, model: UNet, meta: dict | None = None) -> None:
    """Write weights, architecture and ``meta`` (plain Python values) to ``path`` atomically."""
    instance_outputs = model.architecture["out_channels"] > 1
    payload = {
        "format": INSTANCE_CHECKPOINT_FORMAT if instance_outputs else CHECKPOINT_FORMAT,
        "architecture": dict(model.architecture),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta or {},
    }
    # Serialised in memory first: torch names the zip archive inside after the file it
    # writes, and the temporary file's random name would make identical models differ.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def read_checkpoint(path: str | Path) -> dict:
    """The raw contents of a ``model.pt``, checked to be protoseg's format."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InputError(
            path, f"not a readable PyTorch checkpoint ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") not in FORMATS:
        raise InputError(
            path,
            f"not a protoseg U-Net checkpoint (expected format {' or '.join(map(repr, FORMATS))})",
        )
    instance_outputs = int(payload.get("architecture", {}).get("out_channels", 1)) > 1
    if instance_outputs != (payload["format"] == INSTANCE_CHECKPOINT_FORMAT):
        raise InputError(
            path,
            f"format '{payload['format']}' does not fit a network with "
            f"{payload['architecture'].get('out_channels')} output channel(s); rewrite it by training",
        )
    return payload


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    expected_architecture: dict | None = None,
) -> tuple[UNet, dict]:
    """Load ``(model, meta)`` from ``path``, in eval mode on ``device``.

    With ``expected_architecture`` (e.g. from :func:`architecture_from_config`), a
    checkpoint of another architecture raises :class:`InputError` naming the file and the
    differing settings; weights that do not fit the stored architecture do too.
    """
    payload = read_checkpoint(path)
    stored = payload["architecture"]
    if expected_architecture is not None:
        differing = {
            key: (stored.get(key), value)
            for key, value in expected_architecture.items()
            if stored.get(key) != value
        }
        if differing:
            described = ", ".join(
                f"{key}: file has {have}, expected {want}"
                for key, (have, want) in differing.items()
            )
            raise InputError(path, f"checkpoint of another architecture ({described})")
    try:
        model = UNet(**stored)
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, ConfigError) as error:
        raise InputError(
            path,
            f"weights do not fit the U-Net architecture {stored}: {str(error).splitlines()[0]}",
        ) from error
    meta = payload.get("meta", {})
    # A network with instance outputs must record how they become cells (and in range).
    from protoseg.instances import model_instances

    model_instances(meta, int(stored.get("out_channels", 1)), path)
    return model.to(device).eval(), meta
