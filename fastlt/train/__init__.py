"""The pretraining loop and what it needs: device/precision choices, lr schedule, checkpoints, run records."""
