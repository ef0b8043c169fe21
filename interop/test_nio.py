"""Interoperability: matrix-nio, a third-party Python client library, against a live Myelin.

Run with `pytest interop/` after `cargo build --bin myelin-server` (set MYELIN_SERVER_BIN to use
another binary). CI runs it; see README.md.
"""

import asyncio
import os
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest
from nio import (
    AsyncClient,
    DeleteDevicesAuthResponse,
    DeleteDevicesResponse,
    DevicesResponse,
    LoginError,
    LoginResponse,
    ProfileGetResponse,
    RegisterResponse,
    WhoamiError,
    WhoamiResponse,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def homeserver():
    binary = os.environ.get("MYELIN_SERVER_BIN", os.path.join(ROOT, "target", "debug", "myelin-server"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as data:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "MYELIN_SERVER_NAME": f"localhost:{port}",
            "MYELIN_LISTEN__CLIENT": f"127.0.0.1:{port}",
            "MYELIN_DATA_DIR": data,
            "MYELIN_RATE_LIMITS__ENABLED": "false",
        }
        proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/_matrix/client/versions", timeout=1)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    proc.kill()
                    raise RuntimeError("myelin-server did not start")
                time.sleep(0.05)
        yield url, f"localhost:{port}"
        proc.terminate()
        assert proc.wait(timeout=30) == 0, "graceful shutdown exits 0"


def run(coro):
    return asyncio.run(coro)


def test_register_login_whoami_profile_devices_logout(homeserver):
    url, server_name = homeserver

    async def scenario():
        first = AsyncClient(url, "nio_alice")
        registered = await first.register("nio_alice", "pw-alice", "first device")
        assert isinstance(registered, RegisterResponse), registered
        assert registered.user_id == f"@nio_alice:{server_name}"

        second = AsyncClient(url, "nio_alice")
        login = await second.login("pw-alice", device_name="second device")
        assert isinstance(login, LoginResponse), login
        whoami = await second.whoami()
        assert isinstance(whoami, WhoamiResponse) and whoami.device_id == login.device_id

        devices = await second.devices()
        assert isinstance(devices, DevicesResponse)
        assert {d.id for d in devices.devices} == {registered.device_id, login.device_id}
        names = {d.id: d.display_name for d in devices.devices}
        assert names[login.device_id] == "second device"

        await second.set_displayname("Alice via nio")
        profile = await second.get_profile()
        assert isinstance(profile, ProfileGetResponse) and profile.displayname == "Alice via nio"

        # Device deletion walks the user-interactive auth: first a 401 with flows, then done.
        challenge = await second.delete_devices([registered.device_id])
        assert isinstance(challenge, DeleteDevicesAuthResponse), challenge
        auth = {"type": "m.login.password", "user": "nio_alice", "password": "pw-alice", "session": challenge.session}
        deleted = await second.delete_devices([registered.device_id], auth=auth)
        assert isinstance(deleted, DeleteDevicesResponse), deleted
        gone = await first.whoami()
        assert isinstance(gone, WhoamiError) and gone.status_code == "M_UNKNOWN_TOKEN"

        bad = AsyncClient(url, "nio_alice")
        refused = await bad.login("wrong password")
        assert isinstance(refused, LoginError) and refused.status_code == "M_FORBIDDEN"

        await second.logout()
        for client in (first, second, bad):
            await client.close()

    run(scenario())


def test_rooms_messages_and_sync(homeserver):
    url, server_name = homeserver
    from nio import (
        JoinResponse,
        RoomCreateResponse,
        RoomMessagesResponse,
        RoomMessageText,
        RoomRedactResponse,
        RoomSendResponse,
        SyncResponse,
    )

    async def scenario():
        alice = AsyncClient(url, "nio_rooms_alice")
        bob = AsyncClient(url, "nio_rooms_bob")
        assert isinstance(await alice.register("nio_rooms_alice", "pw", "a"), RegisterResponse)
        assert isinstance(await bob.register("nio_rooms_bob", "pw", "b"), RegisterResponse)

        created = await alice.room_create(name="Interop", topic="nio meets myelin", invite=[bob.user_id])
        assert isinstance(created, RoomCreateResponse), created
        room_id = created.room_id

        first = await bob.sync(timeout=0)
        assert isinstance(first, SyncResponse), first
        assert room_id in first.rooms.invite, first.rooms.invite
        joined = await bob.join(room_id)
        assert isinstance(joined, JoinResponse), joined

        sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hello from nio"})
        assert isinstance(sent, RoomSendResponse), sent

        update = await bob.sync(timeout=30000, since=first.next_batch)
        assert isinstance(update, SyncResponse), update
        timeline = update.rooms.join[room_id].timeline.events
        texts = [e.body for e in timeline if isinstance(e, RoomMessageText)]
        assert "hello from nio" in texts, timeline
        # nio builds its room model from sync: name, topic and members came through.
        room = bob.rooms[room_id]
        assert room.name == "Interop" and room.topic == "nio meets myelin"
        assert set(room.users) == {alice.user_id, bob.user_id}

        history = await bob.room_messages(room_id, start=update.next_batch, limit=10)
        assert isinstance(history, RoomMessagesResponse), history
        assert any(isinstance(e, RoomMessageText) and e.body == "hello from nio" for e in history.chunk)

        redacted = await alice.room_redact(room_id, sent.event_id, reason="test")
        assert isinstance(redacted, RoomRedactResponse), redacted

        for client in (alice, bob):
            await client.close()

    run(scenario())


def test_end_to_end_encryption(homeserver, tmp_path):
    """Two nio clients with encryption (vodozemac) exchange an encrypted message through Myelin:
    keys upload, query and claim, an Olm-encrypted room key by to-device, a Megolm message."""
    url, _ = homeserver
    from nio import AsyncClientConfig, MegolmEvent, RegisterResponse, RoomMessageText, RoomSendResponse, SyncResponse

    async def scenario():
        config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
        (tmp_path / "alice").mkdir()
        (tmp_path / "bob").mkdir()
        alice = AsyncClient(url, "nio_e2e_alice", store_path=str(tmp_path / "alice"), config=config)
        bob = AsyncClient(url, "nio_e2e_bob", store_path=str(tmp_path / "bob"), config=config)
        assert isinstance(await alice.register("nio_e2e_alice", "pw", "alice phone"), RegisterResponse)
        assert isinstance(await bob.register("nio_e2e_bob", "pw", "bob laptop"), RegisterResponse)
        for client in (alice, bob):
            # The first sync makes nio upload its device keys and one-time keys.
            assert isinstance(await client.sync(timeout=0), SyncResponse)
            if client.should_upload_keys:
                await client.keys_upload()
            assert client.olm.account.shared

        initial_state = [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]
        created = await alice.room_create(invite=[bob.user_id], initial_state=initial_state)
        room_id = created.room_id
        await bob.sync(timeout=0)
        await bob.join(room_id)
        await alice.sync(timeout=0)
        assert alice.rooms[room_id].encrypted

        # nio queries Bob's keys, claims a one-time key, shares the room key over Olm, then sends.
        if alice.should_query_keys:
            await alice.keys_query()
        sent = await alice.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "secret via myelin"}, ignore_unverified_devices=True
        )
        assert isinstance(sent, RoomSendResponse), sent

        texts = []
        for _ in range(5):
            update = await bob.sync(timeout=5000)
            assert isinstance(update, SyncResponse), update
            room = update.rooms.join.get(room_id)
            events = room.timeline.events if room else []
            assert not any(isinstance(e, MegolmEvent) for e in events), "Bob could not decrypt"
            texts += [e.body for e in events if isinstance(e, RoomMessageText)]
            if texts:
                break
        assert texts == ["secret via myelin"], texts
        for client in (alice, bob):
            await client.close()

    run(scenario())


def png(width, height):
    """A gradient PNG, written by hand so the test needs no imaging library."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def row(y):
        # Filter type 0, then RGB pixels.
        return b"\x00" + bytes(v for x in range(width) for v in (x * 255 // width, y * 255 // height, 128))

    rows = b"".join(row(y) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_encrypted_attachment_and_thumbnail(homeserver):
    """nio encrypts a file (AES-256-CTR, the spec's attachment format), uploads the ciphertext,
    downloads it back and decrypts it; and fetches a thumbnail of an image."""
    import io
    import struct

    from nio import DownloadResponse, ResizingMethod, ThumbnailResponse, UploadResponse
    from nio.crypto.attachments import decrypt_attachment

    url, server_name = homeserver

    async def scenario():
        alice = AsyncClient(url, "nio_media_alice")
        assert isinstance(await alice.register("nio_media_alice", "pw", "a"), RegisterResponse)

        plaintext = os.urandom(300_000)
        uploaded, keys = await alice.upload(
            io.BytesIO(plaintext), content_type="application/octet-stream", filename="secret.bin",
            encrypt=True, filesize=len(plaintext))
        assert isinstance(uploaded, UploadResponse), uploaded
        downloaded = await alice.download(uploaded.content_uri)
        assert isinstance(downloaded, DownloadResponse), downloaded
        assert downloaded.body != plaintext, "the server got ciphertext"
        assert decrypt_attachment(downloaded.body, keys["key"]["k"], keys["hashes"]["sha256"], keys["iv"]) == plaintext

        image = png(400, 300)
        uploaded, _ = await alice.upload(io.BytesIO(image), content_type="image/png", filename="g.png", filesize=len(image))
        assert isinstance(uploaded, UploadResponse), uploaded
        media_id = uploaded.content_uri.split("/")[-1]
        thumb = await alice.thumbnail(server_name, media_id, 32, 32, ResizingMethod.crop)
        assert isinstance(thumb, ThumbnailResponse), thumb
        assert thumb.content_type == "image/png"
        assert struct.unpack(">II", thumb.body[16:24]) == (32, 32)
        await alice.close()

    run(scenario())
