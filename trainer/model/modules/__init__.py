"""LFADS's neural-network blocks (lfads-torch's `modules/`, explicit arguments).

encoder       IC posterior and controller-input encoders
decoder       controller + generator over the reconstructed bins
decoder_loop  their loop with hand-written backpropagation through time
gru, gru_tape clipped GRU cells and the fused multi-stream recurrence
reference     the same recurrences written plainly, for checking
priors        Gaussian IC prior, AR(1) controller-output prior
recons        Poisson readout and likelihood
dropout       dropout with a runtime rate and an explicit generator
"""
