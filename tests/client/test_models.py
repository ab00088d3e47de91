"""The client's models match the OpenAPI document the app serves, field for field (that the
client runs with httpx, pydantic and rich alone: ``test_cli.py`` runs it in such a venv)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from stockroom_client import models


def _client_models() -> dict[str, type[BaseModel]]:
    found = {}
    for name in dir(models):
        value = getattr(models, name)
        if (
            isinstance(value, type)
            and issubclass(value, models.Model)
            and value.__module__ == models.__name__
            and value not in (models.Model, models.Page)
        ):
            found[name] = value
    return found


def test_every_model_has_the_fields_of_its_schema_in_the_openapi_document(app: Any) -> None:
    schemas = app.openapi()["components"]["schemas"]
    not_schemas = {"ImportLineError", "ImportResult"}  # an import job's ``result``
    checked = 0
    for name, model in _client_models().items():
        if name in not_schemas:
            continue
        assert name in schemas, f"{name} is not a schema of the API"
        schema = schemas[name]
        ours = model.model_json_schema()
        assert set(ours["properties"]) == set(schema["properties"]), name
        assert set(ours.get("required", [])) == set(schema.get("required", [])), name
        checked += 1
    page = schemas["Page_Job_"]
    assert set(models.Page[models.Job].model_json_schema()["properties"]) == set(page["properties"])
    assert checked >= 20


def test_every_response_schema_of_the_api_has_a_client_model(app: Any) -> None:
    document = app.openapi()
    answered = set()
    for operations in document["paths"].values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                for media in response.get("content", {}).values():
                    ref = media.get("schema", {}).get("$ref") or media.get("schema", {}).get(
                        "items", {}
                    ).get("$ref")
                    if ref:
                        answered.add(ref.rsplit("/", 1)[-1])
    answered -= {"HTTPValidationError"}  # answered as problem+json
    # a problem is raised as an exception (stockroom_client.errors), not returned as a model
    assert {"type", "title", "status", "detail", "errors"} <= set(
        document["components"]["schemas"]["Problem"]["properties"]
    )
    answered -= {"Problem"}
    pages = {name for name in answered if name.startswith("Page_")}
    assert answered - pages <= set(_client_models()), answered - pages - set(_client_models())
