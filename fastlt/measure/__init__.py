"""What training and evaluation both measure on a frozen backbone, below both so neither stands on the other.

features  run the backbone once over uint8 images (eval mode, no gradient) -> float32 [N, D]
knn       cosine k-nearest-neighbour vote
accuracy  overall / per-class / many / medium / few accuracy of class predictions

The training monitor (``fastlt.train.monitor``) and ``fastlt linear-eval`` (``fastlt.evaluate``)
use the same three, so a run's kNN numbers and its evaluation's agree.
"""
