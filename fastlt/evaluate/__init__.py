"""Evaluation of a pretrained backbone: classifiers on its frozen features or trained through it, and fine-tuning.
Feature extraction, the kNN vote and the accuracy breakdown are shared with the training monitor and live
in ``fastlt.measure``.

linear    the BCL linear probe (Adam, exponential lr decay) and the TS LinearSVC protocol
report    the accuracy reports (``fastlt.measure.accuracy``) summarised, as JSON + Markdown
supcon_probe  SupCon's / SelfCon's linear classifiers on augmented views through the frozen encoder
finetune  FlatCLR's fine-tuning: the whole network with a new fc
lotar_probe  LoTaR's fc with the model in train mode, its own class groups
probe_views  the views those protocols (and SDCLR's) feed the backbone, made on the device
protocol  wires them together for `fastlt linear-eval` (checkpoint, recipe, splits)
"""
