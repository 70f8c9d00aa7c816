"""A broad slice of timm's CNN families, swept the way timm's own tests sweep its zoo.

Covers the conv subclasses and containers that matter: ``Conv2dSame`` (``tf_`` variants), ``MixedConv2d``
(MixNet), ``StdConv2d``/``ScaledStdConv2d`` (ResNetV2, NFNet), timm's own re-parameterisable blocks
(MobileOne, RepVGG) and depthwise-heavy nets.
"""

from __future__ import annotations

import functools

import pytest
import torch

timm = pytest.importorskip("timm")

from _zoo import check_model  # noqa: E402

FAST = [
    "mobilenetv2_050", "mobilenetv3_small_050", "tf_mobilenetv3_small_minimal_100", "mixnet_s", "tf_mixnet_s",
    "ghostnet_050", "lcnet_050", "regnetx_002", "regnety_002", "resnet10t", "resnext26ts", "efficientnet_b0",
    "tf_efficientnet_b0", "convnext_atto", "rexnet_100", "densenet121", "mnasnet_050", "fbnetc_100",
    "spnasnet_100", "tinynet_e", "hardcorenas_a", "cs3darknet_focus_s", "nf_regnet_b0",
    "repvgg_a0", "mobileone_s0", "ese_vovnet19b_slim_dw", "efficientnet_lite0", "semnasnet_050",
    "gernet_s", "res2net50_14w_8s", "inception_v3",
]
SLOW = [
    "resnet50", "dla34", "resnetv2_50", "selecsls42b", "efficientnetv2_rw_s", "tf_efficientnetv2_s", "convnext_tiny", "xception41", "dpn68",
    "hrnet_w18_small", "regnety_016", "mixnet_xl", "ghostnetv2_100", "mobilenetv4_conv_small", "fastvit_t8",
    "repghostnet_050", "efficientvit_b0", "inception_v4", "nfnet_f0", "cspdarknet53", "vovnet39a",
]
SIZE = {"inception_v3": 80, "inception_v4": 80, "xception41": 96}


def _params():
    return [pytest.param(n) for n in FAST] + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW]


@pytest.mark.parametrize("name", _params())
def test_timm_model(name):
    if name not in timm.list_models():
        pytest.skip(f"{name} not in this timm version")
    build = functools.partial(timm.create_model, name, pretrained=False, num_classes=10)
    size = SIZE.get(name, 64)
    check_model(build, torch.randn(2, 3, size, size))
