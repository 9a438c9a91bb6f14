"""Random training patches with guaranteed cells: the ``patches`` geometry's sampler.

Every item is a patch of ``patch_size`` cut from a training image (picked with probability
proportional to its area, so every pixel of the set is equally likely), brought to the patch
size and augmented by :func:`protoseg.transforms.augment_sample`. Within every batch of
``batch_size`` items, the last ``round(foreground_share * batch_size)`` are centred on a cell
pixel (nnU-Net's oversampling: a third of each batch), the others lie anywhere, so sparse
cells (0.1-2 % of the pixels in real sets) are seen in every step.

Why not torch_em's samplers: ``MinForegroundSampler`` rejects random patches until one holds
enough foreground; at 0.1 % foreground almost every draw is rejected, and it guarantees no
share per batch. Cell pixels stored with each sample (:mod:`protoseg.dataset`) make the
guaranteed draw one array lookup.

With ``instances`` (:mod:`protoseg.instances`) an item's target also holds the extra
outputs of that mode, made from the patch's labels after augmentation.

Each item's randomness comes from ``(seed, epoch, index)`` alone, so an epoch is the same
whatever the number of DataLoader workers, and a resumed run draws what the interrupted run
would have drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from protoseg.dataset import SplitData
from protoseg.errors import ConfigError
from protoseg.transforms import Augmentation, augment_sample, crop_size_for_scale


class PatchSampler:
    """A map-style data set of ``samples_per_epoch`` random patches of one split."""

    def __init__(
        self,
        data: SplitData,
        patch_size: Sequence[int],
        *,
        samples_per_epoch: int,
        batch_size: int,
        foreground_share: float,
        augmentation: Augmentation | None = None,
        seed: int = 0,
        instances: str = "none",
    ):
        if len(data) == 0:
            raise ConfigError("split", f"the {data.split} split of {data.dataset_dir} is empty")
        if not 0 <= foreground_share <= 1:
            raise ConfigError(
                "train.foreground_share", f"must lie in [0, 1], got {foreground_share}"
            )
        self.data = data
        self.patch = (int(patch_size[0]), int(patch_size[1]))
        self.samples_per_epoch = int(samples_per_epoch)
        self.batch_size = int(batch_size)
        self.forced_per_batch = int(round(foreground_share * self.batch_size))
        self.augmentation = augmentation or Augmentation()
        self.seed = int(seed)
        self.mode = instances
        self.epoch = 0
        areas = np.array(
            [
                h * w
                for h, w in zip(
                    data.manifest["stored_height"], data.manifest["stored_width"], strict=True
                )
            ],
            dtype=np.float64,
        )
        self.weights = areas / areas.sum()
        # Samples with cells: where the forced draws go.
        self.with_cells = np.flatnonzero(data.manifest["cells"].to_numpy() > 0)
        cell_areas = areas[self.with_cells]
        self.cell_weights = cell_areas / cell_areas.sum() if len(cell_areas) else cell_areas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def forced(self, index: int) -> bool:
        """Whether item ``index`` is centred on a cell (the batch's last items are)."""
        return index % self.batch_size >= self.batch_size - self.forced_per_batch

    def draw(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Item ``index`` as numpy arrays: image (C, h, w) float32, mask (h, w) uint8 and
        instance labels (h, w) uint32."""
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        height, width = crop_size_for_scale(self.patch, self.augmentation, rng)
        if self.forced(index) and len(self.with_cells):
            sample = int(rng.choice(self.with_cells, p=self.cell_weights))
            cells = self.data.foreground(sample)
            centre_y, centre_x = cells[int(rng.integers(len(cells)))]
            top, left = int(centre_y) - height // 2, int(centre_x) - width // 2
            stored_h, stored_w = self.data.shape(sample)
            # Anywhere the cell pixel stays inside the patch, not always at its centre.
            top += int(rng.integers(-(height // 4), height // 4 + 1))
            left += int(rng.integers(-(width // 4), width // 4 + 1))
        else:
            sample = int(rng.choice(len(self.weights), p=self.weights))
            stored_h, stored_w = self.data.shape(sample)
            top = int(rng.integers(0, max(stored_h - height, 0) + 1))
            left = int(rng.integers(0, max(stored_w - width, 0) + 1))
        image, mask, labels = self._window(sample, top, left, height, width, stored_h, stored_w)
        image, labels = augment_sample(image, labels, self.patch, self.augmentation, rng)
        return image, (labels > 0).astype(np.uint8), labels.astype(np.uint32)

    def _window(self, sample, top, left, height, width, stored_h, stored_w):
        """A window that may reach past the image: the outside is mirrored (images smaller
        than the patch are padded the same way)."""
        top = min(max(top, -(height // 2)), max(stored_h - height // 2, 0))
        left = min(max(left, -(width // 2)), max(stored_w - width // 2, 0))
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + height, stored_h), min(left + width, stored_w)
        image, mask, labels = self.data.region(sample, y0, x0, y1 - y0, x1 - x0)
        pad = ((y0 - top, top + height - y1), (x0 - left, left + width - x1))
        if any(any(p) for p in pad):
            image = _mirror(image, ((0, 0), *pad))
            mask = _mirror(mask, pad)
            labels = _mirror(labels, pad)
        return image, mask, labels

    def __getitem__(self, index: int):
        import torch

        image, mask, labels = self.draw(index)
        if self.mode == "none":
            return torch.from_numpy(image), torch.from_numpy(mask).unsqueeze(0).float()
        from protoseg.instances import with_targets

        return torch.from_numpy(image), torch.from_numpy(with_targets(mask, labels, self.mode))


def _mirror(array: np.ndarray, pad) -> np.ndarray:
    """Pad by mirroring (numpy repeats the mirror where the pad is wider than the array)."""
    return np.pad(array, pad, mode="symmetric")
