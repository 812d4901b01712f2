"""Evaluation of a pretrained backbone: classifiers on its frozen features or trained through it, and fine-tuning.

features  run the frozen backbone once over uint8 images (no augmentation) -> float32 [N, D]
linear    the BCL linear probe (Adam, exponential lr decay) and the TS LinearSVC protocol
knn       cosine k-nearest-neighbour vote
report    overall / many / medium / few / per-class accuracy and class-wise std, JSON + Markdown
supcon_probe  SupCon's / SelfCon's linear classifiers on augmented views through the frozen encoder
finetune  FlatCLR's fine-tuning: the whole network with a new fc
lotar_probe  LoTaR's fc with the model in train mode, its own class groups
probe_views  the views those protocols (and SDCLR's) feed the backbone, made on the device
protocol  wires them together for `fastlt linear-eval` (checkpoint, recipe, splits)
"""
