"""What every trainer process imports first, loaded once into the template
that `autolfads run` forks its trainers from (`autolfads/worker_pool.py`).

Only third-party modules, and nothing that reads this process's environment
or configuration: a forked trainer sets its own environment after the fork.
"""

import torch

# A process's first optimizer makes torch import its compiler stack (~0.9 s
# on an idle core, more than `import torch` itself). Build a throwaway one so
# that the template pays this once, not every trainer. It touches no RNG.
torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
