"""Backbones and heads: ResNets with CIFAR/ImageNet stems and the SimCLR projector."""
