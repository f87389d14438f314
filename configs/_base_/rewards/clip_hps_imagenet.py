# LOO-FID's instance rewards (docs/methods/loo_fid.md): CLIP (OpenCLIP ViT-L-14, OpenAI weights;
# cosine of the image and "a photo of a {class}") + HPSv2.1, raw scores summed with weight 1 each
# into one head, then group-normalised (A_comp). CLIP preprocessing as the official code: a
# bilinear 224 x 224 squash without antialiasing.
# Files (download yourself; nothing is downloaded at run time):
#   checkpoints/clip/open_clip_pytorch_model.bin
#     https://huggingface.co/timm/vit_large_patch14_clip_224.openai
#   checkpoints/hps/HPS_v2.1_compressed.pt   https://huggingface.co/xswu/HPSv2
rewards = dict(
    comp=dict(
        type='CompositeReward', mode='sum_then_normalize', weights=dict(clip=1.0, hps=1.0),
        heads=dict(
            clip=dict(type='ClipScoreReward', arch='ViT-L-14', weights_tag='openai',
                      checkpoint='checkpoints/clip/open_clip_pytorch_model.bin',
                      class_names='imagenet', templates='a photo of a {}',
                      resize_mode='squash', interpolation='bilinear', antialias=False),
            hps=dict(type='HPSv2Reward', checkpoint='checkpoints/hps/HPS_v2.1_compressed.pt',
                     class_names='imagenet', templates='a photo of a {}'))))
