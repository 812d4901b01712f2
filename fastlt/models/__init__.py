"""Backbones and heads: ResNets with CIFAR/ImageNet stems, the SimCLR projector, the self-damaging encoder."""
