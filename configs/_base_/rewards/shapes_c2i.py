# ShapesEval (GenEval-style clause accuracy) of a class-conditional sample: soft score in [0, 1].
rewards = dict(shapes=dict(type='ShapesEvalReward', task='c2i'))
