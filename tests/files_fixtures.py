"""Fixtures of the files source's tests (registered by tests/conftest.py through pytest_plugins):
a local folder and S3 through a real S3-compatible HTTP server, moto's server mode
(``ThreadedMotoServer``) on 127.0.0.1 and a free port, spoken to by boto3 as MinIO or AWS would be."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest

AWS_ENV = {"AWS_ACCESS_KEY_ID": "paynorm-test", "AWS_SECRET_ACCESS_KEY": "paynorm-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto import server as moto_server

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in AWS_ENV.items():
            mp.setenv(k, v)
        for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(k, raising=False)
        yield f"http://{host}:{port}"
    server.stop()


class LocalFiles:
    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = str(root)
        self.endpoint = ""

    def put(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def key(self, rel: str) -> str:
        return str((self.root / rel).resolve())

    def cli_args(self) -> list[str]:
        return [self.uri]


class S3Files:
    kind = "s3"

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.bucket = f"lake-{uuid.uuid4().hex[:12]}"
        import boto3

        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.client.create_bucket(Bucket=self.bucket)
        self.uri = f"s3://{self.bucket}/exports"

    def put(self, rel: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"exports/{rel}", Body=data)

    def key(self, rel: str) -> str:
        return f"s3://{self.bucket}/exports/{rel}"

    def cli_args(self) -> list[str]:
        return [self.uri, "--endpoint-url", self.endpoint]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LocalFiles | S3Files:
    if request.param == "local":
        return LocalFiles(tmp_path / "lake")
    return S3Files(request.getfixturevalue("s3_endpoint"))
