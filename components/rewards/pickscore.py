"""PickScore (Kirstain et al., Pick-a-Pic, arXiv 2305.01569; code yuvalkirstain/PickScore).

PickScore v1 is a CLIP ViT-H-14 (from ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``) fine-tuned on
Pick-a-Pic preference pairs, published as a transformers ``CLIPModel`` directory
(``yuvalkirstain/PickScore_v1``). The score of image ``x`` for prompt ``p`` is what the README's
``calc_probs`` computes before its softmax::

    PickScore(x, p) = exp(logit_scale) * < f_img(x) / ||f_img(x)||, f_txt(p) / ||f_txt(p)|| >

with ``f_img = visual_projection(vision_model(x).pooler_output)`` and
``f_txt = text_projection(text_model(p).pooler_output)`` (``get_image_features`` /
``get_text_features``); ``exp(logit_scale)`` is the checkpoint's learned temperature (about 100
for v1). ``group_softmax=True`` returns the README's probabilities instead: the softmax of the
scores over the images of each group (GRPO's group of one prompt).

Model: transformers' ``CLIPModel`` built from the directory's ``config.json`` (without random
initialisation) and filled by a strict load (:func:`vargo.core.checkpoint.read_state_dict`:
``model.safetensors`` or ``pytorch_model.bin`` through ``torch.load(weights_only=True)``, never
code; every missing, unexpected or mis-shaped key raises). Files written by transformers < 4.31
carry the ``*.embeddings.position_ids`` buffers: they are derived (``arange``), checked and
dropped. Tokenizer: transformers' ``CLIPTokenizer`` (the tokenizers-backed one the README's
``AutoProcessor`` loads) from a local directory, ``padding=True, truncation=True,
max_length=77``; by default the model directory, else ``tokenizer_dir`` (the README's processor
repository, ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``). Nothing is downloaded.

Preprocessing (the PIL-based ``CLIPImageProcessor`` of that processor: transformers 4.27.3 is
what PickScore's README pins, 4.36.2 is what was checked; later versions may default to a
torchvision-based "fast" processor): the 8-bit image, shortest side resized to the model's
image size with PIL's bicubic filter, centre crop with the offset rounded down
(``(h - 224) // 2``, torchvision rounds to nearest), ``/ 255``, OpenAI mean/std. Here on float
tensors, batched, on the images' device (:func:`~vargo.components.rewards.clip_score.
clip_preprocess` with ``crop='floor'``); the remaining difference to PIL is its 8-bit rounding
of the resized image (about one level). A ``preprocessor_config.json`` next to the tokenizer
overrides size, mean and std.

Parity with the reference (measured in-session, pinned in ``tests/fixtures/reward_parity.json``
and checked by ``tests/test_rewards_pickscore.py``): in a separate environment (transformers
4.36.2, torch 2.14 CPU) the README's ``calc_probs`` steps ran as written (``CLIPProcessor`` of
``CLIPTokenizerFast`` and ``CLIPImageProcessor``, ``get_image_features`` /
``get_text_features``, normalisation, ``logit_scale.exp() * text_embs @ image_embs.T``, softmax)
on a tiny CLIP (2 + 2 layers, width 32, 32 px, patch 8, a 524-token byte-level BPE vocabulary,
exp(logit_scale) = 50) whose weights are a deterministic function of the parameter names
(``tests/reward_parity_common.py``), for 6 prompts (one truncated at 77 tokens) x 6 images
(two 32 x 32, unresized; 48 x 40, 64 x 64, 40 x 56 downscaled; 24 x 24 upscaled). This head,
loading the same weights from a ``model.safetensors`` directory, on scores in [-22.4, 19.0]:
identical token ids; on the reference processor's pixels (rebuilt with PIL, their sums pinned)
largest difference 1.2e-5 and softmax probabilities within 5.4e-7; on float images through its
own preprocessing 1.3e-5 on the unresized images and 0.083 on the resized ones (PIL's 8-bit
rounding of the resized pixels).
