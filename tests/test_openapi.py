"""/openapi.json (OpenAPI 3.1 from the routes and models) and the offline /docs page."""

from __future__ import annotations

import re


def test_it_describes_the_api_in_openapi_3_1(client):
    resp = client.get("/openapi.json")
    assert resp.status_code == 200
    spec = resp.get_json()
    assert spec["openapi"].startswith("3.1")
    create = spec["paths"]["/api/v1/keys"]["post"]
    assert create["x-required-role"] == "admin"
    ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    model = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert model["additionalProperties"] is False
    assert "name" in model["required"]
    assert "/api/v1/keys/{key_id}" in spec["paths"]
    assert set(spec["components"]["securitySchemes"]) == {"apiKey", "bearer"}


def test_it_lists_every_api_route(app, client):
    spec = client.get("/openapi.json").get_json()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
                assert method.lower() in spec["paths"][path], f"{method} {path}"


def test_it_renders_the_docs_page_offline(client):
    resp = client.get("/docs")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert "/api/v1/keys" in html
    assert "X-API-Key" in html
    # Works offline and under the CSP: nothing fetched from elsewhere, no inline script.
    assert not re.search(r"""(src|href)=["']https?://""", html)
    for attrs, body in re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S):
        assert 'src="/' in attrs and not body.strip(), attrs
