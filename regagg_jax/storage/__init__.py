"""Storage: stores of region descriptors, fits and results on disk.

atomic        files written whole (temporary + rename), sealed JSON, KILL_AT
records       Store and Fit in memory, their hashes, fits and results
store_format  the files of a store directory: header, shards (versioned)
store_io      stores on disk: built shard by shard, resumable; load, save
graphs        diffusion's region graphs on disk: sharded, resumable, sha256
fingerprints  the images a store encoded (size, stat, sha256)
locks         one writer per store (fcntl lock file)
"""

from regagg_jax.storage import atomic
from regagg_jax.storage import graphs
from regagg_jax.storage import locks
from regagg_jax.storage import records
from regagg_jax.storage import store_format
from regagg_jax.storage import store_io
from regagg_jax.storage.records import Fit
from regagg_jax.storage.records import Store
from regagg_jax.storage.store_io import build_store
from regagg_jax.storage.store_io import load_store
from regagg_jax.storage.store_io import save_store
