"""The ``gpu`` data backend of ImageNet: workers only read file bytes; a batch is decoded, cropped and flipped on the device.

With ``data_backend: gpu`` the DataLoader workers do almost nothing per sample: they read the file's
bytes, read the image size from its header (no decode), and draw the sample's crop and flip from a
generator seeded by :func:`~dkl_train.specs.sample_seed` -- the same seed and the same sequence of
draws as torchvision's ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip()`` in the ``pil`` backend,
so a sample gets the same crop box and flip in both backends. On the training process,
:class:`BatchDecoder` then

1. decodes all JPEGs of the batch in one ``torchvision.io.decode_jpeg(list, device=...)`` call
   (nvJPEG on a GPU; libjpeg-turbo on a CPU, which is how the tests run it);
2. packs the decoded images, whatever their sizes, into one canvas (rows of images, each with a
   one-pixel replicated border so that sampling never reads a neighbour);
3. crops and resizes every image to 224x224 with one ``torchvision.ops.roi_align`` call over
   per-sample boxes (``aligned=True``; ``sampling_ratio=0`` takes ``ceil(box / 224)`` samples per output
   pixel and axis, so a downscale averages the pixels it covers: an antialiased resize);
4. flips the chosen samples with one batched index operation, rounds to ``uint8`` NCHW, and hands the
   batch to :class:`~dkl_train.data.DeviceNormalize`, as the pil backend's ``uint8`` batches.

Evaluation is the box of ``Resize(256)`` (shorter side) + ``CenterCrop(224)`` in the original image's
coordinates, through the same call.

ImageNet's odd files -- a PNG and CMYK JPEGs named ``.JPEG``, and any JPEG that is not 8-bit baseline or
progressive with 1 or 3 components -- are recognised by their header and decoded to RGB on the host, in
the worker (torchvision's decoder, PIL where it fails), then passed on as pixels. If the batched device
decode fails, each file of the batch is decoded alone, and one that fails again is decoded on the host.
Only a file no decoder can read stops the run, with an error naming it (``make data`` checks every file
beforehand).

Not bit-identical to the ``pil`` backend: the crop boxes and flips are identical, but the JPEG decoder
(nvJPEG vs libjpeg-turbo) and the resampling kernel differ -- PIL's antialiased bilinear filter vs an
average of bilinear samples over each output pixel's footprint. On smooth images decoded by the same
library the two agree to within one grey level (see the tests); on photos and with nvJPEG they differ
more, so a result is reproducible only within one backend. Choose ``gpu`` when the host's cores cannot
decode as fast as the GPU trains (ImageNet with few cores per GPU); ``pil`` otherwise, and to repeat a
``pil`` run exactly. torchvision marks its image decoders deprecated since 0.29 (TorchCodec replaces
them); they still work and are what this module uses.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .imagenet import PNG_SIGNATURE
from .specs import DatasetSpec, sample_seed

SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults, as in the pil backend
RATIO = (3.0 / 4.0, 4.0 / 3.0)
FLIP_P = 0.5
_LOG_RATIO = torch.log(torch.tensor(RATIO))  # float32, as torchvision computes it
# JPEG start-of-frame markers the device decoder takes: baseline, extended and progressive Huffman.
_DEVICE_SOF = {0xC0, 0xC1, 0xC2}
_OTHER_SOF = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class EncodedImages:
    """The images of a batch as they leave the workers, with what the device needs to crop them.

    ``data``: the files' bytes of the batch, concatenated into one ``uint8`` tensor (one shared-memory
    block between worker and training process, not one per sample); ``spans``: each sample's
    ``(start, end)`` in it, or ``None`` for a sample a worker decoded itself, whose ``[3, H, W]`` pixels are
    in ``decoded``. ``sizes``: ``(H, W)`` of each, from its header; ``boxes``: ``[N, 4]`` crop boxes (x1,
    y1, x2, y2) in image pixels; ``flips``: ``[N]`` bool; ``seeds``: each sample's seed; ``random``: whether
    the geometry was drawn (training) or is the evaluation box.

    Deliberately not a tensor, list or dict: Accelerate moves those to the device, but ``decode_jpeg``
    reads host memory and the boxes are used on the host, so this container passes through the
    prepared loader unchanged and costs no device round trip.
    """

    def __init__(
        self,
        data: torch.Tensor,
        spans: Sequence[tuple[int, int] | None],
        decoded: dict[int, torch.Tensor],
        sizes: Sequence[tuple[int, int]],
        boxes: torch.Tensor,
        flips: torch.Tensor,
        seeds: Sequence[int],
        random: bool,
    ) -> None:
        self.data = data
        self.spans = list(spans)
        self.decoded = decoded
        self.sizes = [(int(h), int(w)) for h, w in sizes]
        self.boxes = boxes
        self.flips = flips
        self.seeds = list(seeds)
        self.random = random

    @property
    def items(self) -> list[torch.Tensor]:
        """Each sample as 1-D ``uint8`` file bytes (a view into ``data``) or ``[3, H, W]`` pixels."""
        return [self.decoded[n] if span is None else self.data[span[0] : span[1]] for n, span in enumerate(self.spans)]

    def __len__(self) -> int:
        return len(self.spans)

    def __repr__(self) -> str:
        return f"EncodedImages({len(self)} images, {len(self.decoded)} decoded on the host)"


# ----------------------------------------------------------------------------------------------
# Geometry: header sizes, crop parameters, boxes


def header_info(data: bytes) -> tuple[int, int, bool] | None:
    """``(height, width, device_decodable)`` read from a JPEG's or PNG's header, or ``None`` if unknown.

    ``device_decodable`` is true for 8-bit JPEGs (baseline, extended or progressive) with 1 or 3
    components; CMYK (4 components), lossless or arithmetic-coded JPEGs and PNGs are decoded on the host.
    """
    if data.startswith(PNG_SIGNATURE) and len(data) >= 24:
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big"), False
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers carry no length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _DEVICE_SOF or marker in _OTHER_SOF:
            if pos + 10 > end:
                return None
            precision, components = data[pos + 4], data[pos + 9]
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            decodable = marker in _DEVICE_SOF and precision == 8 and components in (1, 3)
            return height, width, decodable and height > 0 and width > 0
        if marker == 0xDA:  # start of scan before any frame header: not a valid JPEG
            return None
        pos += 2 + length
    return None


def random_resized_crop_params(height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """``(top, left, crop_height, crop_width)`` drawn exactly as torchvision's ``RandomResizedCrop``.

    Same draws, in the same order, from ``generator`` (scale (0.08, 1), log-uniform ratio (3/4, 4/3),
    up to 10 attempts, then the centre-crop fallback), so the same seed gives the same box.
    """
    area = height * width
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(SCALE[0], SCALE[1], generator=generator).item()
        log_ratio = torch.empty(1).uniform_(float(_LOG_RATIO[0]), float(_LOG_RATIO[1]), generator=generator)
        aspect_ratio = torch.exp(log_ratio).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(RATIO):
        w, h = width, int(round(width / min(RATIO)))
    elif in_ratio > max(RATIO):
        w, h = int(round(height * max(RATIO))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def eval_box(height: int, width: int, resize: int, crop: int) -> tuple[float, float, float, float]:
    """``(x1, y1, x2, y2)`` in the image of what ``Resize(resize)`` (shorter side) + ``CenterCrop(crop)`` keep.

    The resized size and the crop's corner follow torchvision (long side truncated, corner rounded);
    the box maps them back through each axis's own scale.
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    sx, sy = width / new_w, height / new_h
    return left * sx, top * sy, (left + crop) * sx, (top + crop) * sy


def sample_geometry(
    height: int, width: int, seed: int, *, random: bool, spec: DatasetSpec, generator: torch.Generator
) -> tuple[tuple[float, float, float, float], bool]:
    """The crop box ``(x1, y1, x2, y2)`` and the flip of one sample: random (training) or the eval box."""
    if not random:
        return eval_box(height, width, int(spec.image_size * 256 / 224), spec.image_size), False
    generator.manual_seed(seed)
    top, left, h, w = random_resized_crop_params(height, width, generator)
    flip = bool(torch.rand(1, generator=generator).item() < FLIP_P)  # RandomHorizontalFlip's draw
    return (float(left), float(top), float(left + w), float(top + h)), flip


# ----------------------------------------------------------------------------------------------
# Workers: bytes, header, crop parameters


def host_decode(data: bytes) -> torch.Tensor:
    """An RGB ``[3, H, W]`` ``uint8`` image decoded on the host (PNG, CMYK and other files nvJPEG does not take)."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
        return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class EncodedDataset(Dataset):
    """An indexed ImageNet split whose samples are file bytes, label, seed, crop box and flip (no decode).

    Keys are ``(epoch, index)`` pairs, as :class:`~dkl_train.data.EpochSampler` yields them, or plain
    indices (epoch 0). ``random`` selects the training geometry (RandomResizedCrop + flip, seeded per
    sample as the pil backend); otherwise every sample gets the evaluation box. ``split`` is any object
    with ``len``, ``path(i)`` and a ``labels`` array (:class:`~dkl_train.imagenet.ImageNetSplit`).
    """

    def __init__(
        self,
        split: Any,
        spec: DatasetSpec,
        *,
        random: bool,
        seed: int = 0,
        batch_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if not is_file_backed(split):
            raise TypeError(
                f"the gpu data backend reads image files, but {type(split).__name__} has no file paths; "
                "it works with ImageNet indexed in place (make data DATASET=imagenet IMAGENET_DIR=...)"
            )
        self.data = split
        self.spec = spec
        self.random = random
        self.seed = seed
        # What the run's loaders apply on the device to each batch: a BatchDecoder (decode, crop, normalise).
        self.batch_transform = batch_transform if batch_transform is not None else BatchDecoder(spec)
        self._generator: torch.Generator | None = None  # made in the worker that uses it

    def select(self, indices: Sequence[int]) -> EncodedDataset:
        """The same dataset (geometry, seed, batch transform) on the rows ``indices`` of its split."""
        return EncodedDataset(
            self.data.select(indices),
            self.spec,
            random=self.random,
            seed=self.seed,
            batch_transform=self.batch_transform,
        )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_generator": None}  # a generator is per process

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list[dict[str, Any]]:
        if self._generator is None:
            self._generator = torch.Generator()
        return [self._sample(key) for key in keys]

    def _sample(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        index = int(index)
        path = self.data.path(index)
        with open(path, "rb") as file:
            data = file.read()
        info = header_info(data)
        image: bytes | torch.Tensor
        if info is not None and info[2]:
            height, width = info[0], info[1]
            image = data  # copied once, into the batch's single block (collate_encoded)
        else:  # PNG, CMYK, anything the device decoder does not take: RGB pixels from the host
            try:
                image = host_decode(data)
            except Exception as err:  # noqa: BLE001 - say which file, whatever the decoder raised
                raise RuntimeError(f"cannot decode {os.fspath(path)}: {type(err).__name__}: {err}") from err
            height, width = image.shape[1], image.shape[2]
        seed = sample_seed(self.seed, epoch, index)
        box, flip = sample_geometry(height, width, seed, random=self.random, spec=self.spec, generator=self._generator)
        label = int(self.data.labels[index])
        return {
            "label": label,
            "index": index,
            "seed": seed,
            "size": (height, width),
            "box": box,
            "flip": flip,
            "image": image,
            "random": self.random,
        }

    def collate_fn(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The DataLoader's ``collate_fn`` for this dataset (``make_loader`` picks it up): :func:`collate_encoded`."""
        return collate_encoded(samples)


def collate_encoded(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack labels and indices; put images and geometry in one :class:`EncodedImages` (host memory, any size).

    ``label`` comes first: Accelerate reads a batch's size from its first entry.
    """
    blobs = [s["image"] for s in samples if isinstance(s["image"], bytes)]
    data = torch.empty(sum(len(blob) for blob in blobs), dtype=torch.uint8)
    view = memoryview(data.numpy())
    spans: list[tuple[int, int] | None] = []
    decoded: dict[int, torch.Tensor] = {}
    start = 0
    for n, sample in enumerate(samples):
        image = sample["image"]
        if isinstance(image, bytes):
            view[start : start + len(image)] = image
            spans.append((start, start + len(image)))
            start += len(image)
        else:
            spans.append(None)
            decoded[n] = image
    encoded = EncodedImages(
        data,
        spans,
        decoded,
        [s["size"] for s in samples],
        torch.tensor([s["box"] for s in samples], dtype=torch.float64),
        torch.tensor([s["flip"] for s in samples], dtype=torch.bool),
        [s["seed"] for s in samples],
        bool(samples[0]["random"]) if samples else False,
    )
    return {
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        "encoded": encoded,
    }


# ----------------------------------------------------------------------------------------------
# The training process: batched decode, crop + resize, flip


def decode_batch(items: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Each item as an RGB ``[3, H, W]`` ``uint8`` image on ``device``: all JPEGs in one ``decode_jpeg`` call.

    Items that are already pixels (decoded by a worker) are only moved. If the batched call fails,
    each file is decoded alone, and one that fails again is decoded on the host.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[torch.Tensor | None] = [None] * len(items)
    encoded = [i for i, item in enumerate(items) if item.dim() == 1]
    for i, item in enumerate(items):
        if item.dim() == 3:
            out[i] = item.to(device, non_blocking=True)
    if encoded:
        with _decode_stream(device) as finish:
            try:
                decoded = decode_jpeg([items[i] for i in encoded], mode=ImageReadMode.RGB, device=device)
            except RuntimeError:
                decoded = []
                for i in encoded:
                    try:
                        decoded.append(decode_jpeg(items[i], mode=ImageReadMode.RGB, device=device))
                    except RuntimeError:
                        decoded.append(host_decode(items[i].numpy().tobytes()).to(device))
            finish(decoded)
        for i, image in zip(encoded, decoded):
            out[i] = image
    return out  # type: ignore[return-value]


_SIDE_STREAMS: dict[torch.device, Any] = {}


@contextmanager
def _decode_stream(device: torch.device) -> Iterator[Callable[[list[torch.Tensor]], None]]:
    """On CUDA, run the decode on a stream of its own, then hand its outputs to the current stream.

    torchvision's CUDA ``decode_jpeg`` allocates its outputs on the caller's stream but writes them from
    a private nvJPEG stream that does not wait for the caller's queued work. On the training stream the
    caching allocator may hand it a block that kernels of the previous step, still queued (the loop never
    waits for the device), are going to read: they then read decoded pixels instead of their activations,
    and the loss turns NaN within a few steps. A side stream's pool only holds blocks that no queued
    training kernel reads (each output is recorded on the training stream before it is used there).
    Elsewhere (CPU) nothing changes.
    """
    if device.type != "cuda":
        yield lambda outputs: None
        return
    device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    main = torch.cuda.current_stream(device)
    side = _SIDE_STREAMS.setdefault(device, torch.cuda.Stream(device))

    def finish(outputs: list[torch.Tensor]) -> None:
        main.wait_stream(side)
        for tensor in outputs:
            tensor.record_stream(main)  # freed later, the block waits for the training stream's use of it

    with torch.cuda.stream(side):
        yield finish


def pack(sizes: Sequence[tuple[int, int]]) -> tuple[list[tuple[int, int]], int, int]:
    """Shelf-pack rectangles ``(h, w)``: ``([(y, x) of each], canvas height, canvas width)``.

    Rows of images, tallest first, in a canvas about as wide as it is high: close to the sum of the
    areas even when one image of the batch is far larger than the rest (a padded stack would be
    batch size x the largest image).
    """
    width = max(max(w for _, w in sizes), math.ceil(math.sqrt(sum(h * w for h, w in sizes))))
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i][0])
    positions: list[tuple[int, int]] = [(0, 0)] * len(sizes)
    x = y = row_height = 0
    for i in order:
        h, w = sizes[i]
        if x + w > width:
            x, y, row_height = 0, y + row_height, 0
        positions[i] = (y, x)
        x += w
        row_height = max(row_height, h)
    return positions, y + row_height, width


def crop_resize(
    images: Sequence[torch.Tensor],
    boxes: torch.Tensor,
    flips: torch.Tensor,
    size: int,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Crop ``boxes`` (``[N, 4]`` x1, y1, x2, y2 in each image's pixels) out of ``images``, resize to ``size``, flip.

    One ``roi_align`` call for the whole batch over a canvas holding every image with a replicated
    one-pixel border (so that bilinear sampling at a box's edge reads the image's own edge, as a
    resize of the cropped image does); one ``torch.where`` for the flips. Returns ``uint8`` ``[N, 3, size, size]``.
    """
    from torchvision.ops import roi_align

    device = images[0].device
    positions, canvas_h, canvas_w = pack([(im.shape[1] + 2, im.shape[2] + 2) for im in images])
    canvas = torch.empty((1, 3, canvas_h, canvas_w), dtype=dtype, device=device)
    for image, (y, x) in zip(images, positions):
        h, w = image.shape[1], image.shape[2]
        bordered = torch.nn.functional.pad(image[None].to(dtype), (1, 1, 1, 1), mode="replicate")
        canvas[:, :, y : y + h + 2, x : x + w + 2] = bordered
    offsets = torch.tensor([[x + 1, y + 1, x + 1, y + 1] for y, x in positions], dtype=torch.float64)
    rois = torch.cat([torch.zeros(len(images), 1, dtype=torch.float64), boxes.double() + offsets], dim=1)
    out = roi_align(
        canvas,
        rois.to(dtype).to(device, non_blocking=True),
        output_size=(size, size),
        spatial_scale=1.0,
        sampling_ratio=0,  # adaptive: ceil(box side / size) samples per output pixel and axis
        aligned=True,
    )
    out = torch.where(flips.to(device, non_blocking=True).view(-1, 1, 1, 1), out.flip(-1), out)
    return out.round_().clamp_(0, 255).to(torch.uint8)


class BatchDecoder:
    """A batch of :class:`EncodedDataset` samples as the model reads it, on the device of the batch's labels.

    Decodes, crops and flips to ``uint8`` ``[N, 3, S, S]`` (:func:`decode_batch`, :func:`crop_resize`), then
    applies ``finish`` (e.g. :class:`~dkl_train.data.DeviceNormalize`, the pil backend's normalisation of
    ``uint8`` batches, so both backends feed the model the same way). It is the dataset's
    ``batch_transform``: the run's loaders call it on each batch after the copy to the device.
    """

    def __init__(self, spec: DatasetSpec, finish: Callable[[Any], Any] | None = None) -> None:
        self.spec = spec
        self.finish = finish

    def __repr__(self) -> str:
        return f"BatchDecoder(size={self.spec.image_size}, finish={self.finish!r})"

    def decode(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with ``encoded`` replaced by ``image``, ``uint8`` ``[N, 3, S, S]``, not normalised."""
        encoded: EncodedImages = batch["encoded"]
        device = batch["label"].device
        images = decode_batch(encoded.items, device)
        boxes, flips = encoded.boxes, encoded.flips
        for n, image in enumerate(images):
            decoded_size = (image.shape[1], image.shape[2])
            if decoded_size != encoded.sizes[n]:  # the header disagreed with the decoder: redraw from the seed
                if boxes is encoded.boxes:
                    boxes, flips = boxes.clone(), flips.clone()
                box, flip = sample_geometry(
                    *decoded_size, encoded.seeds[n], random=encoded.random, spec=self.spec, generator=torch.Generator()
                )
                boxes[n], flips[n] = torch.tensor(box, dtype=torch.float64), flip
        out = {key: value for key, value in batch.items() if key != "encoded"}
        out["image"] = crop_resize(images, boxes, flips, self.spec.image_size)
        return out

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = self.decode(batch)
        return out if self.finish is None else self.finish(out)


def is_file_backed(split: Any) -> bool:
    """Whether ``split`` reads images from files (what the gpu backend needs)."""
    return hasattr(split, "path") and hasattr(split, "labels")


def build_encoded_datasets(
    config: Any, spec: DatasetSpec, train: Any, test: Any, *, finish: Callable[[Any], Any] | None = None
) -> tuple[EncodedDataset, EncodedDataset]:
    """Train and test :class:`EncodedDataset` of the loaded splits (the gpu backend of ``build_datasets``).

    :func:`~dkl_train.data.build_datasets` loads the splits and calls this (this module never imports
    :mod:`dkl_train.data`); reads ``dataset``, ``augment`` and ``seed`` of the config. Each dataset's
    ``batch_transform`` decodes on the device, then applies ``finish`` (there: the pil backend's
    :class:`~dkl_train.data.DeviceNormalize`).
    """
    for name, split in (("train", train), ("test", test)):
        if not is_file_backed(split):
            raise ValueError(
                f"data_backend=gpu reads image files, but the {name} split of {config.dataset!r} is stored as "
                "decoded arrays; use data_backend=pil, or ImageNet indexed in place"
            )
    decoder = BatchDecoder(spec, finish)
    return (
        EncodedDataset(train, spec, random=config.augment, seed=config.seed, batch_transform=decoder),
        EncodedDataset(test, spec, random=False, batch_transform=decoder),
    )
