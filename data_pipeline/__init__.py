"""The Ray pre-tokenisation job, installed as `mvar_dist.data_pipeline`.

    sources   list ImageFolder / tar / s3:// inputs      augment  decode, reject, K crop/flip variants
    stages    Ray Data decode tasks + encoder actors     writer   Parquet shards, completion records, verify
    job       plan, resume, run, manifest                progress periodic progress lines
    reshard   rewrite a class-sorted dataset into class-mixed shards (no re-encoding)
"""
from .augment import SCHEME, VariantSpec
from .job import JobHooks, TokenizeOptions, run_tokenize, tokenize
from .reshard import ReshardOptions, reshard
from .writer import load_rows, verify

__all__ = ["SCHEME", "VariantSpec", "JobHooks", "TokenizeOptions", "run_tokenize", "tokenize", "verify", "load_rows",
           "ReshardOptions", "reshard"]
