"""A real S3 endpoint for tests: moto's threaded server on 127.0.0.1 with a fresh bucket.

Use it from any test module with `from s3_utils import moto_s3  # noqa: F401` (pytest puts tests/ on
sys.path), then take the fixture `moto_s3` -> (endpoint_url, bucket). It sets the standard AWS_* test
variables (fake credentials, no metadata lookups, AWS_ENDPOINT_URL) for the duration of the module,
so s3fs/boto3/pyarrow and Ray workers started afterwards all reach the local server.
"""
from __future__ import annotations

import os
import socket
import uuid

import pytest

TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_s3():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*TEST_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(TEST_ENV)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        yield endpoint, bucket
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
