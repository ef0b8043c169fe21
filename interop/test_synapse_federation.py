"""Federation between Myelin and Synapse, the reference homeserver, on loopback: each serves
the Server-Server API over TLS with a certificate from a throwaway CA that the other trusts
(Synapse with `federation_custom_ca_list` and certificate checks on). Both directions of:
profiles, device keys and one-time keys, media, to-device messages, room aliases and public room
directories.

Needs `pip install matrix-synapse` and `cargo build --bin myelin-server` (MYELIN_SERVER_BIN
overrides the binary). Skipped when Synapse is not installed.
"""

import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

pytest.importorskip("synapse")
vodozemac = pytest.importorskip("vodozemac")

from cryptography import x509  # noqa: E402  (Synapse depends on it)
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from test_nio import ROOT  # noqa: E402

import ipaddress  # noqa: E402

PASSWORD = "interop-password-123"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_pem(path, data):
    with open(path, "wb") as f:
        f.write(data)


def make_certificates(folder):
    """A CA and one leaf per server (for localhost and 127.0.0.1); returns their paths."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "interop CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = os.path.join(folder, "ca.pem")
    write_pem(ca_path, ca.public_bytes(serialization.Encoding.PEM))
    leaves = {}
    for name in ("synapse", "myelin"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        cert_path, key_path = os.path.join(folder, f"{name}.pem"), os.path.join(folder, f"{name}.key")
        write_pem(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        write_pem(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        leaves[name] = (cert_path, key_path)
    return ca_path, leaves


def wait_for(url, proc, what):
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"{what} did not start")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def servers():
    with tempfile.TemporaryDirectory() as folder:
        ca, leaves = make_certificates(folder)
        syn_fed, syn_client, my_fed, my_client = (free_port() for _ in range(4))
        syn_dir = os.path.join(folder, "synapse")
        os.mkdir(syn_dir)
        config = {
            "server_name": f"localhost:{syn_fed}",
            "pid_file": os.path.join(syn_dir, "homeserver.pid"),
            "report_stats": False,
            "signing_key_path": os.path.join(syn_dir, "signing.key"),
            "media_store_path": os.path.join(syn_dir, "media"),
            "listeners": [
                {"port": syn_fed, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": True,
                 "resources": [{"names": ["federation"]}]},
                {"port": syn_client, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
                 "resources": [{"names": ["client"]}]},
            ],
            "tls_certificate_path": leaves["synapse"][0],
            "tls_private_key_path": leaves["synapse"][1],
            "federation_custom_ca_list": [ca],
            "federation_verify_certificates": True,
            "ip_range_whitelist": ["127.0.0.0/8"],
            "database": {"name": "sqlite3", "args": {"database": os.path.join(syn_dir, "homeserver.db")}},
            "enable_registration": True,
            "enable_registration_without_verification": True,
            "allow_public_rooms_over_federation": True,
            # Recent Synapse lets only admins publish rooms by default.
            "room_list_publication_rules": [{"action": "allow"}],
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "macaroon_secret_key": "interop-macaroon-secret",
            "form_secret": "interop-form-secret",
            "rc_registration": {"per_second": 1000, "burst_count": 1000},
            "rc_message": {"per_second": 1000, "burst_count": 1000},
        }
        config_path = os.path.join(syn_dir, "homeserver.yaml")
        with open(config_path, "w") as f:
            json.dump(config, f)  # JSON is YAML
        python = sys.executable
        subprocess.run([python, "-m", "synapse.app.homeserver", "-c", config_path, "--generate-keys"],
                       check=True, capture_output=True, cwd=syn_dir)
        synapse_log = open(os.path.join(syn_dir, "stdout.log"), "w")
        synapse = subprocess.Popen([python, "-m", "synapse.app.homeserver", "-c", config_path],
                                   cwd=syn_dir, stdout=synapse_log, stderr=subprocess.STDOUT)
        binary = os.environ.get("MYELIN_SERVER_BIN", os.path.join(ROOT, "target", "debug", "myelin-server"))
        env = {
            "PATH": os.environ.get("PATH", ""),
            "MYELIN_SERVER_NAME": f"localhost:{my_fed}",
            "MYELIN_DATA_DIR": os.path.join(folder, "myelin"),
            "MYELIN_LISTEN__CLIENT": f"127.0.0.1:{my_client}",
            "MYELIN_LISTEN__FEDERATION": f"127.0.0.1:{my_fed}",
            "MYELIN_FEDERATION__ENABLED": "true",
            "MYELIN_FEDERATION__TLS_CERT": leaves["myelin"][0],
            "MYELIN_FEDERATION__TLS_KEY": leaves["myelin"][1],
            "MYELIN_FEDERATION__TRUSTED_CA": ca,
            "MYELIN_FEDERATION__ALLOW_PRIVATE_ADDRESSES": "true",
            "MYELIN_RATE_LIMITS__ENABLED": "false",
        }
        myelin_log = open(os.path.join(folder, "myelin.log"), "w")
        myelin = subprocess.Popen([binary], env=env, stdout=myelin_log, stderr=subprocess.STDOUT)
        try:
            wait_for(f"http://127.0.0.1:{syn_client}/_matrix/client/versions", synapse, "synapse")
            wait_for(f"http://127.0.0.1:{my_client}/_matrix/client/versions", myelin, "myelin-server")
            yield {
                "synapse": (f"http://127.0.0.1:{syn_client}", f"localhost:{syn_fed}"),
                "myelin": (f"http://127.0.0.1:{my_client}", f"localhost:{my_fed}"),
            }
        finally:
            myelin.terminate()
            synapse.terminate()
            myelin.wait(timeout=30)
            synapse.wait(timeout=30)


class User:
    def __init__(self, base, name):
        self.base = base
        status, body = self.call("POST", "/register", {"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}})
        if status == 401:  # Synapse wants the session of its dummy stage
            status, body = self.call("POST", "/register", {"username": name, "password": PASSWORD,
                                                          "auth": {"type": "m.login.dummy", "session": body["session"]}})
        assert status == 200, body
        self.user_id, self.token, self.device_id = body["user_id"], body["access_token"], body["device_id"]
        self.since = self.call("GET", "/sync?timeout=0")[1]["next_batch"]

    def call(self, method, path, body=None):
        request = urllib.request.Request(self.base + "/_matrix/client/v3" + path, method=method,
                                         data=None if body is None else json.dumps(body).encode())
        request.add_header("Content-Type", "application/json")
        if getattr(self, "token", None):
            request.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def raw(self, method, path, data=None, content_type=None):
        request = urllib.request.Request(self.base + path, method=method, data=data)
        request.add_header("Authorization", "Bearer " + self.token)
        if content_type:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers.get("Content-Type"), response.read()

    def ok(self, method, path, body=None):
        status, answer = self.call(method, path, body)
        assert status == 200, (method, path, status, answer)
        return answer

    def to_device_events(self, count=1, rounds=20):
        got = []
        for _ in range(rounds):
            answer = self.ok("GET", f"/sync?timeout=2000&since={self.since}")
            self.since = answer["next_batch"]
            got += answer.get("to_device", {}).get("events", [])
            if len(got) >= count:
                break
        return got

    def upload_keys(self):
        """Signed device keys and two signed one-time keys, as a real client would publish."""
        canonical = lambda o: json.dumps(o, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        account = vodozemac.Account()
        sign = lambda o: {self.user_id: {f"ed25519:{self.device_id}": account.sign(canonical(o)).to_base64()}}
        keys = {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {f"curve25519:{self.device_id}": account.curve25519_key.to_base64(),
                     f"ed25519:{self.device_id}": account.ed25519_key.to_base64()},
        }
        keys["signatures"] = sign(keys)
        account.generate_one_time_keys(2)
        one_time = {}
        for key_id, key in account.one_time_keys.items():
            signed = {"key": key.to_base64()}
            signed["signatures"] = sign(signed)
            one_time[f"signed_curve25519:{key_id}"] = signed
        self.ok("POST", "/keys/upload", {"device_keys": keys, "one_time_keys": one_time})
        return keys, set(one_time)


q = urllib.parse.quote


@pytest.mark.parametrize("asker,owner", [("myelin", "synapse"), ("synapse", "myelin")])
def test_profiles_keys_to_device_and_directory_across_implementations(servers, asker, owner):
    suffix = f"{asker[:3]}{int(time.time() * 1000) % 1_000_000}"
    me = User(servers[asker][0], "asker" + suffix)
    them = User(servers[owner][0], "owner" + suffix)
    them_server = servers[owner][1]

    # First: Synapse fills its directory from room statistics a moment after the room exists.
    room = them.ok("POST", "/createRoom", {"room_alias_name": "lobby" + suffix, "visibility": "public",
                                          "preset": "public_chat", "name": "Lobby " + suffix})

    # Profiles.
    them.ok("PUT", f"/profile/{q(them.user_id)}/displayname", {"displayname": f"On {owner}"})
    assert me.ok("GET", f"/profile/{q(them.user_id)}")["displayname"] == f"On {owner}"
    assert me.ok("GET", f"/profile/{q(them.user_id)}/displayname") == {"displayname": f"On {owner}"}

    # Device keys, unchanged (signatures included), and each one-time key handed out once.
    keys, one_time = them.upload_keys()
    answer = me.ok("POST", "/keys/query", {"device_keys": {them.user_id: []}})
    assert answer["failures"] == {}, answer
    device = answer["device_keys"][them.user_id][them.device_id]
    assert device["keys"] == keys["keys"] and device["signatures"][them.user_id] == keys["signatures"][them.user_id]
    claimed = set()
    for _ in range(2):
        answer = me.ok("POST", "/keys/claim", {"one_time_keys": {them.user_id: {them.device_id: "signed_curve25519"}}})
        claimed |= set(answer["one_time_keys"][them.user_id][them.device_id])
    assert claimed == one_time

    # Media: uploaded on the owner's server, downloaded through the asker's (authenticated
    # federation media, multipart), identical bytes.
    payload = bytes(range(256)) * 1000
    status, _, answer = them.raw("POST", "/_matrix/media/v3/upload?filename=blob.bin", payload, "application/octet-stream")
    mxc = json.loads(answer)["content_uri"][len("mxc://"):]
    status, content_type, downloaded = me.raw("GET", f"/_matrix/client/v1/media/download/{mxc}")
    assert status == 200 and downloaded == payload and content_type == "application/octet-stream"

    # To-device messages, both ways.
    me.ok("PUT", f"/sendToDevice/org.myelin.interop/{suffix}", {"messages": {them.user_id: {them.device_id: {"n": 1}}}})
    got = them.to_device_events()
    assert [(e["sender"], e["type"], e["content"]) for e in got] == [(me.user_id, "org.myelin.interop", {"n": 1})], got
    them.ok("PUT", f"/sendToDevice/org.myelin.interop/{suffix}", {"messages": {me.user_id: {"*": {"n": 2}}}})
    got = me.to_device_events()
    assert [(e["sender"], e["content"]) for e in got] == [(them.user_id, {"n": 2})], got

    # A public room with an alias on the owner's server: resolved and listed from the asker's.
    alias = f"#lobby{suffix}:{them_server}"
    resolved = me.ok("GET", f"/directory/room/{q(alias)}")
    assert resolved["room_id"] == room["room_id"] and them_server in resolved["servers"], resolved
    for _ in range(40):
        listed = me.ok("GET", f"/publicRooms?server={q(them_server)}")
        if room["room_id"] in [r["room_id"] for r in listed["chunk"]]:
            break
        time.sleep(0.5)
    assert room["room_id"] in [r["room_id"] for r in listed["chunk"]], listed


def eventually(check, what, rounds=60):
    """Calls `check` until it returns something truthy (about 30 s); returns that."""
    for _ in range(rounds):
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def message_bodies(user, room_id):
    status, page = user.call("GET", f"/rooms/{q(room_id)}/messages?dir=b&limit=100")
    if status != 200:
        return []
    return [e["content"].get("body") for e in reversed(page["chunk"]) if e["type"] == "m.room.message"]


@pytest.mark.parametrize("guest,host", [("myelin", "synapse"), ("synapse", "myelin")])
def test_rooms_invites_joins_and_messages_across_implementations(servers, guest, host):
    suffix = f"{guest[:3]}{int(time.time() * 1000) % 1_000_000}"
    owner = User(servers[host][0], "host" + suffix)
    visitor = User(servers[guest][0], "guest" + suffix)
    second = User(servers[guest][0], "second" + suffix)
    host_server = servers[host][1]

    # An invite from the host's server, accepted from the guest's.
    room_id = owner.ok("POST", "/createRoom", {"preset": "private_chat", "name": "Across " + suffix})["room_id"]
    owner.ok("POST", f"/rooms/{q(room_id)}/invite", {"user_id": visitor.user_id})

    def invited():
        answer = visitor.ok("GET", "/sync?timeout=1000")
        return answer.get("rooms", {}).get("invite", {}).get(room_id)

    invite = eventually(invited, "the invite")
    names = [e["content"].get("name") for e in invite["invite_state"]["events"] if e["type"] == "m.room.name"]
    assert names == ["Across " + suffix], invite
    visitor.ok("POST", f"/join/{q(room_id)}?server_name={q(host_server)}", {})
    members = visitor.ok("GET", f"/rooms/{q(room_id)}/joined_members")["joined"]
    assert set(members) == {owner.user_id, visitor.user_id}, members

    # Messages both ways, in order on both sides.
    for n in range(3):
        owner.ok("PUT", f"/rooms/{q(room_id)}/send/m.room.message/h{n}{suffix}", {"msgtype": "m.text", "body": f"h{n}"})
        visitor.ok("PUT", f"/rooms/{q(room_id)}/send/m.room.message/g{n}{suffix}", {"msgtype": "m.text", "body": f"g{n}"})
    for user in (owner, visitor):
        bodies = eventually(lambda: (lambda b: b if len(b) >= 6 else None)(message_bodies(user, room_id)),
                            f"six messages for {user.user_id}")
        assert [b for b in bodies if b.startswith("h")] == ["h0", "h1", "h2"], bodies
        assert [b for b in bodies if b.startswith("g")] == ["g0", "g1", "g2"], bodies

    # The host's state reaches the guest's server, and the guest's changes reach the host's.
    owner.ok("PUT", f"/rooms/{q(room_id)}/state/m.room.topic/", {"topic": "from the host"})
    eventually(lambda: visitor.call("GET", f"/rooms/{q(room_id)}/state/m.room.topic/")[1].get("topic") == "from the host",
               "the topic on the guest's server")

    # A public room joined by alias from the guest's server; leaving is seen by the host.
    lobby = owner.ok("POST", "/createRoom", {"preset": "public_chat", "room_alias_name": "hall" + suffix})["room_id"]
    joined = second.ok("POST", f"/join/{q(f'#hall{suffix}:{host_server}')}", {})
    assert joined["room_id"] == lobby
    second.ok("PUT", f"/rooms/{q(lobby)}/send/m.room.message/s{suffix}", {"msgtype": "m.text", "body": "hello hall"})
    eventually(lambda: "hello hall" in message_bodies(owner, lobby), "the guest's message in the hall")
    second.ok("POST", f"/rooms/{q(lobby)}/leave", {})
    eventually(lambda: second.user_id not in owner.ok("GET", f"/rooms/{q(lobby)}/joined_members")["joined"],
               "the guest's leave on the host")
