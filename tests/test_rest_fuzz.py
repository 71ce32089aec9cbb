"""The REST service's OpenAPI schema, fuzzed with Schemathesis: whatever the requests, with and
without the token, no 5xx. Runs in process (no network), with no worker started, so a
request that happens to be a valid upload is only queued."""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from ichseg.services.rest import Service, ServiceConfig, create_app  # noqa: E402

TOKEN = "fuzz-token"


def _app(store: Path):
    service = Service(ServiceConfig(store=store, token=TOKEN, max_upload_bytes=1 << 20))
    service.start = lambda: None  # no worker: nothing uploaded is predicted
    return create_app(service)


_STORE = Path(__import__("tempfile").mkdtemp(prefix="ichseg-fuzz-"))
schema = schemathesis.openapi.from_asgi("/openapi.json", _app(_STORE))


@pytest.fixture(autouse=True)
def _subnormal_floats_back():
    """Hypothesis draws subnormal floats; ``ichseg`` commands run in this process by earlier
    tests turn on PyTorch's flush-to-zero (``torch.set_flush_denormal``), processor state
    that Hypothesis refuses to work under. Put it back for these tests."""
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_flush_denormal(False)
    yield


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
def test_no_request_gets_a_server_error(case, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = case.call(headers=headers)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
