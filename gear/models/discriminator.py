"""PatchGAN discriminator (pix2pix NLayerDiscriminator style) and hinge losses."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class PatchDiscriminator(nn.Module):
    """Strided 4x4 convs: `n_layers` halvings, one stride-1 conv, then a 1-channel logit map.
    Each logit judges one receptive-field patch of the image (images in [-1, 1])."""

    def __init__(self, in_channels: int = 3, ch: int = 64, n_layers: int = 3):
        super().__init__()
        if ch < 1 or n_layers < 1:
            raise ValueError(f"PatchDiscriminator needs ch >= 1 and n_layers >= 1, got ch={ch}, n_layers={n_layers}")
        seq = [nn.Conv2d(in_channels, ch, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        cin = ch
        for n in range(1, n_layers + 1):
            cout = ch * min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            seq += [nn.Conv2d(cin, cout, 4, stride=stride, padding=1, bias=False),
                    nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, True)]
            cin = cout
        seq.append(nn.Conv2d(cin, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*seq)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator hinge: push real logits above +1 and fake logits below -1."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """Generator side of the hinge GAN: raise the discriminator's logits on reconstructions."""
    return -fake_logits.mean()
