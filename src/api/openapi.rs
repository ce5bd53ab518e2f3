//! The OpenAPI 3 description, generated from the route table and the request/response types.

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::error::{ErrorItem, ResultInfo};
use super::{Access, BASE, routes};

/// The whole document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let error_item = generator.subschema_for::<ErrorItem>();
    let result_info = generator.subschema_for::<ResultInfo>();
    let mut paths: Map<String, Value> = Map::new();
    for r in routes() {
        let mut params: Vec<Value> = path_params(r.path)
            .map(|name| {
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
            })
            .collect();
        params.extend(r.query.iter().map(|q| {
            json!({"name": q.name, "in": "query", "required": q.required,
                   "description": q.description, "schema": {"type": "string"}})
        }));
        let result = (r.result)(&mut generator);
        let mut envelope = json!({
            "type": "object",
            "required": ["success", "errors", "messages", "result"],
            "properties": {
                "success": {"type": "boolean"},
                "errors": {"type": "array", "items": error_item},
                "messages": {"type": "array", "items": {"type": "string"}},
                "result": result,
            }
        });
        if r.paginated {
            envelope["properties"]["result_info"] = result_info.clone().to_value();
        }
        let mut op = json!({
            "operationId": r.operation_id,
            "summary": r.summary,
            "parameters": params,
            "responses": {
                "200": {"description": "Success", "content": {"application/json": {"schema": envelope}}},
                "400": {"$ref": "#/components/responses/Error"},
                "401": {"$ref": "#/components/responses/Error"},
                "403": {"$ref": "#/components/responses/Error"},
                "404": {"$ref": "#/components/responses/Error"},
                "409": {"$ref": "#/components/responses/Error"},
                "503": {"$ref": "#/components/responses/StorageUnavailable"},
                "507": {"$ref": "#/components/responses/StorageFull"},
            },
            "x-permission": match r.access {
                Access::Public => "none",
                Access::Read => "Workers CI Read or Workers CI Write",
                Access::Write => "Workers CI Write",
            },
        });
        if r.access == Access::Public {
            op["security"] = json!([]);
        }
        if let Some(body) = r.body {
            op["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": body(&mut generator)}}
            });
        }
        let entry = paths
            .entry(format!("{BASE}{}", r.path))
            .or_insert_with(|| json!({}));
        entry[r.method.as_str().to_ascii_lowercase()] = op;
    }
    let schemas: Map<String, Value> = generator.definitions().clone();
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Kiln — Workers Builds API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A self-hosted implementation of the Cloudflare Workers Builds REST API.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                "Error": error_response("An error envelope", &error_item),
                "StorageFull": error_response(
                    "Kiln's storage (its database or the disk under it) is full: code 10507, nothing \
                     was changed. Reads still work; retry after `Retry-After` seconds, once disk space \
                     is freed on the server.",
                    &error_item,
                ),
                "StorageUnavailable": error_response(
                    "Kiln's database is busy, overloaded or unreachable: code 10503, nothing was \
                     changed. Retry after `Retry-After` seconds.",
                    &error_item,
                ),
            },
            "securitySchemes": {
                "api_token": {"type": "http", "scheme": "bearer"},
                "api_email": {"type": "apiKey", "in": "header", "name": "X-Auth-Email"},
                "api_key": {"type": "apiKey", "in": "header", "name": "X-Auth-Key"},
            },
        },
        "security": [{"api_token": []}, {"api_email": [], "api_key": []}],
    })
}

/// An error response: the envelope with `success: false`.
fn error_response(description: &str, error_item: &schemars::Schema) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {
            "type": "object",
            "properties": {
                "success": {"type": "boolean", "enum": [false]},
                "errors": {"type": "array", "items": error_item},
                "messages": {"type": "array", "items": {"type": "string"}},
                "result": {"nullable": true},
            }
        }}}
    })
}

fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}
