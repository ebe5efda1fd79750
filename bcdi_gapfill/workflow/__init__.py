"""Layer 7, ``workflow``: end-to-end runs from a YAML file. The pipeline (`pipeline`), bcdi
preprocessing with the fill (`bcdi_preprocess`), scan series (`batch`) and the demo (`demo`)."""
