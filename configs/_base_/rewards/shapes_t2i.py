# ShapesEval (GenEval-style clause accuracy) of a text-conditional sample: soft score in [0, 1].
rewards = dict(shapes=dict(type='ShapesEvalReward', task='t2i'))
