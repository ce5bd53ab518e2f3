"""Schemathesis hooks for `scripts/fuzz-api`: a check that every answer is Kiln's envelope, a generator
for the log cursor format, and real resources for generated requests to name.

Loaded through SCHEMATHESIS_HOOKS; reads KILN_FUZZ_BASE (the server's URL), KILN_FUZZ_TOKEN (a write
token) and KILN_FUZZ_REPO (the owner/name of a repository the server can clone).
"""

import base64
import json
import os
import re

import requests
import schemathesis
from hypothesis import strategies as st

BASE = os.environ["KILN_FUZZ_BASE"].rstrip("/")
TOKEN = os.environ["KILN_FUZZ_TOKEN"]
OWNER, REPO = os.environ["KILN_FUZZ_REPO"].split("/")
ACCOUNT = "fuzzaccount"
WORKER = "fuzz-worker"
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _call(method, path, body=None):
    response = requests.request(
        method,
        f"{BASE}/client/v4/accounts/{ACCOUNT}/builds{path}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json=body,
        timeout=30,
    )
    envelope = response.json()
    if response.status_code != 200:
        raise RuntimeError(f"fixture {method} {path}: {response.status_code} {envelope}")
    return envelope["result"]


def _fixtures():
    """A connection, a build token, a trigger with a variable, a deploy hook, a queued build and an event
    subscription."""
    connection = _call(
        "PUT",
        "/repos/connections",
        {
            "provider_type": "github",
            "provider_account_id": "1001",
            "provider_account_name": OWNER,
            "repo_id": "2002",
            "repo_name": REPO,
        },
    )
    token = _call(
        "POST",
        "/tokens",
        {"build_token_name": "fuzz", "build_token_secret": "fuzz-secret", "cloudflare_token_id": "cf-fuzz"},
    )
    trigger = _call(
        "POST",
        "/triggers",
        {
            "external_script_id": WORKER,
            "repo_connection_uuid": connection["repo_connection_uuid"],
            "build_token_uuid": token["build_token_uuid"],
            "trigger_name": "fuzz",
            "branch_includes": ["main"],
        },
    )
    _call(
        "PATCH",
        f"/triggers/{trigger['trigger_uuid']}/environment_variables",
        {"FUZZ_VAR": {"value": "1", "is_secret": False}},
    )
    hook = _call("POST", f"/workers/{WORKER}/deploy_hooks", {"deploy_hook_name": "fuzz", "branch": "main"})
    build = _call("POST", f"/triggers/{trigger['trigger_uuid']}/builds", {"branch": "main"})
    subscription = _call("POST", "/event_subscriptions", {"name": "fuzz", "url": "http://127.0.0.1:9/fuzz"})
    # The live log stream of a queued build lasts until the build ends (never, without runners): the
    # stream is fuzzed on a stopped build, whose stream ends at once.
    stopped = _call("POST", f"/triggers/{trigger['trigger_uuid']}/builds", {"commit_hash": "0" * 40})
    _call("PUT", f"/builds/{stopped['build_uuid']}/cancel")
    STOPPED["build_uuid"] = stopped["build_uuid"]
    return {
        "account_id": ACCOUNT,
        "external_script_id": WORKER,
        "repo_connection_uuid": connection["repo_connection_uuid"],
        "build_token_uuid": token["build_token_uuid"],
        "trigger_uuid": trigger["trigger_uuid"],
        "deploy_hook_uuid": hook["deploy_hook_uuid"],
        "build_uuid": build["build_uuid"],
        "event_subscription_id": subscription["id"],
        "environment_variable_key": "FUZZ_VAR",
        "provider_type": "github",
        "provider_account_id": "1001",
        "repo_id": "2002",
    }


STOPPED = {}
REAL = _fixtures()


# Operations whose successful answers are not the envelope (they are described as they are): the
# Prometheus text of `GET /metrics` and the `{"status": "ok"}` of `GET /healthz`.
NOT_ENVELOPES = {"getMetrics", "getHealth"}


@schemathesis.check
def envelope(ctx, response, case):
    """Every answer is `{success, errors, messages, result}`, an error with at least one coded error
    (a success of an operation in NOT_ENVELOPES excepted); the live log stream's events end with an
    `end` event."""
    operation_id = case.operation.definition.raw.get("operationId", "")
    if operation_id in NOT_ENVELOPES and 200 <= response.status_code < 300:
        return None
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    if response.status_code == 200 and operation_id == "streamBuildLogs":
        if content_type != "text/event-stream":
            raise AssertionError(f"content-type is {content_type!r}, not text/event-stream")
        if b"event: end" not in response.content:
            raise AssertionError(f"the stream has no end event: {response.content[-200:]!r}")
        return
    if not content_type.startswith("application/json"):
        raise AssertionError(f"content-type is {content_type!r}, not application/json")
    try:
        body = json.loads(response.content)
    except ValueError as e:
        raise AssertionError(f"the body is not JSON ({e}): {response.content[:200]!r}") from None
    if not isinstance(body, dict):
        raise AssertionError(f"the body is not an object: {body!r:.200}")
    missing = [k for k in ("success", "errors", "messages", "result") if k not in body]
    if missing:
        raise AssertionError(f"the envelope lacks {missing}: {body!r:.200}")
    errors = body["errors"]
    if not isinstance(errors, list) or not all(
        isinstance(e, dict) and isinstance(e.get("code"), int) and isinstance(e.get("message"), str) for e in errors
    ):
        raise AssertionError(f"errors is not a list of {{code, message}}: {errors!r:.200}")
    if not isinstance(body["messages"], list):
        raise AssertionError("messages is not a list")
    if 200 <= response.status_code < 300:
        if body["success"] is not True or errors:
            raise AssertionError(f"a {response.status_code} answer must be a success: {body!r:.200}")
    elif body["success"] is not False or not errors or body["result"] is not None:
        raise AssertionError(f"a {response.status_code} answer must be an error envelope: {body!r:.200}")


def _cursor(line, timestamp):
    raw = json.dumps({"line": line, "timestamp": timestamp}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# The cursors `getBuildLogs` returns: a line number and the seconds of that line.
schemathesis.openapi.format(
    "kiln-log-cursor",
    st.builds(_cursor, st.integers(0, 2**53), st.integers(0, 2**40)),
)


def _operation(ctx):
    return ctx.operation.definition.raw.get("operationId", "") if ctx.operation else ""


@schemathesis.hook
def flatmap_path_parameters(ctx, path_parameters):
    """Half the time, path parameters name the resources made above (never for a delete)."""
    if not path_parameters or ctx.operation.method.upper() == "DELETE":
        return st.just(path_parameters)
    real = dict(path_parameters)
    real.update({k: v for k, v in REAL.items() if k in real})
    if _operation(ctx) == "streamBuildLogs":
        real.update(STOPPED)
    return st.sampled_from([path_parameters, real])


@schemathesis.hook
def flatmap_query(ctx, query):
    """Half the time, config autofill asks for the branch the repository has."""
    if _operation(ctx) != "getWorkerConfigAutofill" or not isinstance(query, dict):
        return st.just(query)
    return st.sampled_from([query, {**query, "branch": "main"}])


@schemathesis.hook
def filter_case(ctx, case):
    """The resources made above stay: no delete of them (stateful runs find their ids in lists)."""
    if case.method.upper() != "DELETE":
        return True
    kept = {
        REAL[k]
        for k in ("repo_connection_uuid", "build_token_uuid", "trigger_uuid", "deploy_hook_uuid", "event_subscription_id")
    }
    return not kept.intersection(map(str, (case.path_parameters or {}).values()))


def _unfinished(account, build):
    """Whether `build` of `account` exists and has not stopped."""
    if not isinstance(account, str) or not isinstance(build, str) or not UUID.match(build):
        return False
    try:
        response = requests.get(
            f"{BASE}/client/v4/accounts/{requests.utils.quote(account, safe='')}/builds/builds/{build}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        return response.status_code == 200 and response.json()["result"]["status"] != "stopped"
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return False


@schemathesis.hook
def map_case(ctx, case):
    """UUIDs in trigger bodies name the resources made above, in their account: the description
    promises that a valid request is accepted, and a reference to nothing is not valid (400 names the
    field). A live log stream of a build that has not stopped would not end: it names the stopped one."""
    params = case.path_parameters or {}
    if _operation(ctx) == "streamBuildLogs" and _unfinished(params.get("account_id"), params.get("build_uuid")):
        # A build that has not stopped streams until it does: the stopped one is streamed instead.
        case.path_parameters.update(account_id=ACCOUNT, **STOPPED)
    if isinstance(case.body, dict) and _operation(ctx) in ("createTrigger", "updateTrigger"):
        for key in ("repo_connection_uuid", "build_token_uuid"):
            if isinstance(case.body.get(key), str) and UUID.match(case.body[key]):
                case.body[key] = REAL[key]
                case.path_parameters["account_id"] = ACCOUNT
    return case
