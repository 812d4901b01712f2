"""Evaluation of a pretrained backbone on frozen features.

features  run the frozen backbone once over uint8 images (no augmentation) -> float32 [N, D]
linear    the BCL linear probe (Adam, exponential lr decay) and the TS LinearSVC protocol
knn       cosine k-nearest-neighbour vote
report    overall / many / medium / few / per-class accuracy and class-wise std, JSON + Markdown
protocol  wires them together for `fastlt linear-eval` (checkpoint, recipe, splits)
"""
