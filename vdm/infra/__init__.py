"""Infrastructure every trained model shares: the device mesh and every host/device transfer (parallel),
orbax checkpoints (checkpoint), the TrainState, AdamW and EMA (optim), metric files and figures (metrics),
atomic file writes (fileio).
"""
