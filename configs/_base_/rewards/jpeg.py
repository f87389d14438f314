# DDPO's JPEG compressibility reward (arXiv 2305.13301): r = -size_kB of the quality-95 JPEG.
rewards = dict(jpeg=dict(type='JpegCompressibilityReward', quality=95))
