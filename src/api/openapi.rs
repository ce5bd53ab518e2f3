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
                "Error": {
                    "description": "An error envelope",
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {
                            "success": {"type": "boolean", "enum": [false]},
                            "errors": {"type": "array", "items": error_item},
                            "messages": {"type": "array", "items": {"type": "string"}},
                            "result": {"nullable": true},
                        }
                    }}}
                }
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

fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}
