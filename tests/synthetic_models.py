"""Models with seeded, realistic weights for tests that need a FaceNet but not a trained one."""

from __future__ import annotations

import torch

from facenet_convert.models.inception_resnet_v1 import InceptionResNetV1


def realistic_model(embedding_size: int = 512) -> InceptionResNetV1:
    """Inception-ResNet-V1 in eval mode whose BatchNorm statistics and affine parameters are
    seeded away from the identity, so that every layer matters to the embeddings."""
    generator = torch.Generator().manual_seed(1)
    model = InceptionResNetV1(embedding_size=embedding_size).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model
