"""Hostile clients: schemathesis generates requests from the committed OpenAPI document and
checks a live Myelin's answers against it — no 5xx, no status code, content type or body the
document does not declare.

Bounded for CI: a fixed seed and MYELIN_SCHEMATHESIS_EXAMPLES examples per operation (default
20). Endpoints that end the test user's session are left out, or every later case would only
test `M_UNKNOWN_TOKEN`.
"""

import json
import os
import subprocess
import tempfile
import urllib.request

from test_nio import ROOT, homeserver  # noqa: F401  (the fixture)

EXCLUDED = r"logout|delete_devices|devices/\{deviceId\}|account/password|account/deactivate"


def register(url, username):
    body = json.dumps({"username": username, "password": "pw-schemathesis", "auth": {"type": "m.login.dummy"}})
    request = urllib.request.Request(
        f"{url}/_matrix/client/v3/register",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["access_token"]


def test_generated_requests_match_the_document(homeserver):  # noqa: F811
    url, _server_name = homeserver
    token = register(url, "schemathesis")
    examples = os.environ.get("MYELIN_SCHEMATHESIS_EXAMPLES", "20")
    # Its own working directory: schemathesis writes a cache folder there.
    with tempfile.TemporaryDirectory() as cwd:
        result = subprocess.run(
            [
                "st",
                "run",
                os.path.join(ROOT, "openapi", "myelin.json"),
                "--url",
                url,
                "-H",
                f"Authorization: Bearer {token}",
                "--max-examples",
                examples,
                "--seed",
                "20261121",
                "--exclude-path-regex",
                EXCLUDED,
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                "--no-color",
            ],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    summary = result.stdout[-6000:]
    print(summary)
    assert result.returncode == 0, summary + result.stderr[-2000:]
