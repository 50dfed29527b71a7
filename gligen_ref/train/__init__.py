"""Training GLIGEN (the paper's recipe) and the tiny base model it stands on.

- ``scenes``: the deterministic synthetic scene generator and the documented data-folder format
  (torch-free; the grounding evaluation reuses it).
- ``data``: reading and validating a data folder.
- ``trainer``: the three stages (VAE, base text encoder + UNet, GLIGEN fusers + grounding tokenizer),
  checkpoints, bit-exact resume, loss curves.
- ``cli``: ``gligen-rt train ...``.
"""
