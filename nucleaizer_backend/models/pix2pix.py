"""pix2pix for style adaptation (docs/METHOD.md section 4.3): a conditional GAN per style
cluster that learns *mask -> image* in that cluster's appearance.

- Generator: the project's :class:`~nucleaizer_backend.models.unet.UNet` (instance norm,
  dropout 0.5 in the two deepest decoder levels, tanh output, 3 channels), input
  :func:`mask_to_input` of a label image.
- Discriminator: :class:`PatchDiscriminator`, pix2pix's PatchGAN: it classifies overlapping
  patches (70x70 px receptive field with 3 layers) of concat(mask input, image) as real/fake
  and returns a map of logits.

Representations:

- mask: ``mask_to_input(labels)`` -> (2, H, W) float32: channel 0 foreground {0, 1}, channel 1
  instance boundaries {0, 1}, so that touching nuclei stay distinguishable.
- image: the GAN works on (3, H, W) in [-1, 1]; :func:`image_to_gan` maps a float
  (H, W, 3) image in [0, 1] by ``2 * x - 1`` and :func:`gan_to_image` maps back by
  ``(y + 1) / 2`` (clipped to [0, 1]).
"""
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from .unet import UNet, UNetConfig

# The generator's fixed parts: 2-channel mask input, RGB image output in [-1, 1].
_GENERATOR_FIXED = dict(in_channels=2, out_channels=3, out_activation="tanh")
# Default generator, sized for CPU: 16 channels at full resolution, 6 downsamplings (4x4 px at
# the bottom of a 256 px crop), widths capped at 256; 8.7 M parameters. One training step
# (generator + 32-wide discriminator, batch 1, 256 px) takes about 0.85-1.1 s on one CPU
# thread; base 32 takes about 1.9 s, depth 5 the same as depth 6.
DEFAULT_GENERATOR = dict(base_channels=16, depth=6, max_channels=256, norm="instance",
                         dropout=0.5, upsample="bilinear")


@dataclass
class Pix2PixConfig:
    """Architecture and optimisation defaults of a pix2pix style model.

    generator: UNetConfig fields (in/out channels and tanh output are fixed);
    disc_channels / disc_layers: width of the discriminator's first layer and number of
    stride-2 layers (3 = pix2pix's 70x70 PatchGAN); lambda_l1: weight of the L1 term;
    lr, betas: Adam settings of both networks (pix2pix: 2e-4, (0.5, 0.999)).
    """

    generator: dict = field(default_factory=lambda: dict(DEFAULT_GENERATOR))
    disc_channels: int = 32
    disc_layers: int = 3
    disc_max_channels: int = 256
    lambda_l1: float = 100.0
    lr: float = 2e-4
    betas: tuple = (0.5, 0.999)

    @classmethod
    def from_dict(cls, d):
        d = {k: v for k, v in (d or {}).items() if k in cls.__dataclass_fields__}
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        if "generator" in d:
            d["generator"] = {**DEFAULT_GENERATOR, **d["generator"]}
        return cls(**d)

    def to_dict(self):
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["generator"] = self.generator_config().to_dict()
        return d

    def generator_config(self):
        return UNetConfig.from_dict({**DEFAULT_GENERATOR, **self.generator, **_GENERATOR_FIXED})


def _init_weights(model):
    """pix2pix initialisation: conv weights N(0, 0.02), norm scales N(1, 0.02), biases 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.InstanceNorm2d, nn.BatchNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return model


def build_generator(cfg=None):
    """The mask -> image U-Net (random pix2pix-style initial weights) of ``cfg``."""
    cfg = cfg or Pix2PixConfig()
    return _init_weights(UNet(cfg.generator_config()))


class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN: (B, in_channels, H, W) -> (B, 1, H', W') real/fake logits.

    ``layers`` 4x4 stride-2 convolutions (LeakyReLU 0.2; instance norm from the second on),
    then a 4x4 stride-1 convolution with norm and LeakyReLU and a 4x4 stride-1 convolution to
    one logit channel. With 3 layers each logit sees a 70x70 px patch; a 256 px input gives a
    30x30 map.
    """

    def __init__(self, in_channels=5, channels=32, layers=3, max_channels=256):
        super().__init__()
        self.in_channels = in_channels

        def width(i):
            return min(channels * 2 ** i, max_channels)

        seq = [nn.Conv2d(in_channels, width(0), 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for i in range(1, layers + 1):
            stride = 2 if i < layers else 1
            seq += [nn.Conv2d(width(i - 1), width(i), 4, stride, 1, bias=False),
                    nn.InstanceNorm2d(width(i), affine=True), nn.LeakyReLU(0.2, inplace=True)]
        seq.append(nn.Conv2d(width(layers), 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)

    def forward(self, x):
        return self.net(x)


def build_discriminator(cfg=None):
    """The PatchGAN of ``cfg`` over concat(mask input (2 ch), image (3 ch))."""
    cfg = cfg or Pix2PixConfig()
    d = PatchDiscriminator(2 + 3, cfg.disc_channels, cfg.disc_layers, cfg.disc_max_channels)
    return _init_weights(d)


def instance_boundaries(labels):
    """(H, W) bool: object pixels with a 4-neighbour of another label (background or another
    object). Between two touching objects both sides are marked (a 2 px line)."""
    lab = np.asarray(labels)
    b = np.zeros(lab.shape, bool)
    dy = lab[1:, :] != lab[:-1, :]
    dx = lab[:, 1:] != lab[:, :-1]
    b[1:, :] |= dy
    b[:-1, :] |= dy
    b[:, 1:] |= dx
    b[:, :-1] |= dx
    return b & (lab > 0)


def mask_to_input(labels):
    """The generator's input for an instance label image (H, W) (0 = background):
    (2, H, W) float32; channel 0 foreground {0, 1}, channel 1 instance boundaries {0, 1}
    (see :func:`instance_boundaries`)."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be a 2D label image, got shape {lab.shape}")
    return np.stack([lab > 0, instance_boundaries(lab)]).astype(np.float32)


def image_to_gan(image):
    """float (H, W, 3) in [0, 1] -> float32 (3, H, W) in [-1, 1] (``2 * x - 1``)."""
    a = np.asarray(image, np.float32)
    return np.ascontiguousarray(np.moveaxis(np.clip(a, 0.0, 1.0) * 2.0 - 1.0, -1, 0))


def gan_to_image(t):
    """(3, H, W) tensor or array in [-1, 1] -> float32 (H, W, 3) in [0, 1] (``(y + 1) / 2``)."""
    if isinstance(t, torch.Tensor):
        t = t.detach().float().cpu().numpy()
    return np.ascontiguousarray(np.clip((np.moveaxis(t, 0, -1) + 1.0) * 0.5, 0.0, 1.0),
                                dtype=np.float32)
