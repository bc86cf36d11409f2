"""Storage: stores of region descriptors, fits and results on disk.

atomic        files written whole (temporary + rename), sealed JSON, KILL_AT
records       Store and Fit in memory, their hashes, fits and results
store_format  the files of a store directory: header, shards (versioned)
store_header  what a store is made with: its header; parts checked against it
store_writer  stores written: built shard by shard, resumable; finalize, save
store_reader  finished stores checked and loaded; a store's U^1
graphs        diffusion's region graphs on disk: sharded, resumable, sha256
fingerprints  the images a store encoded (size, stat, sha256)
locks         one writer per store (fcntl lock file)
"""

from regagg_jax.storage import atomic
from regagg_jax.storage import graphs
from regagg_jax.storage import locks
from regagg_jax.storage import records
from regagg_jax.storage import store_format
from regagg_jax.storage import store_header
from regagg_jax.storage import store_reader
from regagg_jax.storage import store_writer
from regagg_jax.storage.records import Fit
from regagg_jax.storage.records import Store
from regagg_jax.storage.store_reader import load_store
from regagg_jax.storage.store_writer import build_store
from regagg_jax.storage.store_writer import save_store
