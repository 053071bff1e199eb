"""Token shards: the on-disk contract (shards.py) and the elastic streaming loader."""
