"""Layer 4, ``phasing``: phase retrieval whose operators compose as PyNX's do
(``ER()**50 * HIO()**200 * state``), with the gap's voxels free, given or released.
Imports ``core`` only."""
from bcdi_gapfill.phasing.engine import (DEFAULT_ALGORITHM, ER, HIO, RAAR, CDIState, FourierApplyAmplitude,
                                         InitRandom, InitSupportAutocorrelation, Operator, PhasingResult,
                                         ShrinkWrap, SupportError, estimate_phasing_seconds, parse_algorithm,
                                         phase_retrieval)

__all__ = ["CDIState", "Operator", "ER", "HIO", "RAAR", "ShrinkWrap", "FourierApplyAmplitude",
           "InitSupportAutocorrelation", "InitRandom", "SupportError", "PhasingResult", "parse_algorithm",
           "phase_retrieval", "estimate_phasing_seconds", "DEFAULT_ALGORITHM"]
