"""How good a trained model is, and what it says about the data.

metrics    NLB metrics (co-bps, fp-bps, velocity/PSTH/rate R2)
smoothing  the NLB spike-smoothing baseline (the floor)
baseline   floor and ceiling of a data file, and where a model lies
posterior  posterior sampling: outputs averaged over samples
finalize   the best member of a search into `<run>/best/`
apply      a trained model on new trials
"""
