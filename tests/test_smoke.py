from fastapi.testclient import TestClient

from finsecure.core import migrate


def test_health__database_up(client: TestClient) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["status"] == "ok"
    assert body["schema_revision"] == migrate.head_revision()
