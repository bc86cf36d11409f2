"""Encoding: padded image batches -> region descriptors, in one jit.

batch_encoder   one padded batch -> descriptors: the jitted chain
file_encoder    image files -> stores, one method a pass: reading, U^1
method_encoder  image files -> a store per method from one VGG19 pass
passes          what both share: batch guards, outputs -> stores
resources       memory maps, compiled code (compilations), clear errors
parallel        device mesh (jax.sharding) and hosts (jax.distributed)
"""

from regagg_jax.encoding import batch_encoder
from regagg_jax.encoding import file_encoder
from regagg_jax.encoding import method_encoder
from regagg_jax.encoding import parallel
from regagg_jax.encoding import passes
from regagg_jax.encoding import resources
from regagg_jax.encoding.batch_encoder import encode_batch
from regagg_jax.encoding.file_encoder import encode_rows
from regagg_jax.encoding.file_encoder import fit_reduction
from regagg_jax.encoding.method_encoder import encode_methods
from regagg_jax.encoding.resources import compilations
