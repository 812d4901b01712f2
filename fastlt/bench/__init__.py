"""`fastlt bench`: measurements that back the speed claims, each with the machine it ran on.

views.py       two SimCLR views per image: fastlt's batched pipeline against the per-image PIL
               pipeline of the reference code, kornia and DALI (and the same for BCL's views)
train.py       a pretraining step split into load, views, forward + backward and optimiser,
               against the reference training loop
linear_eval.py the BCL protocol (cached features) against the SDCLR protocol on one checkpoint
timing.py      the timer and the machine description every result carries
reference.py   the per-image PIL + torchvision pipelines of the reference repositories
external.py    kornia and DALI pipelines built from the same view settings
report.py      the printed table and the JSON file
"""
