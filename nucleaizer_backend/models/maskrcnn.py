"""Mask R-CNN for nuclei, assembled from torchvision parts.

The networks are trained here from random initialisation on a CPU, so the backbone is a
small ResNet-style network (BatchNorm, trainable) instead of ResNet-50, and the heads are
trimmed for a two-class problem (nucleus / background): a 256-wide box head and a 4x64 mask
head. Everything else (FPN, RPN, RoI heads, losses) is torchvision's own.

The image transform does *not* resize: the caller rescales images so that nuclei have the
size the model was trained at (40 px for the main model), and the network must see exactly
that scale.
"""
import math
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import initLevelMapper

FEATURE_STRIDES = (4, 8, 16, 32)  # px of input per feature pixel, FPN levels "0".."3"


@dataclass
class MaskRCNNConfig:
    """Architecture of a nucleus Mask R-CNN; stored in the model's metadata."""

    stem_channels: int = 32
    stage_channels: tuple = (48, 96, 160, 256)  # strides 4, 8, 16, 32
    stage_blocks: tuple = (2, 2, 2, 2)
    norm: str = "batch"  # backbone normalisation: "batch" or "group" (GroupNorm, batch-free)
    fpn_channels: int = 96
    anchor_sizes: tuple = (16, 32, 64, 128, 256)  # px, one per FPN level (P2..P6)
    aspect_ratios: tuple = (0.5, 1.0, 2.0)
    box_head_width: int = 256
    mask_head_layers: tuple = (64, 64, 64, 64)
    max_detections: int = 1000  # per image (or tile)
    rpn_proposals_test: int = 2000
    # training: RPN proposals per image before/after NMS. A 256 px crop at the 40 px working
    # size holds at most ~60 nuclei, so torchvision's COCO values (2000/1000) only cost NMS
    # and matching time; 600/300 still leaves > 4 proposals per nucleus.
    rpn_proposals_train: tuple = (600, 300)
    box_rois_train: int = 128  # RoIs sampled per image for the box and mask heads (1/2 positive)
    image_mean: float = 0.5
    image_std: float = 0.25

    @classmethod
    def from_dict(cls, d):
        known = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()
                 if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_dict(self):
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def norm_layer(kind, channels):
    """BatchNorm, or GroupNorm with 8 channels per group (at most 32 groups): GroupNorm's
    statistics do not depend on the batch, which suits from-scratch detection at batch 2."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, max(1, channels // 8)), channels)
    raise ValueError(f"unknown normalisation {kind!r} (batch or group)")


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with a projection shortcut when the shape changes."""

    def __init__(self, cin, cout, stride=1, norm="batch"):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(norm, cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), norm_layer(norm, cout)
            )

    def forward(self, x):
        identity = x if self.shortcut is None else self.shortcut(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


def small_resnet(cfg):
    """Backbone body: stem (stride 2) then four stages at :data:`FEATURE_STRIDES`."""
    layers = OrderedDict()
    layers["stem"] = nn.Sequential(
        nn.Conv2d(3, cfg.stem_channels, 3, 2, 1, bias=False),
        norm_layer(cfg.norm, cfg.stem_channels),
        nn.ReLU(inplace=True),
    )
    cin = cfg.stem_channels
    for i, (cout, n) in enumerate(zip(cfg.stage_channels, cfg.stage_blocks), start=1):
        blocks = [BasicBlock(cin, cout, stride=2, norm=cfg.norm)]
        blocks += [BasicBlock(cout, cout, norm=cfg.norm) for _ in range(n - 1)]
        layers[f"layer{i}"] = nn.Sequential(*blocks)
        cin = cout
    body = nn.Sequential(layers)
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    for block in body.modules():
        if isinstance(block, BasicBlock):
            nn.init.zeros_(block.bn2.weight)  # each residual block starts as identity
    return body


def roi_pool(output_size, strides=FEATURE_STRIDES):
    """torchvision's ``MultiScaleRoIAlign`` over the FPN levels, with the level scales set
    from the backbone's ``strides`` (px) instead of inferred.

    torchvision infers the scales from the first batch a pooler sees and keeps them for the
    life of the model; when that first image is a few px (a thumbnail at the working scale)
    they come out wrong and every later image loses its detections.
    """
    pool = MultiScaleRoIAlign([str(i) for i in range(len(strides))],
                              output_size=output_size, sampling_ratio=1)
    pool.scales = [1.0 / s for s in strides]
    pool.map_levels = initLevelMapper(int(math.log2(strides[0])), int(math.log2(strides[-1])),
                                      canonical_scale=pool.canonical_scale,
                                      canonical_level=pool.canonical_level)
    return pool


class ChannelsLastBackbone(BackboneWithFPN):
    """torchvision's ``BackboneWithFPN`` fed channels-last (NHWC) tensors: oneDNN's
    convolutions run about 20% faster on CPU that way (and no slower on GPU). Same weights
    and state-dict keys as the plain one."""

    def forward(self, x):
        return super().forward(x.contiguous(memory_format=torch.channels_last))


class NoResizeTransform(GeneralizedRCNNTransform):
    """torchvision's batching/normalising transform without its resize step."""

    def resize(self, image, target=None):
        return image, target


def build_maskrcnn(cfg=None):
    """A torchvision ``MaskRCNN`` for two classes built from ``cfg`` (random weights)."""
    cfg = cfg or MaskRCNNConfig()
    body = small_resnet(cfg)
    backbone = ChannelsLastBackbone(
        body,
        return_layers={f"layer{i}": str(i - 1) for i in range(1, 5)},
        in_channels_list=list(cfg.stage_channels),
        out_channels=cfg.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    anchors = AnchorGenerator(
        sizes=tuple((s,) for s in cfg.anchor_sizes),
        aspect_ratios=(tuple(cfg.aspect_ratios),) * len(cfg.anchor_sizes),
    )
    box_pool, mask_pool = roi_pool(7), roi_pool(14)
    c = cfg.fpn_channels
    model = MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_test=cfg.rpn_proposals_test,
        rpn_post_nms_top_n_test=cfg.rpn_proposals_test,
        rpn_pre_nms_top_n_train=cfg.rpn_proposals_train[0],
        rpn_post_nms_top_n_train=cfg.rpn_proposals_train[1],
        rpn_batch_size_per_image=256,
        box_roi_pool=box_pool,
        box_head=TwoMLPHead(c * 7 * 7, cfg.box_head_width),
        box_predictor=FastRCNNPredictor(cfg.box_head_width, 2),
        box_score_thresh=0.05,
        box_nms_thresh=0.4,
        box_detections_per_img=cfg.max_detections,
        box_batch_size_per_image=cfg.box_rois_train,
        box_positive_fraction=0.5,
        mask_roi_pool=mask_pool,
        mask_head=MaskRCNNHeads(c, list(cfg.mask_head_layers), 1),
        mask_predictor=MaskRCNNPredictor(cfg.mask_head_layers[-1], cfg.mask_head_layers[-1], 2),
    )
    model.transform = NoResizeTransform(
        min_size=800, max_size=1333,
        image_mean=[cfg.image_mean] * 3, image_std=[cfg.image_std] * 3,
        size_divisible=32,
    )
    model.config = cfg
    return model


_locks_guard = threading.Lock()


def _lock_of(model):
    with _locks_guard:
        if not hasattr(model, "_predict_lock"):
            model._predict_lock = threading.Lock()
        return model._predict_lock


@torch.inference_mode()
def predict_raw(model, images, min_score=0.05):
    """Run a Mask R-CNN in eval mode and return unpasted detections.

    ``images``: list of float tensors (3, H, W) at the model's working scale; detections
    scoring below ``min_score`` are dropped before the mask head (which is the costly part).
    Returns one dict per image with ``boxes`` (N, 4; x0, y0, x1, y1 in px of the input),
    ``scores`` (N,) and ``masks`` (N, M, M) mask probabilities inside each box (M = 28).
    torchvision's own postprocess pastes every mask into a full-size image, which costs
    N x H x W memory; callers paste them straight into a label image instead.
    """
    sizes = [img.shape[-2:] for img in images]
    with _lock_of(model):  # score_thresh is model state: one caller at a time
        model.roi_heads.score_thresh = min_score
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
    out = []
    for det, size in zip(detections, sizes):
        out.append({"boxes": det["boxes"], "scores": det["scores"], "masks": det["masks"][:, 0]})
    return out
