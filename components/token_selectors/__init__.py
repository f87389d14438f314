"""Token selectors (registry ``TOKEN_SELECTORS``): per-action weights ``[B, A]`` for the policy
and KL terms, composed by multiplication in config order."""
from .all_tokens import AllTokensSelector
from .consistency import ConsistencySelector
from .evaluated_actions import EvaluatedActionsSelector
from .mask_propagation import MaskPropagationSelector
from .multi_trajectory import MultiTrajectorySelector
from .scale_area import ScaleAreaReweightSelector
from .similarity_reweight import SimilarityReweightSelector

__all__ = ['AllTokensSelector', 'ConsistencySelector', 'EvaluatedActionsSelector',
           'MaskPropagationSelector',
           'MultiTrajectorySelector', 'ScaleAreaReweightSelector', 'SimilarityReweightSelector']
