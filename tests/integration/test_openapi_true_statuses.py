"""The OpenAPI document declares the statuses the routes really answer: a GET takes no body, so no
400/409/413 for a body; a path segment that is not an integer is 404 (no such path), not 400."""

from __future__ import annotations

from pathlib import Path

import httpx

from api.config import BrokerConfig
from api.runtime import Services
from tests.support import LiveServer, Wallet, broker_env, sign_in


def test_documented_statuses_match_the_answers(tmp_path: Path) -> None:
    with LiveServer(Services.build(BrokerConfig.from_env(broker_env(tmp_path)))) as live, \
            httpx.Client(base_url=live.url, timeout=30) as c:
        spec = c.get("/schema/openapi.json").json()
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                if method == "get":
                    assert "413" not in op["responses"] and "409" not in op["responses"], (path, op["responses"])
        record = spec["paths"]["/v1/audit/records/{seq}"]["get"]["responses"]
        assert sorted(record) == ["200", "401", "404"]
        jwt = sign_in(c, Wallet())["session_jwt"]
        auth = {"Authorization": f"Bearer {jwt}"}
        assert c.get("/v1/audit/records/abc", headers=auth).status_code == 404
        assert c.get("/v1/audit/records/0", headers=auth).status_code == 404
        assert c.get("/v1/audit/records/1").status_code == 401
        assert sorted(spec["paths"]["/v1/grant/list"]["get"]["responses"]) == ["200", "401"]
        assert c.get("/v1/grant/list").status_code == 401
