"""Layer 3, ``fill``: the gap fills a user calls. `inpainting.inpaint` (the model, windowed
along the gap), the classical fills (`classical`), band-limit refinement (`refine`) and the
fill's uncertainty calibration (`calibration`). Imports ``core`` and ``nn``."""
