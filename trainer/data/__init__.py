"""Data: what LFADS is trained on (numpy and h5py only; no torch here).

dataset      `LfadsData`, `Split`, and the checks every dataset passes
lfads_h5     reading and writing HDF5 files (the lfads-torch layout)
config_data  the data file a config names, generated if missing
synth        synthetic spiking data with known rates (chaotic RNN, Lorenz)
nwb_read     what `data from-nwb` reads from an NWB file
nwb_binning  spike times and signals onto trial-aligned bins
nwb_import   NWB recordings into the lfads-torch layout
nwb_export   LFADS outputs back into NWB
"""
