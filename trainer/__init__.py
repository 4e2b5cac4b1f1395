"""LFADS: data, the model and its training, evaluation, and the PBT worker.

Layers (a layer imports only those listed before it):

    data/        `LfadsData` and its HDF5 files, a config's data file,
                 synthetic data, NWB in and out (numpy, h5py; no torch)
    model/       LFADS itself (`lfads`, the blocks in `modules/`), its
                 objective, augmentations, batches on the device, and one
                 member's training `session`
    evaluation/  NLB metrics, the floor and ceiling (smoothing baseline),
                 posterior sampling, `finalize` of a search, `apply` to new
                 trials
    worker       the lease -> load -> train -> save -> report loop (one
                 session per run, reused across leases)
    leased       a leased segment, its progress, the session pool, metrics.json
    publisher    stores a finished segment and reports it, off the training path
    timing       seconds per phase of the worker loop, for the log
"""
