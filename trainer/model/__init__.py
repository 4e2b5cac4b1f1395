"""The LFADS model and one member's training.

lfads      the sequential VAE (`LfadsModel`, `DataDims`, `LfadsOutput`)
modules/   its blocks: encoders, decoder (controller + generator), priors,
           Poisson readout, dropout, and the fused GRU kernels with the
           plain reference they are checked against
objective  the training loss (lfads-torch semantics)
augment    coordinated dropout and sample validation masks
batches    one data split as device tensors, bits-per-spike bookkeeping
device     device choice and random-number-generator state
session    `TrainingSession`: epochs, smoothed metrics, checkpoints
"""
