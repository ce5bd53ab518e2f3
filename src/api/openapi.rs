//! The OpenAPI 3.1 description, generated from the route table and the request/response types.
//!
//! Request schemas state the rules Kiln enforces (see [`super::schema`]), so that a request the
//! description allows is accepted. Schemas are JSON Schema 2020-12, the dialect of OpenAPI 3.1, read
//! as requests are (`Option` fields may be absent; responses always carry them, as `null`).

use schemars::generate::{Contract, SchemaSettings};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::error::{ErrorItem, ResultInfo};
use super::extract::{DEFAULT_PER_PAGE, MAX_PAGE, MAX_PER_PAGE};
use super::{Access, BASE, QueryDoc, routes, schema};
use crate::domain::{
    AccountId, BuildId, BuildTokenId, DeliveryId, DeployHookId, EnvVarKey, MAX_IDS_PER_QUERY,
    ProviderType, RepoConnectionId, SubscriptionId, TriggerId, VersionId, WorkerId,
};

/// A generator whose `$ref`s point into `components/schemas`. One contract for both directions
/// ([`Contract::Deserialize`]): a type used in requests and responses has one schema.
fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
            s.contract = Contract::Deserialize;
        })
        .into_generator()
}

/// The whole document.
pub fn document() -> Value {
    let mut g = generator();
    let error_item = g.subschema_for::<ErrorItem>();
    let result_info = g.subschema_for::<ResultInfo>();
    let mut paths: Map<String, Value> = Map::new();
    for r in routes() {
        let mut params: Vec<Value> = path_params(r.path)
            .map(|name| {
                // A parameter without a rule is any string (a unit test keeps that from happening).
                let schema = path_param_schema(name, &mut g)
                    .map_or_else(|| json!({"type": "string"}), |s| s.to_value());
                json!({"name": name, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        params.extend(r.query.iter().map(|q| query_param(q, &mut g)));
        let result = (r.result)(&mut g);
        let mut envelope = json!({
            "type": "object",
            "required": ["success", "errors", "messages", "result"],
            "properties": {
                "success": {"const": true},
                "errors": {"type": "array", "maxItems": 0},
                "messages": {"type": "array", "items": {"type": "string"}},
                "result": result,
            }
        });
        if r.paginated {
            envelope["properties"]["result_info"] = result_info.clone().to_value();
            envelope["required"] =
                json!(["success", "errors", "messages", "result", "result_info"]);
        }
        let success = if r.created { "201" } else { "200" };
        let success_response = if r.events {
            params.push(last_event_id_param());
            event_stream_response(result)
        } else {
            json!({"description": "Success", "content": {"application/json": {"schema": envelope}}})
        };
        let mut op = json!({
            "operationId": r.operation_id,
            "summary": r.summary,
            "parameters": params,
            "responses": {
                success: success_response,
                "503": {"$ref": "#/components/responses/StorageUnavailable"},
                "507": {"$ref": "#/components/responses/StorageFull"},
                "default": {"$ref": "#/components/responses/Error"},
            },
            "x-permission": match r.access {
                Access::Public => "none",
                Access::Read => "Workers CI Read or Workers CI Write",
                Access::Write => "Workers CI Write",
                Access::Caller => "any valid credentials",
            },
        });
        if r.access == Access::Public {
            op["security"] = json!([]);
        }
        if let Some(body) = r.body {
            op["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": body(&mut g)}}
            });
        }
        let entry = paths
            .entry(format!("{BASE}{}", r.path))
            .or_insert_with(|| json!({}));
        entry[r.method.as_str().to_ascii_lowercase()] = op;
    }
    paths.extend(super::health::describe(&mut g));
    let schemas = g.take_definitions(false);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Kiln — Workers Builds API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A self-hosted implementation of the Cloudflare Workers Builds REST API. \
                Every answer, success or error, is the envelope `{success, errors, messages, result}` \
                (except `/metrics` and `/healthz`). Every answer to a request whose head could be read \
                carries an `x-request-id` header: the \
                request's own when sane (1-128 visible ASCII characters other than `\"` and `\\`), \
                else a new UUID; Kiln's log lines about the request carry the same id.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                "Error": error_response(
                    "An error envelope: 400 invalid input, 401/403 credentials, 404 unknown resource or \
                     route, 405 method, 408 body too slow, 409 conflict, 413 body too large, 414 URI too \
                     long, 429 rate limited, 431 header fields too large, 500 internal",
                    &error_item,
                ),
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
                "metrics_token": {"type": "http", "scheme": "bearer",
                    "description": "The token given to Kiln with --metrics-token-file (GET /metrics only)"},
            },
        },
        "security": [{"api_token": []}, {"api_email": [], "api_key": []}],
    })
}

/// The `Last-Event-ID` header of an event stream: where a reconnecting client resumes.
fn last_event_id_param() -> Value {
    json!({
        "name": "Last-Event-ID", "in": "header", "required": false,
        "description": "The id of the last event received (an `EventSource` sends it when it \
                        reconnects): the stream resumes with the next line, none missed or repeated. \
                        Wins over `cursor`.",
        "schema": {"type": "string", "format": "kiln-log-cursor", "pattern": "^[A-Za-z0-9_-]*$"},
    })
}

/// A `text/event-stream` success whose `end` event carries `end` (the schema of its data). Before
/// OpenAPI 3.2 (`itemSchema`), the media type's `schema` describes each event: an object of its
/// fields, `data` being JSON text (`contentSchema`).
fn event_stream_response(end: Schema) -> Value {
    // As a plain array: schema tools do not all read `prefixItems` inside `contentSchema`.
    let line = json!({
        "type": "array",
        "description": "`[epoch_seconds, message]`: when the line was read (seconds with milliseconds) \
                        and the line, secrets masked",
        "items": {"type": ["number", "string"]},
        "minItems": 2, "maxItems": 2,
    });
    let json_text = |schema: Value| json!({"type": "string", "contentMediaType": "application/json", "contentSchema": schema});
    let event = json!({
        "oneOf": [
            {
                "type": "object",
                "required": ["event", "id", "data"],
                "properties": {
                    "event": {"const": "line"},
                    "id": {"type": "string", "format": "kiln-log-cursor", "pattern": "^[A-Za-z0-9_-]+$",
                           "description": "The position after the line: a getBuildLogs cursor"},
                    "data": json_text(line),
                },
            },
            {
                "type": "object",
                "required": ["event", "data"],
                "properties": {
                    "event": {"const": "end"},
                    "data": json_text(end.to_value()),
                },
            },
        ],
    });
    json!({
        "description": "Server-Sent Events, a Kiln extension. `event: line` for each stored line, \
            oldest first, then each new one as it is stored: `id` is the position after the line (a \
            `getBuildLogs` cursor) and `data` the line as `getBuildLogs` shows it. `event: end` once \
            the build has stopped and every line was sent, with its status and outcome; the stream \
            then closes. `: keep-alive` comments every 15 s by default. A stream that closes without \
            `end` (a client that reads nothing for the slow-reader timeout, a server stopping) is \
            resumed with `Last-Event-ID`. Too many streams open on the node: 429 with `Retry-After`.",
        "content": {"text/event-stream": {"schema": event}},
    })
}

/// An error response: the envelope with `success: false`.
fn error_response(description: &str, error_item: &schemars::Schema) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {
            "type": "object",
            "required": ["success", "errors", "messages", "result"],
            "properties": {
                "success": {"const": false},
                "errors": {"type": "array", "minItems": 1, "items": error_item},
                "messages": {"type": "array", "items": {"type": "string"}},
                "result": {"type": "null"},
            }
        }}}
    })
}

fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

/// The rule of a path parameter, by its name (the same name means the same rule on every route).
fn path_param_schema(name: &str, g: &mut SchemaGenerator) -> Option<Schema> {
    Some(match name {
        "account_id" => g.subschema_for::<AccountId>(),
        "external_script_id" => g.subschema_for::<WorkerId>(),
        "build_uuid" => g.subschema_for::<BuildId>(),
        "trigger_uuid" => g.subschema_for::<TriggerId>(),
        "build_token_uuid" => g.subschema_for::<BuildTokenId>(),
        "repo_connection_uuid" => g.subschema_for::<RepoConnectionId>(),
        "deploy_hook_uuid" => g.subschema_for::<DeployHookId>(),
        "event_subscription_id" => g.subschema_for::<SubscriptionId>(),
        "delivery_id" => g.subschema_for::<DeliveryId>(),
        "environment_variable_key" => EnvVarKey::json_schema(g),
        "provider_type" => g.subschema_for::<ProviderType>(),
        "provider_account_id" | "repo_id" => schema::path_segment_text(),
        _ => return None,
    })
}

/// A query parameter with its rule, by its name; a parameter without a rule is any string (a unit
/// test keeps that from happening).
fn query_param(q: &QueryDoc, g: &mut SchemaGenerator) -> Value {
    let mut param = json!({"name": q.name, "in": "query", "required": q.required,
                           "description": q.description});
    param["schema"] = query_param_schema(q.name, &mut param, g)
        .map_or_else(|| json!({"type": "string"}), |s| s.to_value());
    param
}

/// The rule of a query parameter (and its serialization style, set on `param`), by its name.
fn query_param_schema(name: &str, param: &mut Value, g: &mut SchemaGenerator) -> Option<Schema> {
    Some(match name {
        "page" => schemars::json_schema!({
            "type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1,
        }),
        "per_page" => schemars::json_schema!({
            "type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE, "default": DEFAULT_PER_PAGE,
        }),
        "external_script_ids" | "version_ids" => {
            // A comma-separated list: OpenAPI's `form` style without `explode`.
            param["style"] = json!("form");
            param["explode"] = json!(false);
            let item = if name == "version_ids" {
                g.subschema_for::<VersionId>()
            } else {
                schema::worker_id_list_item()
            };
            schemars::json_schema!({
                "type": "array", "minItems": 1, "maxItems": MAX_IDS_PER_QUERY, "items": item,
            })
        }
        "cursor" => schemars::json_schema!({
            "type": "string",
            "format": "kiln-log-cursor",
            "pattern": "^[A-Za-z0-9_-]*$",
            "description": "Only a cursor returned by this endpoint (URL-safe base64 of its position); \
                            empty or absent: the first page",
        }),
        "branch" => schema::branch(),
        "outcome" => g.subschema_for::<crate::domain::BuildOutcome>(),
        "root_directory" => schema::autofill_root_directory(),
        "patch_existing_previews" => schemars::json_schema!({
            "type": "string", "enum": ["true", "false"],
        }),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_has_a_rule() {
        let mut g = generator();
        for r in routes() {
            for name in path_params(r.path) {
                assert!(
                    path_param_schema(name, &mut g).is_some(),
                    "path parameter {name} of {} has no rule in path_param_schema",
                    r.operation_id
                );
            }
            for q in r.query {
                assert!(
                    query_param_schema(q.name, &mut json!({}), &mut g).is_some(),
                    "query parameter {} of {} has no rule in query_param_schema",
                    q.name,
                    r.operation_id
                );
            }
        }
        assert_eq!(document()["openapi"], "3.1.0");
    }
}
