"""The OpenAPI document: every operation with its body (a schema and an example that decodes), its answers
and its errors as problem details; every reference resolves."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from control_api.app import ApiSettings, create_app
from control_api.openapi import BODIES, documented_for
from protocol.jobs import JobSpec, decode_job_spec, decode_untrusted


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    app = create_app(ApiSettings(dsn="postgresql://unused", etcd="http://127.0.0.1:1", cluster_secret="", dev=True))
    return documented_for(app)


def _operations(doc: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    return {op["operationId"]: (method, path, op) for path, item in doc["paths"].items()
            for method, op in item.items()}  # fmt: skip


def test_every_body_has_its_schema_and_an_example_that_decodes(doc: dict[str, Any]) -> None:
    ops = _operations(doc)
    assert set(BODIES) <= set(ops)
    for op_id, (kind, example) in BODIES.items():
        body = ops[op_id][2]["requestBody"]
        (media,) = {m for m in body["content"] if m != "application/json"} or {"application/json"}
        assert body["content"][media]["example"] == example
        raw = msgspec.json.encode(example)
        if kind is JobSpec:
            decode_job_spec(raw)
        elif kind is not None:
            decode_untrusted(raw, kind)
        for job in example.get("jobs", []) if isinstance(example, dict) else []:
            decode_job_spec(msgspec.json.encode(job))
    bodiless = {op_id for op_id, (method, _, op) in ops.items() if method in ("post", "put", "patch")
                and "requestBody" not in op}  # fmt: skip
    assert bodiless == {"pauseJob", "resumeJob", "triggerJob", "ackAlert", "rebalanceCluster", "pauseRebalancing",
                        "resumeRebalancing", "unpinShard", "drainNode", "undrainNode"}  # fmt: skip


def test_every_operation_documents_its_errors_as_problem_details(doc: dict[str, Any]) -> None:
    for op_id, (method, path, op) in _operations(doc).items():
        responses = op["responses"]
        assert "400" not in responses, op_id
        for status in ("401", "403", "422", "429", "503"):
            assert "application/problem+json" in responses[status]["content"], (op_id, status)
        assert any(s.startswith("2") for s in responses), op_id
        if "{" in path:
            assert "404" in responses, op_id
    ops = _operations(doc)
    assert {"412", "428"} <= set(ops["patchJob"][2]["responses"])
    assert ops["getJob"][2]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobView"}  # fmt: skip


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                assert ref.removeprefix("#/components/schemas/") in schemas, ref
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert doc["openapi"].startswith("3.1")
