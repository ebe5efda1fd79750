"""Layer 2, ``nn``: the patching 3D U-Net (`model`), its training portions (`dataset`), its
training (`train`) and fine-tuning on a measured array (`finetune`). Imports ``core`` only
(torch is imported by these modules, so ``import bcdi_gapfill`` does not load them)."""
