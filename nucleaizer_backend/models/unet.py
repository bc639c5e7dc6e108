"""U-Net: the contour-refinement network (foreground probability of nuclei at the 40 px working
scale, docs/METHOD.md section 2.6) and the building block of the pix2pix style generator.

Built from small parts, torchvision-style: ``UNetConfig`` (stored in a model's metadata) ->
``build_unet`` -> ``UNet``. Input height and width need not be multiples of 2**depth: the
input is padded and the output cropped back, so a (B, C, H, W) input gives (B, out, H, W).

``RefinementUNet`` follows torchvision's detection models' convention: in training mode
``model(images, targets)`` returns a dict of losses, in eval mode ``model(images)`` returns
foreground probabilities (B, H, W) in [0, 1].
"""
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetConfig:
    """Architecture of a U-Net; stored in the model's metadata.

    base_channels: width of the first level (doubled at each level below, up to
    ``max_channels``); depth: number of 2x downsamplings; norm: "batch", "instance" or "none";
    dropout: dropout probability in the decoder's deepest levels (pix2pix uses it as noise);
    out_activation: "none" (logits) or "tanh" (images in [-1, 1]); upsample: "transpose"
    (learned 2x2 transposed convolution) or "bilinear" (bilinear 2x then the convolutions:
    no checkerboard artefacts in generated images).
    """

    in_channels: int = 3
    out_channels: int = 1
    base_channels: int = 8  # refinement default: ~0.8 s per 1.4 Mpx on 2 CPU threads
    depth: int = 4
    max_channels: int = 128
    norm: str = "batch"
    dropout: float = 0.0
    out_activation: str = "none"
    upsample: str = "transpose"
    image_mean: float = 0.5  # input normalisation for images in [0, 1]
    image_std: float = 0.25

    @classmethod
    def from_dict(cls, d):
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self):
        return asdict(self)

    def widths(self):
        return [min(self.base_channels * 2 ** i, self.max_channels) for i in range(self.depth + 1)]


def _norm(kind, channels):
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {kind!r} (batch, instance or none)")


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by normalisation and ReLU."""

    def __init__(self, cin, cout, norm):
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=bias), _norm(norm, cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=bias), _norm(norm, cout), nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """2x upsampling, concatenation with the skip connection, DoubleConv."""

    def __init__(self, cin, cskip, cout, norm, dropout, upsample="transpose"):
        super().__init__()
        if upsample == "transpose":
            self.up = nn.ConvTranspose2d(cin, cin, 2, stride=2)
        elif upsample == "bilinear":
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        else:
            raise ValueError(f"unknown upsampling {upsample!r} (transpose or bilinear)")
        self.conv = DoubleConv(cin + cskip, cout, norm)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x, skip):
        return self.drop(self.conv(torch.cat([self.up(x), skip], dim=1)))


class UNet(nn.Module):
    """Encoder-decoder with skip connections; (B, in, H, W) -> (B, out, H, W)."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        w = cfg.widths()
        self.stem = DoubleConv(cfg.in_channels, w[0], cfg.norm)
        self.down = nn.ModuleList(DoubleConv(w[i], w[i + 1], cfg.norm) for i in range(cfg.depth))
        # dropout only in the two deepest decoder levels (as pix2pix's generator does)
        self.up = nn.ModuleList(
            Up(w[i + 1], w[i], w[i], cfg.norm, cfg.dropout if i >= cfg.depth - 2 else 0.0,
               cfg.upsample)
            for i in reversed(range(cfg.depth))
        )
        self.head = nn.Conv2d(w[0], cfg.out_channels, 1)

    def forward(self, x):
        h, w = x.shape[-2:]
        m = 2 ** self.config.depth
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        for up in self.up:
            y = up(y, skips.pop())
        y = self.head(y)[..., :h, :w]
        return torch.tanh(y) if self.config.out_activation == "tanh" else y


class RefinementUNet(UNet):
    """Foreground U-Net for contour refinement (one logit channel)."""

    def forward(self, images, targets=None):
        """images: (B, 3, H, W) float in [0, 1] (or a list of (3, H, W)); targets: list of dicts
        with ``foreground`` (H, W) {0, 1}. Training: {"loss_bce", "loss_dice"}; eval:
        foreground probability (B, H, W)."""
        if isinstance(images, (list, tuple)):
            images = torch.stack(list(images))
        x = (images - self.config.image_mean) / self.config.image_std
        logits = super().forward(x)[:, 0]
        if not self.training:
            return torch.sigmoid(logits)
        fg = torch.stack([t["foreground"] for t in targets]).to(logits.dtype)
        prob = torch.sigmoid(logits)
        inter = (prob * fg).sum((1, 2))
        dice = 1 - (2 * inter + 1) / (prob.sum((1, 2)) + fg.sum((1, 2)) + 1)
        return {"loss_bce": F.binary_cross_entropy_with_logits(logits, fg),
                "loss_dice": dice.mean()}


def build_unet(cfg=None):
    """A refinement U-Net (random weights) from ``cfg``."""
    cfg = cfg or UNetConfig()
    model = RefinementUNet(cfg)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model
