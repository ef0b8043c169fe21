"""Interoperability of the `myelin` CLI's end-to-end encryption with matrix-nio (a third-party
client on vodozemac's Python bindings): messages and encrypted files, both ways, in one room.

Needs `cargo build --bin myelin-server --bin myelin` (MYELIN_CLI_BIN overrides the CLI binary).
"""

import asyncio
import json
import os
import subprocess

from nio import (
    AsyncClient,
    AsyncClientConfig,
    DownloadResponse,
    MegolmEvent,
    RegisterResponse,
    RoomEncryptedFile,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
    UploadResponse,
)
from nio.crypto.attachments import decrypt_attachment

from test_nio import ROOT, homeserver  # noqa: F401  (the fixture)

CLI = os.environ.get("MYELIN_CLI_BIN", os.path.join(ROOT, "target", "debug", "myelin"))


def cli(home, *args, check=True):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "MYELIN_HOME": str(home),
        "MYELIN_KEYRING": "file",
        "MYELIN_PASSPHRASE": "interop store passphrase",
        "MYELIN_PASSWORD": "pw-cli",
    }
    done = subprocess.run([CLI, "--json", *args], env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, f"myelin {args}: {done.stderr}"
        return json.loads(done.stdout)
    return done


async def sync_until(client, room_id, predicate, rounds=6):
    """Syncs until an event of the room satisfies `predicate`; fails on undecryptable events."""
    for _ in range(rounds):
        update = await client.sync(timeout=3000)
        assert isinstance(update, SyncResponse), update
        room = update.rooms.join.get(room_id)
        for event in room.timeline.events if room else []:
            assert not isinstance(event, MegolmEvent), f"nio could not decrypt {event.event_id}"
            if predicate(event):
                return event
    raise AssertionError("the event never arrived")


def test_cli_and_nio_exchange_encrypted_messages_and_files(homeserver, tmp_path):  # noqa: F811
    url, _ = homeserver
    home = tmp_path / "cli"
    home.mkdir()
    (tmp_path / "nio").mkdir()

    async def scenario():
        me = cli(home, "register", url, "cli_carol")
        nio = AsyncClient(url, "nio_dan", store_path=str(tmp_path / "nio"),
                          config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True))
        assert isinstance(await nio.register("nio_dan", "pw-nio", "nio laptop"), RegisterResponse)
        await nio.sync(timeout=0)
        if nio.should_upload_keys:
            await nio.keys_upload()

        room_id = cli(home, "rooms", "create", "Interop", "--invite", nio.user_id)["room_id"]
        await nio.sync(timeout=0)
        await nio.join(room_id)
        await nio.sync(timeout=0)

        # Ours → theirs: the room key travels over Olm to nio's device, which decrypts.
        cli(home, "send", room_id, "from the myelin cli")
        got = await sync_until(nio, room_id, lambda e: isinstance(e, RoomMessageText))
        assert got.body == "from the myelin cli" and got.sender == me["user_id"]

        # Theirs → ours.
        if nio.should_query_keys:
            await nio.keys_query()
        sent = await nio.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "from nio"},
                                   ignore_unverified_devices=True)
        assert isinstance(sent, RoomSendResponse), sent
        history = cli(home, "history", room_id)
        bodies = [m["content"].get("body") for m in history if m.get("encrypted")]
        assert "from nio" in bodies, history
        assert all("error" not in m for m in history if m["sender"] == nio.user_id), history

        # An encrypted file from the CLI, decrypted by nio's attachment code.
        data = os.urandom(200_000)
        path = tmp_path / "cli-file.bin"
        path.write_bytes(data)
        cli(home, "send-file", room_id, str(path), "--quiet")
        event = await sync_until(nio, room_id, lambda e: isinstance(e, RoomEncryptedFile))
        downloaded = await nio.download(event.url)
        assert isinstance(downloaded, DownloadResponse), downloaded
        assert decrypt_attachment(downloaded.body, event.key["k"], event.hashes["sha256"], event.iv) == data

        # An encrypted file from nio, decrypted (hash checked) by the CLI.
        import io
        theirs = os.urandom(150_000)
        uploaded, keys = await nio.upload(io.BytesIO(theirs), content_type="application/octet-stream",
                                          filename="nio.bin", encrypt=True, filesize=len(theirs))
        assert isinstance(uploaded, UploadResponse), uploaded
        keys["url"] = uploaded.content_uri
        content = {"msgtype": "m.file", "body": "nio.bin", "file": keys, "info": {"size": len(theirs)}}
        sent = await nio.room_send(room_id, "m.room.message", content, ignore_unverified_devices=True)
        assert isinstance(sent, RoomSendResponse), sent
        target = tmp_path / "from-nio.bin"
        cli(home, "download", sent.event_id, "-o", str(target))
        assert target.read_bytes() == theirs
        await nio.close()

    asyncio.run(scenario())
