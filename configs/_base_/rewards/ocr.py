# OCR reward for text rendering (components/rewards/ocr.py): 1 - NED between the text PP-OCRv5
# reads in the image and the text the prompt quotes (Flow-GRPO's reward); word accuracy and NED
# logged. regions=True also reports the detected text boxes as masks (for mask propagation).
# Files (download them yourself; nothing is downloaded at run time; a missing one stops the
# build with one line naming it and where it is published):
#   checkpoints/ocr/PP-OCRv5_mobile_det_safetensors/{config.json,model.safetensors,
#                                                    preprocessor_config.json}
#   checkpoints/ocr/PP-OCRv5_mobile_rec_safetensors/{...the same three files}
#     https://huggingface.co/PaddlePaddle (PP-OCRv5_mobile_det_safetensors,
#     PP-OCRv5_mobile_rec_safetensors)
rewards = dict(ocr=dict(
    type='OcrReward', det_checkpoint='checkpoints/ocr/PP-OCRv5_mobile_det_safetensors',
    rec_checkpoint='checkpoints/ocr/PP-OCRv5_mobile_rec_safetensors'))
