"""Does a Shapes MAR use its context? Its pretraining loss at fixed masking ratios.

    python docs/experiments/mar_shapes_base/context_loss.py WEIGHTS [--latents mean|sample]

Evaluates ``MARPolicy.pretrain_loss`` (random orders, the masked tokens' flow-matching loss) of
the MAR in ``configs/_base_/policies/mar_shapes_c2i.py`` with ``WEIGHTS`` on 6 batches of 64
fresh Shapes c2i images (dataset seed 999, not a training stream), with the masking ratio fixed
to each of 0.95 ... 0.05 instead of drawn. A model that uses the visible tokens predicts the
masked ones better when more are visible (the loss falls as the ratio falls); one that predicts
each token from the class alone gives the same loss at every ratio. Run from the repository
root; one thread, about a minute.
"""
import argparse

import torch
from mmengine.config import Config

from vargo.components.benchmarks.pretrain.common import ShapesStream, build_policy_from_config
from vargo.core.types import Conditions

RATIOS = (0.95, 0.8, 0.6, 0.4, 0.2, 0.05)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('weights')
    p.add_argument('--latents', choices=('mean', 'sample'), default='mean',
                   help='encode the images to posterior means or posterior samples')
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = Config.fromfile('configs/_base_/policies/mar_shapes_c2i.py')
    policy = build_policy_from_config(cfg, overrides={'checkpoint': args.weights}).eval()
    stream = ShapesStream('c2i', 999, 64, 6)
    torch.manual_seed(0)
    out = {}
    with torch.no_grad():
        for ratio in RATIOS:
            policy.draw_mask_ratio = lambda r=ratio: r
            losses = []
            for s in range(6):
                images, conds = stream.batch(s)
                tokens = policy.encode_images(images, sample=args.latents == 'sample')
                losses.append(policy.pretrain_loss(
                    tokens, Conditions(class_ids=torch.tensor(conds))).item())
            out[ratio] = sum(losses) / len(losses)
    print('masking ratio  ' + '  '.join(f'{r:>6}' for r in out))
    print('loss           ' + '  '.join(f'{v:6.4f}' for v in out.values()))


if __name__ == '__main__':
    main()
