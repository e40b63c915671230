"""Admin routes: API-key protection and validation (the elastic controller is a small stand-in that
records calls; the real one is exercised in tests/runtime/test_elastic.py)."""

from types import SimpleNamespace

from fastapi.testclient import TestClient

from helix.errors import HelixInputError
from helix.server.app import create_app


class Recorder:
    def __init__(self):
        self.calls = []

    def drain(self, node):
        if node == "nope":
            raise HelixInputError("unknown node 'nope'", field="node")
        self.calls.append(("drain", node))

    def join(self, node):
        self.calls.append(("join", node))

    def status(self):
        return {"members": ["a"], "history": self.calls}


def _client(api_key):
    runtime = SimpleNamespace(elastic=Recorder())
    return TestClient(create_app(runtime, api_key=api_key)), runtime.elastic


def test_admin_needs_a_configured_key():
    client, elastic = _client(None)
    assert client.post("/admin/drain", json={"node": "a"}).status_code == 403
    assert elastic.calls == []


def test_admin_rejects_a_wrong_key_and_accepts_the_right_one():
    client, elastic = _client("sekret")
    bad = client.post("/admin/drain", json={"node": "a"}, headers={"Authorization": "Bearer x"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    ok = client.post("/admin/drain", json={"node": "a"}, headers={"Authorization": "Bearer sekret"})
    assert ok.status_code == 200 and elastic.calls == [("drain", "a")]
    status = client.get("/admin/membership", headers={"Authorization": "Bearer sekret"})
    assert status.json()["history"] == [["drain", "a"]]


def test_admin_bad_node_is_a_400():
    client, _ = _client("k")
    r = client.post("/admin/drain", json={"node": "nope"}, headers={"Authorization": "Bearer k"})
    assert r.status_code == 400 and "nope" in r.json()["error"]["message"]
    r = client.post("/admin/drain", json={"nodes": "a"}, headers={"Authorization": "Bearer k"})
    assert r.status_code == 400


def test_cli_admin_without_key_exits_2(capsys):
    import pytest

    from helix.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["admin", "drain", "t4-1", "--url", "http://127.0.0.1:9"])
    assert exc.value.code == 2 and "--api-key" in capsys.readouterr().err
